"""kill -9 at random moments, 20 times, while MQTT devices, serial keypads and the uplink are all busy.

Afterwards: every acked message is in the outbox exactly once, every record reached the central
receiver exactly once, and the hub serves the next rating.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections import defaultdict
from pathlib import Path

from contract.mqtt import AckPayload
from drivers.keypad.simulator import KeyPress, SimulatedKeypad, SimulatedLine
from hub.ops.broker import MosquittoBroker, free_port
from hub.simulate.mqtt_device import NotAcked, SimulatedMqttDevice
from sync.receiver import start_receiver
from sync.receiver._store import DEFAULT_TABLE
from tests.support.hub import NODE_ID, PULL_TOKEN, HubProcess, node_raw, terminals, write_toml

TOKEN = "central-test-token"
KILLS = 20


async def test_kill9_twenty_times_with_everything_busy(tmp_path: Path, broker: MosquittoBroker) -> None:
    rng = random.Random(9)
    port = tmp_path / "ttyKP0"
    keypads = [SimulatedKeypad(a, retransmit_interval_s=0.3, max_sends=400) for a in (1, 2)]
    devices = [
        *terminals(8),
        *(
            {
                "id": f"kp-{a}",
                "kind": "keypad",
                "transport": "serial",
                "port": str(port),
                "address": a,
                "window": f"0{a}",
            }
            for a in (1, 2)
        ),
    ]
    db_url = f"sqlite:///{tmp_path / 'central.db'}"
    acked: dict[tuple[str, str], list[AckPayload]] = defaultdict(list)
    presses: list[KeyPress] = []
    async with start_receiver("127.0.0.1:0", db_url, TOKEN) as receiver, SimulatedLine(port, keypads):
        api_port = free_port()
        raw = node_raw(tmp_path / "data", broker.port, devices)
        raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN}
        raw["central"] = {"url": receiver.url, "token": TOKEN, "batch_max": 50}
        raw["evaluation"] = {"max_free_per_minute": 600}
        hub = HubProcess(write_toml(tmp_path / "node.toml", raw), api_port, tmp_path / "hub.log")
        hub.start()
        stop = asyncio.Event()
        try:
            async with contextlib.AsyncExitStack() as stack:
                sims = [
                    await stack.enter_async_context(
                        SimulatedMqttDevice(
                            "127.0.0.1", broker.port, NODE_ID, d["id"], retry_interval_s=0.5, max_attempts=600
                        )
                    )
                    for d in terminals(8)
                ]

                async def terminal_load(sim: SimulatedMqttDevice) -> None:
                    n = 0
                    while not stop.is_set():
                        msg_id = f"{sim.device_id}-{n}"
                        with contextlib.suppress(NotAcked):
                            acked[(sim.device_id, msg_id)].append(await sim.rate(1 + n % 5, msg_id=msg_id))
                        n += 1
                        await asyncio.sleep(0.02)

                async def keypad_load(keypad: SimulatedKeypad) -> None:
                    n = 0
                    while not stop.is_set():
                        presses.append(keypad.free_rating(1 + n % 5))
                        n += 1
                        await asyncio.sleep(0.5)

                load = [asyncio.create_task(terminal_load(sim)) for sim in sims]
                load += [asyncio.create_task(keypad_load(k)) for k in keypads]
                for _ in range(KILLS):
                    await asyncio.sleep(rng.uniform(0.3, 1.2))
                    hub.kill9()
                    await asyncio.sleep(rng.uniform(0.1, 0.5))
                    hub.start()
                stop.set()
                await asyncio.wait_for(asyncio.gather(*load), 120)
                assert all([await p.wait(60) for p in presses]), "every key press was eventually acked"
                async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as last:
                    assert (await last.rate(5, msg_id="after-the-storm")).status == "stored"
            db = tmp_path / "data" / "outbox.db"
            async with asyncio.timeout(120):
                while True:
                    conn = sqlite3.connect(db)
                    pending = conn.execute("SELECT count(*) FROM records WHERE state = 0").fetchone()[0]
                    conn.close()
                    if pending == 0:
                        break
                    await asyncio.sleep(0.5)
            assert hub.terminate() == 0
        finally:
            hub.stop_quietly()

    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        outbox_ids = [r[0] for r in conn.execute("SELECT id FROM records")]
        dedup = {(d, m): r for d, m, r in conn.execute("SELECT device_id, msg_id, record_id FROM dedup")}
        keypad_evaluations = conn.execute(
            "SELECT count(*) FROM records WHERE kind = 'evaluation' AND device_id LIKE 'kp-%'"
        ).fetchone()[0]
    finally:
        conn.close()
    central = sqlite3.connect(tmp_path / "central.db")
    try:
        central_ids = [r[0] for r in central.execute(f"SELECT id FROM {DEFAULT_TABLE}")]
    finally:
        central.close()
    assert len(outbox_ids) == len(set(outbox_ids))
    for key, acks in acked.items():
        assert {a.id for a in acks} == {dedup[key]}, f"{key}: acked id not in the outbox"
    assert keypad_evaluations == len(presses), "each acked key press stored exactly once"
    assert sorted(central_ids) == sorted(outbox_ids), "every record reached the platform exactly once"
    assert len(acked) > 100
    assert "Traceback" not in (tmp_path / "hub.log").read_text()
