"""The wall clock jumps back an hour and forward a day under a running hub (libfaketime).

Ordering by seq holds, ids stay unique, dedup windows and session timeouts run on the monotonic
clock so they neither fire early nor late, and keypads stay online.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub.ops.broker import MosquittoBroker, free_port
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.clock import faketime_env
from tests.support.hub import NODE_ID, PULL_TOKEN, HubProcess, node_raw, write_toml
from tests.support.mqtt import observe

ROOT = f"hall/v1/{NODE_ID}"


async def jump(offset_file: Path, offset: str) -> None:
    offset_file.write_text(offset + "\n")
    await asyncio.sleep(0.3)


async def session_states(seen: Any, request_id: str, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(15):
        while True:
            mine = [m for m in seen.messages[f"{ROOT}/window/07/session"] if m["request_id"] == request_id]
            if len(mine) >= count:
                return mine
            await asyncio.sleep(0.05)


async def test_wall_clock_jumps(tmp_path: Path, broker: MosquittoBroker) -> None:
    offset_file = tmp_path / "faketime"
    env = faketime_env(offset_file)
    port = tmp_path / "ttyKP0"
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
            },
            {"id": "terminal-00", "kind": "terminal", "transport": "mqtt"},
        ],
    )
    raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN}
    hub = HubProcess(write_toml(tmp_path / "node.toml", raw), api_port, tmp_path / "hub.log", env=env)
    keypad = SimulatedKeypad(1, retransmit_interval_s=0.3)
    async with SimulatedLine(port, [keypad]), observe(broker.port, f"{ROOT}/window/+/session") as seen:
        hub.start()
        try:
            async with (
                SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as terminal,
                aiomqtt.Client("127.0.0.1", broker.port) as pc,
            ):

                async def rate_some(tag: str) -> None:
                    for n in range(10):
                        assert (await terminal.rate(4, msg_id=f"{tag}-{n}")).status == "stored"

                async def evaluate(request_id: str) -> None:
                    await pc.publish(
                        f"{ROOT}/window/07/evaluate",
                        json.dumps({"request_id": request_id, "timeout_s": 20}),
                        qos=1,
                    )

                await rate_some("before")
                await evaluate("s1")
                assert (await session_states(seen, "s1", 1))[0]["state"] == "prompted"

                await jump(offset_file, "-1h")
                await rate_some("back")
                assert await keypad.press(5).wait()
                assert [u["state"] for u in await session_states(seen, "s1", 2)] == ["prompted", "rated"]
                keypad.drop_acks = 2
                free = keypad.free_rating(3)
                async with asyncio.timeout(10):
                    while keypad.acks_ignored < 1:
                        await asyncio.sleep(0.02)

                await jump(offset_file, "+1d")
                assert await free.wait(), "the free rating's retransmits straddle the jump"
                await evaluate("s2")
                await asyncio.sleep(1.0)
                assert [u["state"] for u in await session_states(seen, "s2", 1)] == ["prompted"], (
                    "no early expiry"
                )
                assert await keypad.press(2).wait()
                assert [u["state"] for u in await session_states(seen, "s2", 2)] == ["prompted", "rated"]
                await rate_some("forward")
                assert (await terminal.rate(4, msg_id="forward-0")).status == "duplicate"

                async with aiohttp.ClientSession() as http:
                    status = await (await http.get(f"http://127.0.0.1:{api_port}/v1/status")).json()
                assert {d["id"]: d["online"] for d in status["devices"]} == {
                    "kp-07": True,
                    "terminal-00": True,
                }
            assert hub.terminate() == 0
        finally:
            offset_file.write_text("+0\n")
            hub.stop_quietly()

    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        rows = conn.execute(
            "SELECT seq, id, created_at, json_extract(body, '$.data.channel') FROM records"
            " WHERE kind = 'evaluation' ORDER BY rowid"
        ).fetchall()
    finally:
        conn.close()
    seqs = [r[0] for r in rows]
    assert seqs == sorted(seqs)
    assert len({r[1] for r in rows}) == len(rows) == 33, "30 terminal ratings, 2 sessions, 1 free rating"
    stamps = [datetime.fromisoformat(r[2].replace("Z", "+00:00")) for r in rows]
    spread = max(stamps) - min(stamps)
    assert spread.total_seconds() > 23 * 3600, "the hub's wall clock really jumped a day"
    assert any(b < a for a, b in itertools.pairwise(stamps)), "and really went back"
    assert "Traceback" not in (tmp_path / "hub.log").read_text()
