"""Draining a backlog: a week of records after an outage, and `kill -9` of the hub mid-drain."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hub.config import parse_config
from hub.ops.broker import MosquittoBroker, free_port
from hub.store.outbox import DELIVERED
from tests.support.hub import PULL_TOKEN, HubProcess, write_toml
from tests.sync.support import (
    StubHost,
    central_rows,
    fill,
    open_outbox,
    outbox_states,
    pending,
    ratings,
    recording_receiver,
    running_uplink,
    sync_config,
    sync_raw,
    wait_until,
)

WEEK = 100_000  # a week of a busy hall, with its alerts on top


async def _drained(outbox: object) -> bool:
    return await pending(outbox) == 0  # type: ignore[arg-type]


@pytest.mark.slow
async def test_a_week_of_backlog_drains_when_the_platform_returns(tmp_path: Path) -> None:
    port = free_port()
    config = sync_config(tmp_path / "data", f"http://127.0.0.1:{port}", batch_max=500)
    records = ratings(config, WEEK, bad_every=97)
    alerts = {r.id for r in records if r.kind == "alert"}
    central_db = tmp_path / "central.db"
    async with open_outbox(config) as outbox:
        host = StubHost(config, outbox)
        async with running_uplink(host):
            await fill(outbox, records)
            assert await pending(outbox) == len(records)
            assert host.counter("hallhub_sync_total", result="failed") >= 1, (
                "it tried while the platform was down"
            )
            async with recording_receiver(f"sqlite:///{central_db}", port=port) as central:
                started = time.monotonic()
                await wait_until(lambda: _drained(outbox), 150, "the week's backlog to drain", interval_s=0.2)
                drain_s = time.monotonic() - started
                stats = await central.receiver.stats()
    rows = central_rows(central_db)
    assert len(rows) == len(records) == WEEK + len(alerts)
    assert {i for _s, i, _k in rows} == {r.id for r in records}
    assert stats.accepted == len(records)
    assert stats.duplicates == 0, "each record exactly once"
    last_alert = max(s for s, i, _k in rows if i in alerts)
    before_last_alert = sum(1 for s, i, _k in rows if i not in alerts and s < last_alert)
    # The one batch in flight when the platform came back is resent as it was (same id, same
    # records); every alert stored during the outage goes before the rest of the backlog.
    assert before_last_alert <= config.central.batch_max
    assert {state for state, _via in outbox_states(tmp_path / "data" / "outbox.db").values()} == {DELIVERED}
    print(f"drained {len(records)} records in {drain_s:.1f} s ({len(records) / drain_s:,.0f} records/s)")


@pytest.mark.slow
async def test_kill9_while_draining_five_times(tmp_path: Path, broker: MosquittoBroker) -> None:
    """`hallhub run` killed five times mid-drain: nothing missing, nothing stored twice."""
    central_db = tmp_path / "central.db"
    rng = random.Random(11)
    async with recording_receiver(f"sqlite:///{central_db}", slow_ms=100) as central:
        raw = sync_raw(tmp_path / "data", central.url, batch_max=200, broker_port=broker.port)
        api_port = free_port()
        raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN}
        config_path = write_toml(tmp_path / "node.toml", raw)
        config = parse_config(raw)
        records = ratings(config, 8000, bad_every=50)
        async with open_outbox(config) as outbox:
            await fill(outbox, records)
        hub = HubProcess(config_path, api_port, tmp_path / "hub.log")
        kills: list[int] = []
        try:
            for _ in range(5):
                await asyncio.to_thread(hub.start)
                wanted = len(central.requests) + 2
                await wait_until(
                    functools.partial(_requests_at_least, central.requests, wanted), 30, "pushing"
                )
                await asyncio.sleep(rng.uniform(0.0, 0.3))
                await asyncio.to_thread(hub.kill9)
                kills.append(len(central.requests))
            await asyncio.to_thread(hub.start)
            await wait_until(lambda: _stored(central_db, len(records)), 90, "every record at the receiver")
            assert await asyncio.to_thread(hub.terminate) == 0
        finally:
            hub.stop_quietly()
        stats = await central.receiver.stats()
    rows = central_rows(central_db)
    assert sorted(i for _s, i, _k in rows) == sorted(r.id for r in records), "nothing missing"
    assert stats.accepted == len(records), "nothing stored twice"
    states = outbox_states(tmp_path / "data" / "outbox.db")
    assert {state for state, _via in states.values()} == {DELIVERED}
    keys = central.keys()
    resent = sum(1 for at in kills if at < len(keys) and keys[at] == keys[at - 1])
    assert resent >= 1, "after a kill the batch in flight is sent again under its own id"


async def _requests_at_least(requests: Sequence[object], count: int) -> bool:
    return len(requests) >= count


async def _stored(db: Path, count: int) -> bool:
    return len(await asyncio.to_thread(central_rows, db)) >= count
