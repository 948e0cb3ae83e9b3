"""The MQTT device path on a real Mosquitto: store, ack, mirror, reject, de-duplicate."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, PULL_TOKEN, node_config, running_hub
from tests.support.mqtt import observe

ROOT = f"hall/v1/{NODE_ID}"


def device(broker: MosquittoBroker, device_id: str, kind: str = "terminal") -> SimulatedMqttDevice:
    return SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, device_id, kind=kind, retry_interval_s=2.0)


async def test_rating_round_trip(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config) as hub, observe(broker.port, f"{ROOT}/events/#", f"{ROOT}/alerts") as seen:
        async with device(broker, "terminal-00") as terminal:
            ack = await terminal.rate(5, case_no="SD2026001", item_code="370100-001-01")
        assert ack.status == "stored"
        assert ack.error is None
        assert ack.id is not None

        row = (
            sqlite3.connect(tmp_path / "data" / "outbox.db")
            .execute("SELECT body FROM records WHERE id = ?", (ack.id,))
            .fetchone()
        )
        stored = json.loads(row[0])
        assert stored["kind"] == "evaluation"
        data = stored["data"]
        assert data["level"] == 5
        assert data["channel"] == "terminal"
        assert data["case_no"] == "SD2026001"
        assert data["node_id"] == NODE_ID
        assert data["hall_code"] == "370102"
        assert data["flags"] == []
        assert stored["created_at"].endswith("Z")
        assert len(stored["created_at"]) == len("2026-11-22T09:30:00.123Z")

        events = await seen.wait_for(f"{ROOT}/events/evaluation")
        assert events[0]["id"] == ack.id
        assert events[0]["seq"] == stored["seq"]

        async with aiohttp.ClientSession() as http:
            response = await http.get(
                f"http://127.0.0.1:{hub.api_port}/v1/records",
                headers={"Authorization": f"Bearer {PULL_TOKEN}"},
                params={"kind": "evaluation"},
            )
            body = await response.json()
        assert [r["id"] for r in body["records"]] == [ack.id]
        assert seen.messages.get(f"{ROOT}/alerts", []) == []


async def test_bad_review_raises_an_alert_at_commit(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config), observe(broker.port, f"{ROOT}/alerts") as seen:
        async with device(broker, "pad-00", kind="pad") as pad:
            ack = await pad.rate(2, reasons=["R1", "R2"], case_no="SD9", staff_id="S1")
        alerts = await seen.wait_for(f"{ROOT}/alerts")
    alert = alerts[0]
    assert alert["kind"] == "alert"
    assert alert["data"]["type"] == "bad_review"
    assert alert["data"]["evaluation_id"] == ack.id
    assert alert["data"]["window"] == "w0"
    assert alert["data"]["level"] == 2
    assert alert["data"]["case_no"] == "SD9"


async def test_same_msg_id_five_times_is_one_record(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config) as hub, device(broker, "terminal-00") as terminal:
        for _ in range(5):
            await terminal.publish_raw("rating", json.dumps({"msg_id": "m-1", "level": 4}))
        for _ in range(100):
            if len(terminal.log.acks) >= 5:
                break
            await asyncio.sleep(0.05)
        statuses = sorted(a.status for a in terminal.log.acks)
        assert statuses == ["duplicate"] * 4 + ["stored"]
        assert len({a.id for a in terminal.log.acks}) == 1
        stats = await hub.outbox.stats()
        assert stats.pending_by_kind == {"evaluation": 1, "device_status": 1}


# (leaf, device, payload, expected) — expected is ("rejected", ack error) or ("error", error-topic text)
LONG = "x" * 65
INVALID: list[tuple[str, str, Any, tuple[str, str]]] = [
    ("rating", "terminal-00", {"level": "5"}, ("rejected", "level: expected a whole number, got '5'")),
    ("rating", "terminal-00", {"level": 0}, ("rejected", "level: expected a value of at least 1, got 0")),
    ("rating", "terminal-00", {"level": 6}, ("rejected", "level: expected a value of at most 5, got 6")),
    ("rating", "terminal-00", {"level": True}, ("rejected", "level: expected a whole number, got True")),
    ("rating", "terminal-00", {}, ("rejected", "level: is required but missing")),
    (
        "rating",
        "terminal-00",
        {"level": 3, "reasons": "R1"},
        ("rejected", "reasons: expected a list, got 'R1'"),
    ),
    ("rating", "terminal-00", {"level": 3, "reasons": [1]}, ("rejected", "reasons[0]: expected text, got 1")),
    (
        "rating",
        "terminal-00",
        {"level": 3, "reasons": ["R1"] * 17},
        ("rejected", "reasons: expected at most 16 items"),
    ),
    (
        "rating",
        "terminal-00",
        {"level": 3, "comment": "差" * 501},
        ("rejected", "comment: expected at most 500 characters"),
    ),
    ("rating", "terminal-00", {"level": 3, "comment": 5}, ("rejected", "comment: expected text, got 5")),
    (
        "rating",
        "terminal-00",
        {"level": 3, "case_no": LONG},
        ("rejected", "case_no: expected at most 64 characters"),
    ),
    ("rating", "terminal-00", {"level": 3, "item_code": 1}, ("rejected", "item_code: expected text, got 1")),
    (
        "rating",
        "terminal-00",
        {"level": 3, "window": "w 1"},
        ("rejected", "window: expected 1 to 16 letters, digits, '_' or '-', got 'w 1'"),
    ),
    ("rating", "terminal-00", {"level": 3, "staff_id": ""}, ("rejected", "staff_id: must not be empty")),
    (
        "rating",
        "terminal-00",
        {"level": 3, "session": -1},
        ("rejected", "session: expected a value of at least 0, got -1"),
    ),
    (
        "rating",
        "terminal-00",
        {"level": 3, "session": "1"},
        ("rejected", "session: expected a whole number, got '1'"),
    ),
    (
        "rating",
        "terminal-00",
        {"level": 3, "ts": "yesterday"},
        ("rejected", "ts: expected an RFC 3339 time such as \"2026-11-22T09:30:00+08:00\", got 'yesterday'"),
    ),
    (
        "rating",
        "terminal-00",
        {"level": 3, "ts": "2026-11-22T09:30:00"},
        (
            "rejected",
            "ts: expected an RFC 3339 time such as \"2026-11-22T09:30:00+08:00\", got '2026-11-22T09:30:00'",
        ),
    ),
    (
        "rating",
        "terminal-00",
        {"level": 9, "comment": 1},
        ("rejected", "level: expected a value of at most 5, got 9; comment: expected text, got 1"),
    ),
    ("rating", "qr-00", {"level": 5}, ("rejected", 'a qr device cannot send "rating" messages')),
    ("scan", "qr-00", {}, ("rejected", "data: is required but missing")),
    ("scan", "qr-00", {"data": ""}, ("rejected", "data: must not be empty")),
    ("scan", "qr-00", {"data": "x" * 4097}, ("rejected", "data: expected at most 4096 characters")),
    ("scan", "qr-00", {"data": "ok", "symbology": 5}, ("rejected", "symbology: expected text, got 5")),
    ("print", "terminal-00", {"state": "done"}, ("rejected", "job_id: is required but missing")),
    (
        "print",
        "terminal-00",
        {"job_id": "j1", "state": "printing"},
        ("rejected", "state: expected one of 'started', 'done' or 'failed', got 'printing'"),
    ),
    (
        "print",
        "terminal-00",
        {"job_id": "j1", "state": "done", "pages": -1},
        ("rejected", "pages: expected a value of at least 0, got -1"),
    ),
    (
        "print",
        "terminal-00",
        {"job_id": "j1", "state": "failed", "error": 5},
        ("rejected", "error: expected text, got 5"),
    ),
    (
        "print",
        "pad-00",
        {"job_id": "j1", "state": "done"},
        ("rejected", 'a pad device cannot send "print" messages'),
    ),
    ("rating", "terminal-00", "NO_MSG_ID", ("error", "msg_id: expected text of 1 to 64 characters")),
    (
        "rating",
        "terminal-00",
        {"msg_id": LONG, "level": 5},
        ("error", "msg_id: expected text of 1 to 64 characters"),
    ),
    (
        "rating",
        "terminal-00",
        {"msg_id": 5, "level": 5},
        ("error", "msg_id: expected text of 1 to 64 characters"),
    ),
    (
        "rating",
        "terminal-00",
        b'{"msg_id": "\\ud800x", "level": 5}',  # valid JSON, but a lone surrogate is no text
        ("error", "msg_id: expected text of 1 to 64 characters"),
    ),
    (
        "rating",
        "terminal-00",
        {"level": 5, "comment": "\ud800"},
        ("rejected", "comment: expected text, got '\\ud800' (a lone UTF-16 surrogate escape)"),
    ),
    (
        "rating",
        "terminal-00",
        b"{not json",
        (
            "error",
            "payload is not JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
    ),
    ("rating", "terminal-00", b"\xff\xfe{}", ("error", "payload is not UTF-8 (bad byte at offset 0)")),
    ("rating", "terminal-00", b"[1, 2]", ("error", "payload must be a JSON object, got list")),
    (
        "rating",
        "terminal-00",
        b"{" + b" " * (1024 * 1024) + b"}",
        ("error", "payload is 1048578 bytes; the limit is 16384"),
    ),
    (
        "health",
        "terminal-00",
        {"paper": "empty"},
        ("error", "paper: expected one of 'ok', 'low' or 'out', got 'empty'"),
    ),
    ("health", "terminal-00", {"temp_c": "hot"}, ("error", "temp_c: expected a number, got 'hot'")),
    ("health", "terminal-00", {"jam": "yes"}, ("error", "jam: expected true or false, got 'yes'")),
    ("state", "terminal-00", {"kind": "terminal"}, ("error", "online: is required but missing")),
    ("rating", "ghost", {"level": 5}, ("error", 'device "ghost" is not configured on node "test-node"')),
]


async def test_every_bad_payload_is_rejected_with_its_field_and_the_hub_carries_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with (
        running_hub(config) as hub,
        observe(broker.port, f"{ROOT}/dev/+/ack", f"{ROOT}/dev/+/error") as seen,
        # The unknown "ghost" is a bare client: a simulator's own state message on connect would use
        # up the one reply a minute an unknown id gets.
        aiomqtt.Client("127.0.0.1", broker.port, identifier="ghost") as ghost,
    ):
        sims = {}
        for name, kind in (("terminal-00", "terminal"), ("qr-00", "qr"), ("pad-00", "pad")):
            sims[name] = await device(broker, name, kind).__aenter__()
        try:
            mismatches = []
            for n, (leaf, device_id, payload, (outcome, text)) in enumerate(INVALID):
                msg_id = f"bad-{n}"
                if isinstance(payload, dict) and "msg_id" not in payload:
                    raw = json.dumps({"msg_id": msg_id, **payload}).encode()
                elif payload == "NO_MSG_ID":
                    raw = b'{"level": 5}'
                elif isinstance(payload, dict):
                    raw = json.dumps(payload).encode()
                else:
                    raw = payload
                topic = f"{ROOT}/dev/{device_id}/{'ack' if outcome == 'rejected' else 'error'}"
                before = len(seen.messages[topic])
                if device_id == "ghost":
                    await ghost.publish(f"{ROOT}/dev/ghost/{leaf}", raw, qos=1)
                else:
                    await sims[device_id].publish_raw(leaf, raw)
                got = (await seen.wait_for(topic, before + 1))[before]
                actual: tuple[object, ...]
                expected: tuple[object, ...]
                if outcome == "rejected":
                    actual = (got["status"], got["error"], got["msg_id"], got["id"])
                    expected = ("rejected", text, msg_id, None)
                else:
                    actual = (got["error"], got["topic"])
                    expected = (text, f"{ROOT}/dev/{device_id}/{leaf}")
                if actual != expected:
                    mismatches.append((n, leaf, actual, expected))
            assert not mismatches, "\n".join(map(str, mismatches))

            ack = await sims["terminal-00"].rate(5)
            assert ack.status == "stored"
        finally:
            for sim in sims.values():
                await sim.__aexit__(None, None, None)

        rejects: dict[str, float] = {}
        async with aiohttp.ClientSession() as http, asyncio.timeout(10):
            while sum(rejects.values()) != len(INVALID):
                metrics = await (await http.get(f"http://127.0.0.1:{hub.api_port}/metrics")).text()
                rejects = {
                    line.split('reason="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith("hallhub_rejects_total{")
                }
                await asyncio.sleep(0.05)
        assert rejects["invalid_field"] == 32
        assert rejects["unknown_device"] == 1
        assert rejects["too_large"] == 1
        assert rejects["not_utf8"] == 1
        assert rejects["no_msg_id"] == 4
        assert rejects["wrong_kind"] == 2
        assert 'hallhub_acks_total{status="rejected"} 30.0' in metrics
        status = await hub.node_status.status()
        assert (status["unknown_devices"], status["unknown_devices_dropped"]) == ({"ghost": 1}, 0)
        terminal_errors = next(d for d in status["devices"] if d["id"] == "terminal-00")["errors"]
        assert terminal_errors["invalid_field"] >= 10


async def test_scan_print_health_and_state_are_stored(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config) as hub, observe(broker.port, f"{ROOT}/events/#") as seen:
        async with device(broker, "qr-00", "qr") as scanner, device(broker, "terminal-00") as terminal:
            assert (
                await scanner.send("scan", {"data": "PICKUP-123456", "symbology": "QRCode"})
            ).status == "stored"
            assert (
                await terminal.send("print", {"job_id": "J1", "state": "done", "pages": 3})
            ).status == "stored"
            await terminal.publish_raw("health", json.dumps({"paper": "low", "jam": False}))
            await terminal.publish_raw("health", json.dumps({"paper": "low", "jam": False}))
            scans = await seen.wait_for(f"{ROOT}/events/scan")
            prints = await seen.wait_for(f"{ROOT}/events/print")
            statuses = await seen.wait_for(f"{ROOT}/events/device_status", 3)
        assert scans[0]["data"]["data"] == "PICKUP-123456"
        assert prints[0]["data"]["pages"] == 3
        health = [s["data"] for s in statuses if "health" in s["data"]]
        assert health == [
            {"device_id": "terminal-00", "node_id": NODE_ID, "health": {"paper": "low", "jam": False}}
        ]
        await asyncio.sleep(0.3)
        states = {d["id"]: d for d in (await hub.node_status.status())["devices"]}
        assert states["qr-00"]["online"] is False, "the device said goodbye with online: false"
        assert states["terminal-00"]["fw"] == "sim-1.0"


async def test_hub_state_is_retained_and_offline_after_shutdown(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config):
        async with observe(broker.port, f"{ROOT}/hub/state") as seen:
            state = (await seen.wait_for(f"{ROOT}/hub/state"))[0]
        assert state["online"] is True
        assert state["version"]
    async with observe(broker.port, f"{ROOT}/hub/state") as seen:
        state = (await seen.wait_for(f"{ROOT}/hub/state"))[-1]
        assert seen.retained[f"{ROOT}/hub/state"][-1] is True
    assert state["online"] is False


async def test_messages_sent_while_the_hub_is_down_are_delivered_after(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config):
        pass
    async with device(broker, "terminal-00") as terminal:
        for n in range(20):
            await terminal.publish_raw("rating", json.dumps({"msg_id": f"offline-{n}", "level": 4}))
        async with running_hub(config) as hub:
            for _ in range(200):
                if len(terminal.log.acks) >= 20:
                    break
                await asyncio.sleep(0.05)
            assert sorted(a.msg_id for a in terminal.log.acks) == sorted(f"offline-{n}" for n in range(20))
            assert (await hub.outbox.stats()).pending_by_kind["evaluation"] == 20


async def test_beyond_the_in_flight_bound_messages_wait_for_their_retry(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: Any
) -> None:
    """Over MAX_CONCURRENT_MESSAGES a message is dropped unanswered and counted; its retry is stored."""
    monkeypatch.setattr("hub.ingest.gateway.MAX_CONCURRENT_MESSAGES", 3)
    config = node_config(tmp_path / "data", broker.port)
    async with running_hub(config) as hub, device(broker, "terminal-00") as terminal:
        terminal.retry_interval_s = 0.5
        acks = await asyncio.gather(*(terminal.rate(4, msg_id=f"burst-{n}") for n in range(40)))
        assert {ack.status for ack in acks} == {"stored"}
        assert hub.gateway.overloaded > 0, "40 at once over a bound of 3: some must have waited"
        assert (await hub.outbox.stats()).pending_by_kind["evaluation"] == 40
        async with aiohttp.ClientSession() as http:
            metrics = await (await http.get(f"http://127.0.0.1:{hub.api_port}/metrics")).text()
    assert f'hallhub_rejects_total{{reason="overloaded"}} {float(hub.gateway.overloaded)}' in metrics


def test_json_nested_too_deeply_is_a_clear_rejection_not_a_crash() -> None:
    import pytest

    from contract.mqtt import PayloadError, decode_object

    with pytest.raises(PayloadError, match="nested too deeply") as caught:
        decode_object(b'{"a":' + b"[" * 8000 + b"]" * 8000 + b"}")
    assert caught.value.reason == "not_json"
