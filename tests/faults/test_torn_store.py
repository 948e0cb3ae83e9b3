"""A torn WAL or a damaged outbox file at start-up: the hub starts, reports it, and keeps what it can."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from pathlib import Path

from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, HubProcess, process_config, terminals


async def fill(broker: MosquittoBroker, count: int, prefix: str = "m") -> None:
    async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as terminal:
        for n in range(count):
            assert (await terminal.rate(3, msg_id=f"{prefix}{n}", comment="评" * 200)).status == "stored"


def health(api_port: int, settle_s: float = 10.0) -> tuple[int, dict[str, object]]:
    """/healthz once the hub is healthy, or its last answer after `settle_s` (the API can answer
    503 for the few milliseconds between READY and the broker connection)."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = exc.code, json.loads(exc.read())
        if time.monotonic() >= deadline:
            return answer
        time.sleep(0.05)


async def test_torn_wal_tail_is_dropped_and_the_rest_kept(tmp_path: Path, broker: MosquittoBroker) -> None:
    config_path, api_port = process_config(tmp_path, broker.port, terminals(1))
    hub = HubProcess(config_path, api_port, tmp_path / "hub.log")
    hub.start()
    try:
        await fill(broker, 200)
        hub.kill9()
        wal = tmp_path / "data" / "outbox.db-wal"
        assert wal.stat().st_size > 10_000, "acked records are still in the WAL after kill -9"
        with wal.open("r+b") as handle:
            handle.truncate(wal.stat().st_size - 3000)
        hub.start()
        status, body = health(api_port)
        assert (status, body) == (200, {"status": "ok"}), "a torn tail is SQLite's normal crash recovery"
        await fill(broker, 1, prefix="after-")
        assert hub.terminate() == 0
    finally:
        hub.stop_quietly()
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = conn.execute("SELECT count(*) FROM records WHERE kind = 'evaluation'").fetchone()[0]
    finally:
        conn.close()
    assert 150 < kept <= 201


async def test_damaged_file_is_moved_aside_reported_and_salvaged(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config_path, api_port = process_config(tmp_path, broker.port, terminals(1))
    hub = HubProcess(config_path, api_port, tmp_path / "hub.log")
    hub.start()
    try:
        await fill(broker, 300)
        assert hub.terminate() == 0
        db = tmp_path / "data" / "outbox.db"
        raw = bytearray(db.read_bytes())
        middle = len(raw) // 4096 // 2
        raw[middle * 4096 : middle * 4096 + 4096] = bytes(4096)
        raw[middle * 4096 + 8 : middle * 4096 + 16] = b"\xde\xad\xbe\xef" * 2
        db.write_bytes(bytes(raw))
        hub.start()
        status, body = health(api_port, settle_s=0)
        assert status == 503
        problems = body["problems"]
        assert isinstance(problems, list)
        assert any(
            "outbox was damaged and moved aside to" in p and "pending records salvaged" in p for p in problems
        )
        await fill(broker, 1, prefix="after-")
        assert hub.terminate() == 0
    finally:
        hub.stop_quietly()
    moved = list((tmp_path / "data").glob("outbox.db.corrupt-*"))
    assert [p.name for p in moved if not p.name.endswith(("-wal", "-shm"))], "the damaged file is kept"
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        alerts = [
            json.loads(b)["data"] for (b,) in conn.execute("SELECT body FROM records WHERE kind = 'alert'")
        ]
        evaluations = conn.execute("SELECT count(*) FROM records WHERE kind = 'evaluation'").fetchone()[0]
        after = conn.execute("SELECT count(*) FROM dedup WHERE msg_id = 'after-0'").fetchone()[0]
    finally:
        conn.close()
    assert alerts[0]["type"] == "store_recovered"
    assert 0 < evaluations - 1 <= alerts[0]["salvaged"] < 300, "part of the pending records was read back"
    assert after == 1, "the new store takes ratings"
    assert "is damaged" in (tmp_path / "hub.log").read_text()
    await asyncio.sleep(0)
