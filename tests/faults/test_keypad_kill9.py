"""A keypad's KEY committed but never acked (hub killed): the retransmission after restart is a duplicate."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiomqtt

from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub.ops.broker import MosquittoBroker, free_port
from tests.support.hub import NODE_ID, PULL_TOKEN, HubProcess, node_raw, write_toml


def count_evaluations(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM records WHERE kind = 'evaluation'").fetchone()[0])
    finally:
        conn.close()


async def test_kill9_after_commit_before_ack(tmp_path: Path, broker: MosquittoBroker) -> None:
    port = tmp_path / "ttyKP0"
    keypad = SimulatedKeypad(1, retransmit_interval_s=0.3, max_sends=200)
    api_port = free_port()
    raw = node_raw(
        tmp_path / "data",
        broker.port,
        [
            {
                "id": "kp-07",
                "kind": "keypad",
                "transport": "serial",
                "port": str(port),
                "address": 1,
                "window": "07",
            }
        ],
    )
    raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN}
    hub = HubProcess(write_toml(tmp_path / "node.toml", raw), api_port, tmp_path / "hub.log")
    db = tmp_path / "data" / "outbox.db"
    async with SimulatedLine(port, [keypad]):
        hub.start()
        try:
            async with asyncio.timeout(20):
                while keypad.pings == 0:
                    await asyncio.sleep(0.05)
            async with aiomqtt.Client("127.0.0.1", broker.port) as pc:
                await pc.publish(
                    f"hall/v1/{NODE_ID}/window/07/evaluate",
                    json.dumps({"request_id": "r1", "case_no": "K9"}),
                    qos=1,
                )
            async with asyncio.timeout(10):
                while keypad.active_prompt is None:
                    await asyncio.sleep(0.02)
            keypad.drop_acks = 10**6
            press = keypad.press(2)
            async with asyncio.timeout(10):
                while count_evaluations(db) == 0 or keypad.acks_ignored == 0:
                    await asyncio.sleep(0.02)
            hub.kill9()
            keypad.drop_acks = 0
            assert not press.acked.is_set(), "the keypad never accepted an ACK before the kill"
            hub.start()
            assert await press.wait(20), "the retransmission after restart is acked"
            assert hub.terminate() == 0
        finally:
            hub.stop_quietly()
    assert count_evaluations(db) == 1
    log = (tmp_path / "hub.log").read_text()
    assert "Traceback" not in log
