"""Window evaluation end to end: a window PC asks, the keypad on a real pty prompts, a key is pressed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from contract.mqtt import EvaluateRequest, SessionUpdate
from drivers.base import CitizenIdentity
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub.app import Hub
from hub.clock import SYSTEM_CLOCK, Clock
from hub.config import DeviceSection
from hub.hall.sessions import (
    CITIZEN_KEPT_S,
    MAX_RECENT_SESSIONS,
    RECENT_SESSIONS_KEPT_S,
    PromptPort,
    SessionManager,
)
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from hub.store.outbox import Outbox
from tests.support.clock import FakeClock
from tests.support.hub import NODE_ID, node_config, running_hub
from tests.support.mqtt import Observer, observe

ROOT = f"hall/v1/{NODE_ID}"


def keypad_devices(port: Path, windows: dict[int, str]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"kp-{w}",
            "kind": "keypad",
            "transport": "serial",
            "port": str(port),
            "address": a,
            "window": w,
        }
        for a, w in windows.items()
    ]


@contextlib.asynccontextmanager
async def hall(
    tmp_path: Path,
    broker: MosquittoBroker,
    keypads: list[SimulatedKeypad],
    windows: dict[int, str],
    *,
    clock: FakeClock | None = None,
    **sections: Any,
) -> AsyncIterator[tuple[Hub, SimulatedLine, Observer]]:
    """A hub with keypads on a pty and a pad at window p9; its sessions run on `clock` if given."""
    port = tmp_path / "ttyKP0"
    async with SimulatedLine(port, keypads) as line:
        devices = [
            *keypad_devices(port, windows),
            {"id": "pad-09", "kind": "pad", "transport": "mqtt", "window": "p9"},
        ]
        config = node_config(tmp_path / "data", broker.port, devices, **sections)
        async with (
            running_hub(config, clock=clock) as hub,
            observe(broker.port, f"{ROOT}/window/+/session", f"{ROOT}/alerts") as seen,
        ):
            await until(lambda: all(hub.registry.get(f"kp-{w}").online for w in windows.values()))  # type: ignore[union-attr]
            yield hub, line, seen


async def until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def ask(port: int, window: str, **fields: Any) -> str:
    """Publish an evaluation request as a window PC does; returns its request id."""
    request_id = fields.pop("request_id", uuid.uuid4().hex[:12])
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pc-{request_id}") as client:
        await client.publish(
            f"{ROOT}/window/{window}/evaluate", json.dumps({"request_id": request_id, **fields}), qos=1
        )
    return request_id


async def states(seen: Observer, window: str, request_id: str, count: int) -> list[dict[str, Any]]:
    topic = f"{ROOT}/window/{window}/session"
    async with asyncio.timeout(10):
        while True:
            mine = [m for m in seen.messages[topic] if m["request_id"] == request_id]
            if len(mine) >= count:
                return mine
            await asyncio.sleep(0.02)


def evaluations(tmp_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        rows = conn.execute("SELECT body FROM records WHERE kind = 'evaluation' ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


async def test_prompted_then_rated_with_bad_review_alert(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, [keypad], {1: "07"}) as (hub, _line, seen):
        rid = await ask(
            broker.port,
            "07",
            case_no="SD2026-77",
            item_code="370100-001-01",
            staff_id="S007",
            staff_name="张三",
        )
        prompted = (await states(seen, "07", rid, 1))[0]
        assert prompted["state"] == "prompted"
        await until(lambda: keypad.active_prompt is not None)
        assert keypad.active_prompt is not None
        assert keypad.active_prompt.session == prompted["session"]
        assert keypad.active_prompt.text == "07号窗口 张三"
        press = keypad.press(2, ["R1", "R2"])
        assert await press.wait()
        rated = (await states(seen, "07", rid, 2))[1]
        assert rated["state"] == "rated"
        assert rated["level"] == 2
        alerts = await seen.wait_for(f"{ROOT}/alerts")
        await until(lambda: "感谢您的评价" in keypad.shows)
        status = await hub.node_status.status()
    [record] = evaluations(tmp_path)
    assert record["id"] == rated["id"]
    data = record["data"]
    assert (data["channel"], data["window"], data["case_no"], data["item_code"], data["staff_id"]) == (
        "keypad",
        "07",
        "SD2026-77",
        "370100-001-01",
        "S007",
    )
    assert (data["session"], data["reasons"], data["device_id"]) == (
        prompted["session"],
        ["R1", "R2"],
        "kp-07",
    )
    alert = alerts[0]["data"]
    assert (
        alert["type"],
        alert["evaluation_id"],
        alert["window"],
        alert["staff_id"],
        alert["case_no"],
        alert["level"],
    ) == ("bad_review", record["id"], "07", "S007", "SD2026-77", 2)
    assert [a["id"] for a in status["alerts"]] == [alerts[0]["id"]]


async def test_expired_session_stores_nothing_and_cancels_the_keypad(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    keypad = SimulatedKeypad(1)
    clock = FakeClock()
    async with hall(tmp_path, broker, [keypad], {1: "07"}, clock=clock) as (hub, _line, seen):
        rid = await ask(broker.port, "07", case_no="C1", timeout_s=1)
        [prompted] = await states(seen, "07", rid, 1)
        clock.advance(0.9)
        [open_session] = hub.sessions.open_sessions()
        assert (open_session["session"], open_session["age_s"]) == (prompted["session"], 0.9)
        clock.advance(0.1)
        updates = await states(seen, "07", rid, 2)
        assert [u["state"] for u in updates] == ["prompted", "expired"]
        assert hub.sessions.open_sessions() == []
        await until(lambda: updates[0]["session"] in keypad.cancels)
    assert evaluations(tmp_path) == []


async def test_a_new_request_cancels_the_old_one(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, [keypad], {1: "07"}) as (_hub, _line, seen):
        first = await ask(broker.port, "07", case_no="C1")
        old = (await states(seen, "07", first, 1))[0]
        second = await ask(broker.port, "07", case_no="C2")
        assert [u["state"] for u in await states(seen, "07", first, 2)] == ["prompted", "cancelled"]
        new = (await states(seen, "07", second, 1))[0]
        assert new["state"] == "prompted"
        assert new["session"] != old["session"]
        await until(lambda: old["session"] in keypad.cancels)
        await until(
            lambda: keypad.active_prompt is not None and keypad.active_prompt.session == new["session"]
        )
        assert await keypad.press(5).wait()
        await states(seen, "07", second, 2)
    [record] = evaluations(tmp_path)
    assert record["data"]["case_no"] == "C2"


async def test_failed_sessions_say_why(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, [keypad], {1: "07"}) as (_hub, _line, seen):
        nowhere = await ask(broker.port, "99")
        [failed] = await states(seen, "99", nowhere, 1)
        assert (failed["state"], failed["error"]) == (
            "failed",
            "no keypad or rating pad is configured for window 99",
        )
        keypad.silent = True
        rid = await ask(broker.port, "07")
        [failed] = await states(seen, "07", rid, 1)
        assert failed["state"] == "failed"
        assert failed["error"] == "keypad kp-07 did not answer PROMPT after 3 tries"
        pad = await ask(broker.port, "p9")
        [failed] = await states(seen, "p9", pad, 1)
        assert (failed["state"], failed["error"]) == ("failed", "pad pad-09 offline")
        bad = await ask(broker.port, "07", timeout_s="soon")
        [failed] = await states(seen, "07", bad, 1)
        assert (failed["state"], failed["error"]) == (
            "failed",
            "timeout_s: expected a whole number, got 'soon'",
        )


async def test_key_retransmitted_five_times_is_one_evaluation(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    keypad = SimulatedKeypad(1, retransmit_interval_s=0.2)
    async with hall(tmp_path, broker, [keypad], {1: "07"}) as (_hub, _line, seen):
        rid = await ask(broker.port, "07", case_no="C5")
        await states(seen, "07", rid, 1)
        await until(lambda: keypad.active_prompt is not None)
        keypad.drop_acks = 4
        press = keypad.press(4)
        assert await press.wait()
        assert press.sends == 5
        await states(seen, "07", rid, 2)
    assert len(evaluations(tmp_path)) == 1


async def test_two_keypads_on_one_line_and_free_ratings_with_misuse_limits(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    left, right = SimulatedKeypad(1), SimulatedKeypad(2)
    limits: dict[str, Any] = {"evaluation": {"max_free_per_minute": 2, "max_per_session": 1}}
    async with hall(tmp_path, broker, [left, right], {1: "07", 2: "08"}, **limits) as (hub, _line, seen):
        r7 = await ask(broker.port, "07", case_no="L")
        r8 = await ask(broker.port, "08", case_no="R")
        await until(lambda: left.active_prompt is not None and right.active_prompt is not None)
        assert left.active_prompt is not None
        session7 = left.active_prompt.session
        assert await left.press(5).wait()
        assert await right.press(3).wait()
        await states(seen, "07", r7, 2)
        await states(seen, "08", r8, 2)
        assert await left.press(1, session=session7).wait(), "a second press for the same session is kept"
        for level in (5, 4, 1):
            assert await right.free_rating(level).wait()
        await asyncio.sleep(0.2)
        status = await hub.node_status.status()
    records = evaluations(tmp_path)
    by = [
        (r["data"]["device_id"], r["data"]["level"], r["data"]["case_no"], r["data"]["flags"])
        for r in records
    ]
    assert by == [
        ("kp-07", 5, "L", []),
        ("kp-08", 3, "R", []),
        ("kp-07", 1, "L", ["suspect"]),  # a suspect press never counts, so it is no repeat (§15)
        ("kp-08", 5, None, []),
        ("kp-08", 4, None, []),
        ("kp-08", 1, None, ["suspect"]),
    ]
    assert status["alerts"] == [], "suspect presses raise no bad-review alert"


async def test_http_evaluate_and_alert_acknowledgement(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, [keypad], {1: "07"}) as (hub, _line, _seen):
        async with aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http:
            async with http.post(
                "/v1/windows/07/evaluate", json={"request_id": "web-1", "case_no": "H1"}
            ) as response:
                body = await response.json()
            assert response.status == 200
            assert body["state"] == "prompted"
            assert body["request_id"] == "web-1"
            async with http.post("/v1/windows/07/evaluate", json={"case_no": "H1"}) as response:
                assert (response.status, await response.json()) == (
                    400,
                    {"error": "request_id: is required but missing"},
                )
            async with http.post("/v1/windows/bad window/evaluate", json={"request_id": "x"}) as response:
                assert response.status == 400
            await until(lambda: keypad.active_prompt is not None)
            assert await keypad.press(1).wait()
            await until(lambda: len(hub.alerts.open_alerts()) == 1)
            alert_id = hub.alerts.open_alerts()[0]["id"]
            async with http.post(f"/v1/alerts/{alert_id}/ack", json={"by": "值班长"}) as response:
                ack = await response.json()
            assert (response.status, ack["id"], ack["by"]) == (200, alert_id, "值班长")
            async with http.post("/v1/alerts/nope/ack", json={}) as response:
                assert (response.status, await response.json()) == (404, {"error": "no alert with id nope"})
            async with http.post("/v1/alerts/nope/ack") as response:  # no JSON: a cross-site form could
                assert response.status == 415
            async with http.get("/v1/status") as response:
                assert (await response.json())["alerts"] == []
    config = node_config(tmp_path / "data", broker.port, keypad_devices(tmp_path / "ttyKP0", {1: "07"}))
    async with running_hub(config) as hub:
        assert hub.alerts.open_alerts() == [], "the acknowledgement survives a restart"


async def test_unplug_and_replug_mid_session(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, [keypad], {1: "07"}) as (hub, line, seen):
        rid = await ask(broker.port, "07", case_no="U1", timeout_s=60)
        await states(seen, "07", rid, 1)
        await until(lambda: keypad.active_prompt is not None)
        line.unplug()
        await until(lambda: not hub.registry.get("kp-07").online, timeout=15)  # type: ignore[union-attr]
        line.replug()
        await until(lambda: len(keypad.prompts) >= 2, timeout=30)
        assert await keypad.press(4).wait()
        updates = await states(seen, "07", rid, 2)
        assert updates[1]["state"] == "rated"
    assert [r["data"]["case_no"] for r in evaluations(tmp_path)] == ["U1"]


async def test_concurrent_requests_on_20_windows(tmp_path: Path, broker: MosquittoBroker) -> None:
    windows = {n: f"{n:02d}" for n in range(1, 21)}

    def answer(keypad: SimulatedKeypad, prompt: Any) -> None:
        keypad.press(1 + prompt.session % 5, session=prompt.session)

    keypads = [SimulatedKeypad(n, on_prompt=answer) for n in windows]
    async with hall(tmp_path, broker, keypads, windows) as (_hub, _line, seen):
        ids = await asyncio.gather(*(ask(broker.port, w, case_no=f"case-{w}") for w in windows.values()))
        finals = await asyncio.gather(
            *(states(seen, w, rid, 2) for w, rid in zip(windows.values(), ids, strict=True))
        )
    assert all(f[1]["state"] == "rated" for f in finals)
    assert sorted(r["data"]["case_no"] for r in evaluations(tmp_path)) == [
        f"case-{w}" for w in windows.values()
    ]


@pytest.mark.parametrize("level", [5])
async def test_pad_session_over_mqtt(tmp_path: Path, broker: MosquittoBroker, level: int) -> None:
    async with hall(tmp_path, broker, [SimulatedKeypad(1)], {1: "07"}) as (_hub, _line, seen):
        async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-09", kind="pad") as pad:

            async def on_command(command: Any) -> None:
                if command.cmd == "prompt":
                    asyncio.get_running_loop().create_task(pad.rate(level, session=command.session))

            pad.on_command = on_command
            rid = await ask(broker.port, "p9", case_no="P1", staff_id="S9")
            updates = await states(seen, "p9", rid, 2)
    assert [u["state"] for u in updates] == ["prompted", "rated"]
    [record] = evaluations(tmp_path)
    assert (record["data"]["channel"], record["data"]["case_no"], record["data"]["staff_id"]) == (
        "pad",
        "P1",
        "S9",
    )


@contextlib.asynccontextmanager
async def standalone(
    tmp_path: Path, clock: Clock = SYSTEM_CLOCK, **sections: Any
) -> AsyncIterator[tuple[SessionManager, list[SessionUpdate]]]:
    """A session manager alone (no broker, no driver) for a pad at window 01, its sessions on
    `clock`; with the updates it published. Closed (timers stopped) on exit."""
    config = node_config(
        tmp_path / "data",
        1883,
        [{"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "01"}],
        **sections,
    )
    outbox = Outbox(tmp_path / "data" / "outbox.db")
    await outbox.open()
    updates: list[SessionUpdate] = []

    async def publish(_window: str, update: SessionUpdate) -> None:
        updates.append(update)

    async def prompt(_device: DeviceSection, _session: int, _timeout_s: int, _text: str) -> None:
        return None

    async def cancel(_device: DeviceSection, _session: int) -> None:
        return None

    manager = SessionManager(config, outbox, publish, clock=clock)
    manager.bind("mqtt", PromptPort(prompt, cancel))
    try:
        yield manager, updates
    finally:
        await manager.close()
        await outbox.close()


async def test_ended_sessions_kept_for_late_ratings_are_bounded(tmp_path: Path) -> None:
    """Ended sessions are kept ten minutes for late ratings, but never more than MAX_RECENT_SESSIONS:
    by time alone a busy stream of requests held every session of the last ten minutes (the soak's
    slope). The oldest go first, counted; the newest still give a late rating its case."""
    total = MAX_RECENT_SESSIONS + 250
    async with standalone(tmp_path) as (manager, updates):
        for n in range(total):
            started = await manager.request("01", EvaluateRequest(request_id=f"r{n}", case_no=f"C{n}"))
            await manager.rated("pad-01", started.session, 5, f"record-{n}")
            assert manager.recent_count <= MAX_RECENT_SESSIONS
    assert [u.state for u in updates].count("rated") == total
    assert manager.recent_count == MAX_RECENT_SESSIONS
    assert manager.recent_dropped == total - MAX_RECENT_SESSIONS
    first, last = updates[0].session, updates[-1].session
    assert manager.context("pad-01", first) is None
    newest = manager.context("pad-01", last)
    assert newest is not None
    assert newest.case_no == f"C{total - 1}"


async def test_a_late_rating_takes_its_ended_sessions_case_for_ten_minutes(tmp_path: Path) -> None:
    """An expired session still gives a late press its case just before RECENT_SESSIONS_KEPT_S;
    once it is older, the next session to end forgets it and a late press joins no session."""
    clock = FakeClock()
    async with standalone(tmp_path, clock) as (manager, updates):
        pad = manager.config.devices_by_id["pad-01"]
        late = await manager.request("01", EvaluateRequest(request_id="r1", case_no="LATE", timeout_s=30))
        assert clock.pending == [clock.monotonic() + 30]
        clock.advance(30)
        await until(lambda: [u.state for u in updates] == ["prompted", "expired"])
        assert manager.recent_count == 1

        clock.advance(RECENT_SESSIONS_KEPT_S - 1)
        kept = manager.attribute(pad, late.session)
        assert kept.context is not None
        assert (kept.context.session, kept.context.case_no, kept.window) == (late.session, "LATE", "01")

        clock.advance(2)
        other = await manager.request("01", EvaluateRequest(request_id="r2", case_no="NEXT"))
        await manager.rated("pad-01", other.session, 5, "record-2")
        assert manager.recent_count == 1, "only the session that just ended is kept"
        assert manager.attribute(pad, late.session).context is None
        assert manager.context("pad-01", other.session) is not None
        assert manager.recent_dropped == 0, "forgotten for its age, not for the bound"


async def test_a_late_rating_in_a_quiet_hall_takes_no_case_after_ten_minutes(tmp_path: Path) -> None:
    """No other session ends meanwhile: the old one is forgotten for its age all the same (it was
    kept until another session ended, so a press an hour later took a long-closed case)."""
    clock = FakeClock()
    async with standalone(tmp_path, clock) as (manager, updates):
        pad = manager.config.devices_by_id["pad-01"]
        late = await manager.request("01", EvaluateRequest(request_id="r1", case_no="LATE", timeout_s=30))
        clock.advance(30)
        await until(lambda: [u.state for u in updates] == ["prompted", "expired"])
        clock.advance(RECENT_SESSIONS_KEPT_S + 1)
        assert manager.attribute(pad, late.session).context is None


async def test_a_citizen_identified_at_a_window_is_taken_once_within_ten_minutes(tmp_path: Path) -> None:
    clock = FakeClock()
    citizen = CitizenIdentity(masked="370102********1234", ref="a" * 64)
    async with standalone(tmp_path, clock) as (manager, _updates):
        pad = manager.config.devices_by_id["pad-01"]
        manager.remember_citizen("01", citizen)
        clock.advance(CITIZEN_KEPT_S - 1)
        assert manager.attribute(pad, None).citizen == citizen
        assert manager.attribute(pad, None).citizen is None, "used once"

        manager.remember_citizen("01", citizen)
        clock.advance(CITIZEN_KEPT_S + 1)
        assert manager.attribute(pad, None).citizen is None, "too old to be the one rating now"
        assert manager.attribute(pad, None).citizen is None


async def test_the_free_rating_limit_forgets_presses_older_than_a_minute(tmp_path: Path) -> None:
    clock = FakeClock()
    limits = {"evaluation": {"max_free_per_minute": 2}}
    async with standalone(tmp_path, clock, **limits) as (manager, _updates):
        await manager.rated("pad-01", None, 5, "free-1")
        clock.advance(40)
        await manager.rated("pad-01", None, 4, "free-2")
        assert manager.flags_for("pad-01", None) == ["suspect"]
        clock.advance(20)
        assert manager.flags_for("pad-01", None) == ["suspect"], "a minute old still counts"
        clock.advance(0.5)
        assert manager.flags_for("pad-01", None) == [], "the first press is over a minute old"
        await manager.rated("pad-01", None, 3, "free-3")
        assert manager.flags_for("pad-01", None) == ["suspect"]
        clock.advance(61)
        assert manager.flags_for("pad-01", None) == []
        assert manager.flags_for("pad-02", None) == [], "counted per device"
