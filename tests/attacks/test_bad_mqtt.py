"""What someone on the hall network tries against the hub over MQTT (CONTRACTS §2), and what happens.

Each test is one move by a curious person with an MQTT client, or a device with broken or hostile
firmware: numbers no field can hold, retained commands that come back after every restart, a flood
of made-up device ids, a terminal that rates a window it does not serve and names a member of staff.
Everything is real: a Mosquitto of the test's own, an in-process hub, plain MQTT clients, loopback
only. Every wait is bounded in time and every loop in count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

from contract.mqtt import DEVICE_PAYLOADS, EvaluateRequest
from hub.app import Hub
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, node_config, running_hub, terminals
from tests.support.mqtt import observe

ROOT = f"hall/v1/{NODE_ID}"
HUGE = "9" * 5000  # beyond Python's 4,300-digit limit for int(): json.loads raises a bare ValueError


def device(broker: MosquittoBroker, device_id: str, kind: str = "terminal") -> SimulatedMqttDevice:
    """A device simulator that gives up quickly: an attack test waits for refusals, not for retries."""
    return SimulatedMqttDevice(
        "127.0.0.1", broker.port, NODE_ID, device_id, kind=kind, retry_interval_s=2.0, max_attempts=3
    )


def rejects(hub: Hub, reason: str) -> float:
    """`hallhub_rejects_total{reason=...}` as the hub counts it."""
    return hub.metrics.registry.get_sample_value("hallhub_rejects_total", {"reason": reason}) or 0.0


async def until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step)
    return condition()


def stored_records(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    """Every committed record of one kind, read straight from the outbox file."""
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        rows = conn.execute("SELECT body FROM records WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


def hub_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR lines (tracebacks included) the hub logged."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("hub") and r.levelno >= logging.ERROR]


# -- numbers no field can hold -------------------------------------------------------------------


async def test_a_number_of_5000_digits_is_rejected_naming_the_field(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5,000-digit integer was a traceback in the hub and no answer at all; now each is refused by
    field: a `rejected` ack when the message has a msg_id, else the error topic (or `failed`)."""
    caplog.set_level(logging.WARNING)
    config = node_config(tmp_path / "data", broker.port)
    async with (
        running_hub(config),
        observe(broker.port, f"{ROOT}/window/+/session") as seen,
        device(broker, "terminal-00") as terminal,
    ):
        acked = {
            "huge-level": ("rating", '{"msg_id": "huge-level", "level": ' + HUGE + "}", "level"),
            "huge-pages": (
                "print",
                '{"msg_id": "huge-pages", "job_id": "J1", "state": "done", "pages": -' + HUGE + "}",
                "pages",
            ),
            "huge-reason": (
                "rating",
                '{"msg_id": "huge-reason", "level": 3, "reasons": [1e999]}',
                "reasons[0]",
            ),
        }
        for leaf, payload, _field in acked.values():
            await terminal.publish_raw(leaf, payload)
        for msg_id, (_leaf, _payload, field) in acked.items():
            ack = await terminal.ack_for(msg_id, timeout=5)
            assert (ack.status, ack.id) == ("rejected", None), ack
            assert ack.error is not None
            assert ack.error.startswith(f"{field}: number "), ack.error
            assert len(ack.error) < 200, "the error never echoes the number back in full"

        # A 30-digit session passes the JSON bound but not the field's: it never reaches SQLite.
        ack = await terminal.rate(3, msg_id="big-session", session=10**29)
        assert ack.status == "rejected"
        assert ack.error == f"session: expected a value of at most {2**32 - 1}, got {10**29}"

        # No usable msg_id (none, or the msg_id is itself the huge number): the error topic, by field.
        for payload, field in (
            ('{"level": ' + HUGE + "}", "level"),
            ('{"msg_id": ' + HUGE + ', "level": 5}', "msg_id"),
        ):
            await terminal.publish_raw("rating", payload)
            error = await terminal.next_error(timeout=5)
            assert error.error.startswith(f"{field}: number "), error
            assert error.topic == f"{ROOT}/dev/terminal-00/rating"
        await terminal.publish_raw("health", '{"paper": "ok", "temp_c": -' + HUGE + "}")
        error = await terminal.next_error(timeout=5)
        assert error.error.startswith("temp_c: number "), error

        # A window PC's request with a huge timeout: `failed`, naming the field, and no session.
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="window-pc") as window_pc:
            request = '{"request_id": "r-huge", "timeout_s": ' + HUGE + "}"
            await window_pc.publish(f"{ROOT}/window/w0/evaluate", request, qos=1)
            [update] = await seen.wait_for(f"{ROOT}/window/w0/session", timeout=5)
        assert (update["request_id"], update["state"], update["session"]) == ("r-huge", "failed", 0)
        assert update["error"].startswith("timeout_s: number "), update

        assert (await terminal.rate(5, msg_id="after")).status == "stored", "the hub carries on"
    assert hub_errors(caplog) == [], "no traceback, no error: each was an ordinary refusal"


async def test_a_lone_surrogate_where_a_choice_is_expected_is_refused_naming_the_field(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """`"\\ud800"` is valid JSON but not Unicode. Where a field allows a choice of values (a print's
    `state`) msgspec raised `UnicodeEncodeError` comparing it: a traceback and no answer. Now it is
    refused by field like any wrong value."""
    caplog.set_level(logging.WARNING)
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config), device(broker, "terminal-00") as terminal:
        await terminal.publish_raw("print", '{"msg_id": "odd-state", "job_id": "J1", "state": "\\ud800"}')
        ack = await terminal.ack_for("odd-state", timeout=5)
        assert (ack.status, ack.id) == ("rejected", None), ack
        assert ack.error == "state: expected text, got a lone UTF-16 surrogate escape (not Unicode)"
        assert (await terminal.rate(5, msg_id="after")).status == "stored", "the hub carries on"
    assert hub_errors(caplog) == [], "no traceback, no error: an ordinary refusal"


def test_every_number_a_device_may_send_has_a_bound() -> None:
    """A guard for new fields: an unbounded int would reach SQLite, which overflows beyond 64 bits."""
    unbounded: list[str] = []
    models: list[type[msgspec.Struct]] = [*DEVICE_PAYLOADS.values(), EvaluateRequest]
    _, components = msgspec.json.schema_components(models)
    for model in models:
        for name, prop in components[model.__name__]["properties"].items():
            for option in prop.get("anyOf", [prop]):
                if option.get("type") in ("integer", "number") and not (
                    {"minimum", "exclusiveMinimum"} & option.keys()
                    and {"maximum", "exclusiveMaximum"} & option.keys()
                ):
                    unbounded.append(f"{model.__name__}.{name}")
    assert unbounded == []


# -- retained messages ----------------------------------------------------------------------------


async def test_a_retained_evaluate_is_not_obeyed_after_a_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A retained `window/w0/evaluate` re-prompted the pad at every hub restart, cancelling whatever
    session the window had. The broker re-sends it flagged retained: the hub refuses and counts it."""
    config = node_config(tmp_path / "data", broker.port)
    async with device(broker, "pad-00", "pad") as pad:
        async with running_hub(config) as hub:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="window-pc") as window_pc:
                await window_pc.publish(
                    f"{ROOT}/window/w0/evaluate", '{"request_id": "kept"}', qos=1, retain=True
                )
            # The live copy arrives unflagged (MQTT 3.1.1 clears the flag for existing subscribers).
            assert await until(lambda: len(pad.log.commands) == 1 or rejects(hub, "retained") == 1, 5)
        prompts_before = len(pad.log.commands)
        for restart in range(2):
            async with running_hub(config) as hub:
                refused = await until(
                    lambda: rejects(hub, "retained") >= 1 or len(pad.log.commands) > prompts_before, 5
                )
                await asyncio.sleep(0.3)  # room for a prompt that would follow the refusal
                assert [c.cmd for c in pad.log.commands[prompts_before:]] == [], (
                    f"restart {restart}: the retained request prompted the pad again"
                )
                assert refused
                assert rejects(hub, "retained") == 1
                assert hub.sessions.open_sessions() == []


async def test_a_retained_rating_is_refused_not_acked_duplicate_forever(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A rating published retained came back at every restart and was acked `duplicate` each time.
    Now it is refused on the device's error topic, never acked; the retained `state` still counts."""
    config = node_config(tmp_path / "data", broker.port)
    async with device(broker, "terminal-00") as terminal:
        async with running_hub(config):
            await terminal.publish_raw("rating", '{"msg_id": "kept-1", "level": 1}', retain=True)
            await until(lambda: any(a.msg_id == "kept-1" for a in terminal.log.acks), 5)
        acks_before = [a.status for a in terminal.log.acks if a.msg_id == "kept-1"]
        assert acks_before in ([], ["stored"])  # the live copy: stored, unless the broker flagged it
        for _restart in range(2):
            async with running_hub(config) as hub:
                error = await terminal.next_error(timeout=5)
                assert "retained" in error.error
                assert error.topic == f"{ROOT}/dev/terminal-00/rating"
                await asyncio.sleep(0.3)  # an ack would have followed by now
                assert [a.status for a in terminal.log.acks if a.msg_id == "kept-1"] == acks_before
                assert rejects(hub, "retained") == 1
                state = hub.registry.get("terminal-00")
                assert state is not None
                assert state.online, "the retained dev/terminal-00/state is the contract's, and obeyed"
    assert len(stored_records(tmp_path, "evaluation")) == len(acks_before)


# -- made-up device ids ------------------------------------------------------------------------------


async def test_three_thousand_unknown_device_ids_keep_memory_and_log_bounded(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """3,000 made-up ids made 3,000 entries, 3,000 WARNING lines and 3,000 replies. Now the hub keeps
    the 100 latest, counts the rest, and rate-limits its replies and log lines."""
    caplog.set_level(logging.INFO, logger="hub")
    config = node_config(tmp_path / "data", broker.port, terminals(1))
    async with (
        running_hub(config) as hub,
        observe(broker.port, f"{ROOT}/dev/+/error") as seen,
        aiomqtt.Client("127.0.0.1", broker.port, identifier="prober", max_inflight_messages=500) as prober,
    ):
        prober.pending_calls_threshold = 1000  # aiomqtt warns per publish beyond 10 unconfirmed
        for start in range(0, 3000, 500):
            await asyncio.gather(
                *(
                    prober.publish(f"{ROOT}/dev/ghost-{n:04d}/rating", '{"msg_id": "m", "level": 1}', qos=1)
                    for n in range(start, start + 500)
                )
            )
        assert await until(lambda: rejects(hub, "unknown_device") == 3000, 30)
        await asyncio.sleep(0.5)  # replies still on their way
        status = await hub.node_status.status()
        assert len(status["unknown_devices"]) == 100
        assert "ghost-2999" in status["unknown_devices"], "the most recently seen are kept"
        assert status["unknown_devices_dropped"] == 2900
        dropped = hub.metrics.registry.get_sample_value("hallhub_unknown_devices_dropped_total")
        assert dropped == 2900
        replies = sum(len(m) for t, m in seen.messages.items() if "/dev/ghost-" in t)
        assert 1 <= replies <= 50, f"{replies} replies on error topics"
        warnings = [
            r for r in caplog.records if r.name.startswith("hub") and "not configured" in r.getMessage()
        ]
        assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings[:5]]

        # Throttled, not silenced: a new id a second later is answered.
        await asyncio.sleep(1.1)
        await prober.publish(f"{ROOT}/dev/ghost-new/rating", '{"msg_id": "m", "level": 1}', qos=1)
        [reply] = await seen.wait_for(f"{ROOT}/dev/ghost-new/error", timeout=5)
        assert reply["error"] == f'device "ghost-new" is not configured on node "{NODE_ID}"'
        async with device(broker, "terminal-00") as terminal:
            assert (await terminal.rate(4)).status == "stored", "a configured device is served throughout"


# -- claims a device may not make ---------------------------------------------------------------------


async def test_a_terminal_cannot_rate_for_another_window_or_name_staff(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A terminal's rating for window "07" (not configured) naming staff "S999" raised a bad-review
    alert against S999. Windows are checked against the config; staff come from the session only."""
    config = node_config(tmp_path / "data", broker.port)  # terminal-00/01, pad-00 (w0), pad-01 (w1), qr-00
    async with (
        running_hub(config),
        observe(broker.port, f"{ROOT}/alerts", f"{ROOT}/window/+/session") as seen,
        device(broker, "terminal-00") as terminal,
        device(broker, "pad-00", "pad") as pad0,
        device(broker, "pad-01", "pad") as pad1,
    ):
        refused: list[tuple[SimulatedMqttDevice, dict[str, Any], list[str]]] = [
            (terminal, {"window": "07", "staff_id": "S999"}, ["window", "staff_id"]),
            (terminal, {"window": "w0", "staff_id": "S999"}, ["staff_id"]),
            (terminal, {"window": "07"}, ["window"]),
            (pad0, {"window": "w1"}, ["window"]),
            (pad0, {"window": "07", "session": 5}, ["window"]),
        ]
        for sender, claims, fields in refused:
            ack = await sender.rate(1, **claims)
            assert ack.status == "rejected", (sender.device_id, claims, ack)
            assert ack.error is not None
            assert [part.split(":")[0] for part in ack.error.split("; ")] == fields, ack.error

        # What a device may say: a configured window (a terminal), its own window (a pad).
        assert (await terminal.rate(1, window="w0", case_no="T1")).status == "stored"
        assert (await pad0.rate(1, window="w0", case_no="P1", staff_id="S999")).status == "stored"

        # In a session the session's staff count, whatever the pad says.
        async def answer(command: Any) -> None:
            if command.cmd == "prompt":
                asyncio.get_running_loop().create_task(
                    pad1.rate(2, session=command.session, staff_id="S999", case_no="S1")
                )

        pad1.on_command = answer
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="window-pc") as window_pc:
            request = {"request_id": "r1", "staff_id": "S042", "case_no": "S1"}
            await window_pc.publish(f"{ROOT}/window/w1/evaluate", json.dumps(request), qos=1)
            updates = await seen.wait_for(f"{ROOT}/window/w1/session", 2, timeout=10)
        assert [u["state"] for u in updates] == ["prompted", "rated"]
        alerts = await seen.wait_for(f"{ROOT}/alerts", 3, timeout=5)
    evaluations = {r["data"]["case_no"]: r["data"] for r in stored_records(tmp_path, "evaluation")}
    assert set(evaluations) == {"T1", "P1", "S1"}, "nothing refused was stored"
    assert (evaluations["T1"]["window"], evaluations["T1"]["staff_id"]) == ("w0", None)
    assert (evaluations["P1"]["window"], evaluations["P1"]["staff_id"]) == ("w0", None)
    assert (evaluations["S1"]["window"], evaluations["S1"]["staff_id"]) == ("w1", "S042")
    assert sorted((a["data"]["window"], a["data"]["staff_id"]) for a in alerts) == [
        ("w0", None),
        ("w0", None),
        ("w1", "S042"),
    ]


async def test_on_a_node_without_windows_a_terminal_window_is_kept_but_staff_still_refused(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A street-level node with self-service terminals only has no window to check against."""
    config = node_config(tmp_path / "data", broker.port, terminals(1))
    async with running_hub(config), device(broker, "terminal-00") as terminal:
        assert (await terminal.rate(4, window="W3", case_no="N1")).status == "stored"
        ack = await terminal.rate(4, staff_id="S999", case_no="N2")
        assert ack.status == "rejected"
        assert ack.error is not None
        assert ack.error.startswith("staff_id:")
    evaluations = {r["data"]["case_no"]: r["data"] for r in stored_records(tmp_path, "evaluation")}
    assert (evaluations["N1"]["window"], evaluations["N1"]["staff_id"]) == ("W3", None)
    assert "N2" not in evaluations
