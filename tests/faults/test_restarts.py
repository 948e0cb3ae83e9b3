"""Nothing acked is lost and nothing is stored twice: broker outages, kill -9, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import pytest

from contract.mqtt import AckPayload
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, HubProcess, node_config, process_config, running_hub, terminals
from tests.support.mqtt import observe


def outbox_rows(db: Path) -> tuple[dict[str, int], dict[tuple[str, str], str]]:
    """(evaluation record ids → count, (device, msg_id) → record id) read straight from SQLite."""
    conn = sqlite3.connect(db)
    try:
        ids: dict[str, int] = defaultdict(int)
        for (record_id,) in conn.execute("SELECT id FROM records WHERE kind = 'evaluation'"):
            ids[record_id] += 1
        dedup = {(d, m): r for d, m, r in conn.execute("SELECT device_id, msg_id, record_id FROM dedup")}
    finally:
        conn.close()
    return ids, dedup


async def stream_ratings(
    sim: SimulatedMqttDevice, count: int, acked: dict[tuple[str, str], list[AckPayload]], pause_s: float = 0.0
) -> None:
    """Send `count` ratings one after another, each retried until acked."""
    for n in range(count):
        msg_id = f"{sim.device_id}-{n}"
        ack = await sim.rate(1 + n % 5, msg_id=msg_id)
        acked[(sim.device_id, msg_id)].append(ack)
        await asyncio.sleep(pause_s)


def assert_exactly_once(db: Path, acked: dict[tuple[str, str], list[AckPayload]], expected: int) -> None:
    ids, dedup = outbox_rows(db)
    assert len(acked) == expected, "every message was eventually acked"
    assert all(count == 1 for count in ids.values())
    assert len(ids) == expected, f"{len(ids)} evaluations stored for {expected} messages"
    for key, acks in acked.items():
        assert key in dedup, f"acked {key} has no record"
        assert {a.id for a in acks} == {dedup[key]}, f"{key} acked with another id"
        assert dedup[key] in ids


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_broker_down_for_10s_while_devices_retry(
    tmp_path: Path, broker: MosquittoBroker, how: str
) -> None:
    config = node_config(tmp_path / "data", broker.port, devices=terminals(5))
    acked: dict[tuple[str, str], list[AckPayload]] = defaultdict(list)
    async with running_hub(config) as hub:
        sims = [
            SimulatedMqttDevice(
                "127.0.0.1", broker.port, NODE_ID, f"terminal-{n:02d}", retry_interval_s=0.5, max_attempts=200
            )
            for n in range(5)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for sim in sims:
                await stack.enter_async_context(sim)
            streams = [asyncio.create_task(stream_ratings(sim, 100, acked, pause_s=0.02)) for sim in sims]
            async with asyncio.timeout(30):
                while len(acked) < 100:
                    await asyncio.sleep(0.01)
            if how == "killed":
                broker.kill()
            else:
                broker.stop()
            assert len(acked) < 400, "the outage falls in the middle of the stream"
            await asyncio.sleep(10)
            broker.start()
            await asyncio.wait_for(asyncio.gather(*streams), 120)
        assert hub.gateway.connects >= 2
    assert_exactly_once(tmp_path / "data" / "outbox.db", acked, 500)


async def test_kill9_while_2000_ratings_stream_from_20_devices(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    devices = terminals(20)
    config_path, _api_port = process_config(tmp_path, broker.port, devices)
    hub = HubProcess(config_path, _api_port, tmp_path / "hub.log")
    hub.start()
    acked: dict[tuple[str, str], list[AckPayload]] = defaultdict(list)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sims = [
                await stack.enter_async_context(
                    SimulatedMqttDevice(
                        "127.0.0.1", broker.port, NODE_ID, d["id"], retry_interval_s=0.5, max_attempts=400
                    )
                )
                for d in devices
            ]
            streams = [asyncio.create_task(stream_ratings(sim, 100, acked)) for sim in sims]
            kills = 0
            for threshold in (300, 900, 1500):
                deadline = time.monotonic() + 60
                while len(acked) < threshold and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                hub.kill9()
                kills += 1
                await asyncio.sleep(1.0)
                hub.start()
            await asyncio.wait_for(asyncio.gather(*streams), 180)
        assert kills == 3
        code = hub.terminate()
        assert code == 0
    finally:
        hub.stop_quietly()
    assert_exactly_once(tmp_path / "data" / "outbox.db", acked, 2000)
    log = (tmp_path / "hub.log").read_text()
    assert "Traceback" not in log


async def test_sigterm_stops_cleanly_and_says_offline(tmp_path: Path, broker: MosquittoBroker) -> None:
    config_path, api_port = process_config(tmp_path, broker.port, terminals(1))
    hub = HubProcess(config_path, api_port, tmp_path / "hub.log")
    hub.start()
    try:
        async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as sim:
            assert (await sim.rate(5)).status == "stored"
        assert hub.terminate() == 0
    finally:
        hub.stop_quietly()
    root = f"hall/v1/{NODE_ID}"
    async with observe(broker.port, f"{root}/hub/state") as seen:
        state = (await seen.wait_for(f"{root}/hub/state"))[-1]
    assert state["online"] is False
    assert state["outbox_pending"] >= 1
    log = (tmp_path / "hub.log").read_text()
    assert "hub: stopped" in log
    ids, _ = outbox_rows(tmp_path / "data" / "outbox.db")
    assert len(ids) == 1
    assert json.loads('{"ok": true}')["ok"]
