"""The receiver counts what it commits even when the client goes away mid-request.

A hub killed (or a proxy giving up) while its batch is being committed cancels the request's
handler; the insert still commits. Its records must be counted as accepted then, or the hub's
retry of the same batch counts them as duplicates that were never accepted (seen as a flaky
`test_kill9_while_draining_five_times`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from contract import wire
from hub.config import parse_config
from tests.sync.support import DEFAULT_TABLE, TOKEN, central_rows, ratings, recording_receiver, sync_raw


async def test_a_batch_committed_after_its_client_left_is_counted_accepted(tmp_path: Path) -> None:
    db = tmp_path / "central.db"
    config = parse_config(sync_raw(tmp_path / "data", "http://127.0.0.1:1"))
    records = ratings(config, 3)
    for n, record in enumerate(records, start=1):
        record.seq = n
    body = wire.encode_batch(wire.new_batch(config.node.id, [r.to_wire() for r in records]))
    batch_id = wire.decode_batch(body, content_encoding="gzip").batch_id
    async with recording_receiver(f"sqlite:///{db}") as central:
        # Hold the database so that the receiver's insert waits, then let the client give up.
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
                post = http.post(
                    f"{central.url}{wire.batch_path(config.node.id)}",
                    data=body,
                    headers=wire.batch_headers(TOKEN, batch_id),
                )
                with pytest.raises(TimeoutError):
                    async with post:
                        raise AssertionError("the receiver answered although its database was held")
            await asyncio.sleep(0.2)  # the handler is cancelled by now; the insert still waits
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        async with asyncio.timeout(10):
            while len(central_rows(db, DEFAULT_TABLE)) < len(records):
                await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while (await central.receiver.stats()).accepted < len(records):
                await asyncio.sleep(0.02)
        stats = await central.receiver.stats()
    assert (stats.accepted, stats.duplicates) == (len(records), 0)
