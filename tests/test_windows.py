"""Windows and staff (CONTRACTS §12) end to end: a real Mosquitto, a keypad on a real pty, the HTTP API.

Staff sign in, pause, resume and sign out over MQTT `window/{w}/staff` and `POST /v1/windows/{w}/staff`;
the hub keeps each window's state across restarts and publishes it retained on `window/{w}/state`,
stores a `window` record per change (never the staff name), credits the signed-in staff with the
window's evaluations, refuses evaluation requests at a paused window and shows the state on the
window's keypad (HKP/1 SHOW) and pad (`show` cmd).
"""

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

from contract.records import Kind, Record
from contract.wire import validate_record
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub.app import Hub
from hub.ops.broker import MosquittoBroker
from hub.simulate.window_pc import WindowPcSimulator
from hub.store.outbox import DedupKey, Duplicate, Outbox, Stored
from tests.support.hub import NODE_ID, PULL_TOKEN, node_config, running_hub
from tests.support.mqtt import Observer, observe
from tests.test_sessions import ask, states, until

ROOT = f"hall/v1/{NODE_ID}"
CONTROL_TOKEN = "control-secret-0123456789"
AUTH = {"Authorization": f"Bearer {CONTROL_TOKEN}"}


def devices(port: Path) -> list[dict[str, Any]]:
    """A keypad at window 07 (on the pty), a rating pad at window p9, and a terminal (no window)."""
    return [
        {
            "id": "kp-07",
            "kind": "keypad",
            "transport": "serial",
            "port": str(port),
            "address": 1,
            "window": "07",
        },
        {"id": "pad-09", "kind": "pad", "transport": "mqtt", "window": "p9"},
        {"id": "term-01", "kind": "terminal", "transport": "mqtt"},
    ]


@contextlib.asynccontextmanager
async def hall(
    tmp_path: Path, broker: MosquittoBroker, keypad: SimulatedKeypad | None = None
) -> AsyncIterator[tuple[Hub, Observer]]:
    """A hub with a control token and a keypad at window 07 on a pty, and an observer of its topics."""
    keypad = keypad or SimulatedKeypad(1)
    port = tmp_path / "ttyKP0"
    async with SimulatedLine(port, [keypad]):
        config = node_config(
            tmp_path / "data",
            broker.port,
            devices(port),
            api={"listen": "127.0.0.1:0", "pull_token": PULL_TOKEN, "control_token": CONTROL_TOKEN},
        )
        async with (
            observe(
                broker.port,
                f"{ROOT}/window/+/state",
                f"{ROOT}/window/+/error",
                f"{ROOT}/window/+/session",
                f"{ROOT}/events/window",
                f"{ROOT}/dev/pad-09/cmd",
            ) as seen,
            running_hub(config) as hub,
        ):
            await until(lambda: hub.registry.get("kp-07").online)  # type: ignore[union-attr]
            yield hub, seen


async def staff_mqtt(port: int, window: str, body: dict[str, Any] | bytes) -> str | None:
    """Publish a staff event as a window PC does; returns its request_id."""
    payload = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False)
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pc-{uuid.uuid4().hex[:8]}") as client:
        await client.publish(f"{ROOT}/window/{window}/staff", payload, qos=1)
    return body.get("request_id") if isinstance(body, dict) else None


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"request_id": uuid.uuid4().hex[:12], "event": kind, **fields}


async def state_for(seen: Observer, window: str, request_id: str) -> dict[str, Any]:
    """The `window/{w}/state` that the event `request_id` led to."""
    topic = f"{ROOT}/window/{window}/state"
    async with asyncio.timeout(10):
        while True:
            for message in seen.messages[topic]:
                if message.get("request_id") == request_id:
                    return message
            await asyncio.sleep(0.02)


async def post_staff(
    hub: Hub, window: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{hub.api_port}/v1/windows/{window}/staff"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=AUTH if headers is None else headers) as response,
    ):
        return response.status, await response.json()


def stored(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(data_dir / "outbox.db")
    try:
        rows = conn.execute("SELECT body FROM records WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


async def test_sign_in_pause_resume_sign_out_over_mqtt(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, keypad) as (hub, seen):
        first = (await seen.wait_for(f"{ROOT}/window/07/state"))[0]
        assert (first["window"], first["state"], first["staff_id"], first["staff_name"]) == (
            "07",
            "closed",
            None,
            None,
        )

        sign_in = await staff_mqtt(broker.port, "07", event("sign_in", staff_id="S007", staff_name="张三"))
        assert sign_in is not None
        opened = await state_for(seen, "07", sign_in)
        assert (opened["state"], opened["staff_id"], opened["staff_name"]) == ("open", "S007", "张三")
        await until(lambda: "07号窗口 张三" in keypad.shows)  # HKP/1 SHOW, read off the pty

        pause = await staff_mqtt(broker.port, "07", event("pause", reason="午休"))
        assert pause is not None
        paused = await state_for(seen, "07", pause)
        assert (paused["state"], paused["staff_id"], paused["staff_name"]) == ("paused", "S007", "张三")
        await until(lambda: "暂停服务" in keypad.shows)

        resume = await staff_mqtt(broker.port, "07", event("resume"))
        assert resume is not None
        assert (await state_for(seen, "07", resume))["state"] == "open"

        sign_out = await staff_mqtt(broker.port, "07", event("sign_out", staff_id="S007"))
        assert sign_out is not None
        closed = await state_for(seen, "07", sign_out)
        assert (closed["state"], closed["staff_id"], closed["staff_name"]) == ("closed", None, None)

        mirrored = await seen.wait_for(f"{ROOT}/events/window", 4)
        assert [m["data"]["event"] for m in mirrored] == ["sign_in", "pause", "resume", "sign_out"]
        status = await hub.node_status.status()
    assert status["windows"] == [
        {"window": "07", "state": "closed", "staff_id": None, "staff_name": None, "since": closed["since"]},
        {"window": "p9", "state": "closed", "staff_id": None, "staff_name": None, "since": first["since"]},
    ]
    records = stored(tmp_path / "data", "window")
    assert [(r["data"]["event"], r["data"]["staff_id"], r["data"]["reason"]) for r in records] == [
        ("sign_in", "S007", None),
        ("pause", "S007", "午休"),
        ("resume", "S007", None),
        ("sign_out", "S007", None),
    ]
    for record in records:
        validate_record(record)  # the receiver's check of the §12 record
        assert set(record["data"]) == {"window", "event", "staff_id", "reason", "node_id", "hall_code"}
        assert "张三" not in json.dumps(record, ensure_ascii=False)  # never the staff name


async def test_bad_and_refused_mqtt_events_are_answered_on_the_error_topic(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker) as (hub, seen):
        errors = f"{ROOT}/window/07/error"
        no_staff = await staff_mqtt(broker.port, "07", event("sign_in", staff_name="张三"))
        [answer] = await seen.wait_for(errors, 1)
        assert answer == {
            "request_id": no_staff,
            "error": "staff_id: is required for sign_in",
            "topic": f"{ROOT}/window/07/staff",
        }
        await staff_mqtt(broker.port, "07", event("nap"))
        answer = (await seen.wait_for(errors, 2))[1]
        assert answer["error"].startswith("event: expected one of 'sign_in', 'sign_out', 'pause' or 'resume'")
        await staff_mqtt(broker.port, "07", b"{not json")
        answer = (await seen.wait_for(errors, 3))[2]
        assert answer["request_id"] is None
        assert answer["error"].startswith("payload is not JSON")
        resume = await staff_mqtt(broker.port, "07", event("resume"))
        answer = (await seen.wait_for(errors, 4))[3]
        assert answer == {
            "request_id": resume,
            "error": "window 07 is closed: nobody is signed in (sign_in first)",
            "topic": f"{ROOT}/window/07/staff",
        }
        await staff_mqtt(broker.port, "99", event("sign_in", staff_id="S099"))
        [elsewhere] = await seen.wait_for(f"{ROOT}/window/99/error")
        assert elsewhere["error"] == f"no device of node {NODE_ID} serves window 99"
        metrics = hub.metrics.render().decode()
        assert 'hallhub_window_events_total{outcome="invalid",via="mqtt"} 3.0' in metrics
        assert 'hallhub_window_events_total{outcome="refused",via="mqtt"} 2.0' in metrics
        assert hub.windows.state("07").state == "closed"  # type: ignore[union-attr]
    assert stored(tmp_path / "data", "window") == []


async def test_staff_over_http_needs_the_control_token_and_names_bad_fields(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker) as (hub, seen):
        sign_in = event("sign_in", staff_id="S007", staff_name="张三")
        status, body = await post_staff(hub, "07", sign_in, headers={})
        assert (status, body["error"]) == (
            401,
            "missing bearer token (Authorization: Bearer <api.control_token>)",
        )
        status, body = await post_staff(hub, "07", sign_in, headers={"Authorization": "Bearer wrong-token"})
        assert (status, body["error"]) == (401, "wrong token")
        assert hub.windows.state("07").state == "closed"  # type: ignore[union-attr]

        status, body = await post_staff(hub, "07", sign_in)
        assert status == 200
        assert (body["window"], body["state"], body["staff_id"], body["staff_name"]) == (
            "07",
            "open",
            "S007",
            "张三",
        )
        assert body["request_id"] == sign_in["request_id"]
        assert (await state_for(seen, "07", sign_in["request_id"]))["state"] == "open"

        status, again = await post_staff(hub, "07", sign_in)  # the same request again: nothing changes
        assert (status, again) == (200, body)

        for bad, field in [
            (event("sign_in"), "staff_id: is required for sign_in"),
            (event("pause", reason="x" * 101), "reason: expected at most 100 characters"),
            (
                event("sign_in", staff_id="S1", staff_name="名" * 33),
                "staff_name: expected at most 32 characters",
            ),
            ({"event": "pause"}, "request_id: is required but missing"),
            (event("lunch"), "event: expected one of"),
        ]:
            status, body = await post_staff(hub, "07", bad)
            assert status == 400, bad
            assert body["error"].startswith(field), body
        status, body = await post_staff(hub, "07", ["not", "an", "object"])
        assert status == 400
        assert body["error"] == "body must be a JSON object, got list"

        status, body = await post_staff(hub, "99", event("pause"))
        assert (status, body["error"]) == (404, f"no device of node {NODE_ID} serves window 99")
        status, body = await post_staff(hub, "07", event("resume"))
        assert (status, body["error"]) == (409, "window 07 is not paused")
        assert body["window_state"]["state"] == "open"
        status, body = await post_staff(hub, "07", event("sign_out", staff_id="S008"))
        assert (status, body["error"]) == (409, "staff_id: S008 is not signed in at window 07 (S007 is)")

        pause = event("pause", reason="会议")
        status, body = await post_staff(hub, "07", pause)
        assert (status, body["state"]) == (200, "paused")
        status, body = await post_staff(hub, "07", event("pause"))
        assert (status, body["error"]) == (409, "window 07 is already paused")
        status, body = await post_staff(hub, "07", event("resume"))
        assert (status, body["state"], body["staff_name"]) == (200, "open", "张三")
        status, body = await post_staff(hub, "07", event("sign_out"))
        assert (status, body["state"], body["staff_id"]) == (200, "closed", None)

        metrics = hub.metrics.render().decode()
        assert 'hallhub_window_events_total{outcome="invalid",via="http"} 6.0' in metrics
        assert 'hallhub_window_events_total{outcome="applied",via="http"} 4.0' in metrics
        assert 'hallhub_window_events_total{outcome="duplicate",via="http"} 1.0' in metrics
    records = stored(tmp_path / "data", "window")
    assert [r["data"]["event"] for r in records] == ["sign_in", "pause", "resume", "sign_out"]
    assert not any("张三" in json.dumps(r, ensure_ascii=False) for r in records)


async def test_the_state_survives_a_restart_and_is_published_again(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker) as (hub, _seen):
        assert (await post_staff(hub, "07", event("sign_in", staff_id="S007", staff_name="张三")))[0] == 200
        status, before = await post_staff(hub, "07", event("pause", reason="午休"))
        assert status == 200
    # The broker forgets the retained state: only the restarted hub can publish it again.
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="eraser") as client:
        await client.publish(f"{ROOT}/window/07/state", b"", qos=1, retain=True)
    async with hall(tmp_path, broker) as (hub, seen):
        [after] = await seen.wait_for(f"{ROOT}/window/07/state")
        assert after == before
        assert (after["state"], after["staff_id"], after["staff_name"]) == ("paused", "S007", "张三")
        rid = await ask(broker.port, "07", case_no="SD2026-1")
        [failed] = await states(seen, "07", rid, 1)
        assert (failed["state"], failed["error"]) == ("failed", "window 07 is paused")
    async with observe(broker.port, f"{ROOT}/window/07/state") as late:
        [retained] = await late.wait_for(f"{ROOT}/window/07/state")
        assert late.retained[f"{ROOT}/window/07/state"] == [True]
        assert retained["state"] == "paused"


async def test_an_evaluation_credits_the_signed_in_staff(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, keypad) as (hub, seen):
        assert (await post_staff(hub, "07", event("sign_in", staff_id="S007", staff_name="张三")))[0] == 200
        rid = await ask(broker.port, "07", case_no="SD2026-7")
        prompted = (await states(seen, "07", rid, 1))[0]
        assert prompted["state"] == "prompted"
        await until(lambda: keypad.active_prompt is not None)
        assert keypad.active_prompt is not None
        assert keypad.active_prompt.text == "07号窗口 张三"
        assert await keypad.press(5).wait()
        rated = (await states(seen, "07", rid, 2))[1]
        assert rated["state"] == "rated"
        # A request that names its staff keeps them.
        named = await ask(broker.port, "07", staff_id="S100", staff_name="李四")
        assert (await states(seen, "07", named, 1))[0]["state"] == "prompted"
        await until(lambda: keypad.active_prompt is not None and keypad.active_prompt.text == "07号窗口 李四")
        assert await keypad.press(4).wait()
        await states(seen, "07", named, 2)
    evaluations = stored(tmp_path / "data", "evaluation")
    assert [(e["data"]["staff_id"], e["data"]["case_no"], e["data"]["level"]) for e in evaluations] == [
        ("S007", "SD2026-7", 5),
        ("S100", None, 4),
    ]


async def test_a_pause_refuses_requests_and_cancels_the_open_session(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    keypad = SimulatedKeypad(1)
    async with hall(tmp_path, broker, keypad) as (hub, seen):
        assert (await post_staff(hub, "07", event("sign_in", staff_id="S007")))[0] == 200
        await until(lambda: "07号窗口 S007" in keypad.shows)  # no name given: the staff id is shown
        open_request = await ask(broker.port, "07")
        await states(seen, "07", open_request, 1)
        await until(lambda: keypad.active_prompt is not None)
        assert (await post_staff(hub, "07", event("pause")))[0] == 200
        cancelled = (await states(seen, "07", open_request, 2))[1]
        assert (cancelled["state"], cancelled["error"]) == ("cancelled", "window 07 is paused")
        await until(lambda: keypad.active_prompt is None and "暂停服务" in keypad.shows)

        refused = await ask(broker.port, "07", staff_id="S007")
        [failed] = await states(seen, "07", refused, 1)
        assert (failed["state"], failed["error"]) == ("failed", "window 07 is paused")
        url = f"http://127.0.0.1:{hub.api_port}/v1/windows/07/evaluate"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json={"request_id": "r-http"}, headers=AUTH) as r,
        ):
            assert (r.status, (await r.json())["error"]) == (200, "window 07 is paused")
        assert keypad.active_prompt is None
    assert stored(tmp_path / "data", "evaluation") == []


async def test_a_pad_is_sent_show_commands(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hall(tmp_path, broker) as (hub, seen):
        assert (await post_staff(hub, "p9", event("sign_in", staff_id="S009", staff_name="王五")))[0] == 200
        assert (await post_staff(hub, "p9", event("pause")))[0] == 200
        commands = await seen.wait_for(f"{ROOT}/dev/pad-09/cmd", 2)
    assert [(c["cmd"], c["text"]) for c in commands] == [("show", "p9号窗口 王五"), ("show", "暂停服务")]


@pytest.mark.parametrize("over_http", [False, True], ids=["mqtt", "http"])
async def test_the_simulated_window_pc_signs_staff_in_and_out(
    tmp_path: Path, broker: MosquittoBroker, over_http: bool
) -> None:
    """`hallhub simulate window --staff` (and the demo's window PC): every event it sends is applied."""
    async with hall(tmp_path, broker) as (hub, _seen):
        pc = WindowPcSimulator(
            "127.0.0.1",
            broker.port,
            NODE_ID,
            ["07", "p9"],
            mean_interval_s=0.05,
            timeout_s=1,
            seed=15,
            api_url=f"http://127.0.0.1:{hub.api_port}" if over_http else None,
            control_token=CONTROL_TOKEN,
            staff=True,
        )
        await pc.run(max_requests=60)
        sent = sum(pc.staff_events.values())
        assert pc.staff_events["sign_in"] >= 2
        assert {"pause", "resume"} <= set(pc.staff_events) or "sign_out" in pc.staff_events
        await until(lambda: len(stored(tmp_path / "data", "window")) == sent)
        await until(lambda: pc.window_states == {w: hub.windows.state(w).state for w in ("07", "p9")})  # type: ignore[union-attr]
        assert not pc.refused
    assert stored(tmp_path / "data", "evaluation") == []  # nobody pressed a key


async def test_a_window_state_is_committed_with_its_record_only(tmp_path: Path) -> None:
    """`Outbox.store(..., kv=...)`: the state changes exactly when its record is stored, never for a
    repeated request (a duplicate) — the window book's guarantee across restarts and kill -9."""
    outbox = Outbox(tmp_path / "outbox.db")
    await outbox.open()
    try:
        first = Record(kind=Kind.WINDOW, data={"window": "07", "event": "sign_in"})
        result = await outbox.store([first], DedupKey("window:07", "r1"), kv={"window/07": "open"})
        assert isinstance(result, Stored)
        assert await outbox.kv_get("window/07") == "open"
        again = Record(kind=Kind.WINDOW, data={"window": "07", "event": "sign_in"})
        result = await outbox.store([again], DedupKey("window:07", "r1"), kv={"window/07": "changed"})
        assert result == Duplicate(record_id=first.id)
        assert await outbox.kv_get("window/07") == "open"
    finally:
        await outbox.close()
