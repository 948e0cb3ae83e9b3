"""Receivers that scale out (CONTRACTS §16): several processes on one PostgreSQL database, a feed
cursor that neither skips nor repeats while they commit at once, and `/metrics`."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from contract import wire
from sync.receiver import start_receiver
from tests.sync.conftest import NODE, TOKEN, Backend, batch_body, record
from tests.sync.processes import CentralProcess, start_receiver_process

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def pg_table(postgres_url: str) -> Iterator[str]:
    """A table name unique to the test; the table and its companions are dropped after it."""
    table = f"hallhub_test_{uuid.uuid4().hex[:16]}"
    yield table
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for suffix in ("", "_pull", "_collectors", "_rejected"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table + suffix)))


async def post(
    http: aiohttp.ClientSession, base: str, records: list[dict[str, Any]], node: str = NODE
) -> dict[str, Any]:
    """POST one gzip batch; the answer's JSON (asserting 200)."""
    document = batch_body(records) | {"node_id": node}
    headers = AUTH | {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Idempotency-Key": document["batch_id"],
    }
    body = gzip.compress(json.dumps(document).encode())
    async with http.post(f"{base}{wire.batch_path(node)}", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def feed(http: aiohttp.ClientSession, base: str, after: str, limit: int = 100) -> dict[str, Any]:
    """One page of `/v1/evaluations`."""
    async with http.get(
        f"{base}/v1/evaluations", params={"after": after, "limit": limit}, headers=AUTH
    ) as resp:
        assert resp.status == 200, await resp.text()
        page: dict[str, Any] = await resp.json()
        return page


@pytest.mark.postgres
async def test_a_batch_still_open_is_waited_for_not_skipped(
    postgres_url: str, pg_table: str, http: aiohttp.ClientSession
) -> None:
    """A slow receiver's batch draws a smaller serial but commits after a fast one: `serial > cursor`
    would pass it for good; the feed holds back until it commits, then serves it first."""
    async with start_receiver("127.0.0.1:0", postgres_url, TOKEN, table=pg_table) as running:
        held = record()
        slow = await psycopg.AsyncConnection.connect(postgres_url)
        try:
            insert = sql.SQL(
                "INSERT INTO {t} (id, node_id, kind, seq, created_at, data, received_at) "
                "VALUES (%s, %s, 'evaluation', %s, %s, %s, now()) RETURNING serial"
            ).format(t=sql.Identifier(pg_table))
            cursor = await slow.execute(
                insert, (held["id"], NODE, held["seq"], held["created_at"], json.dumps(held["data"]))
            )
            row = await cursor.fetchone()
            assert row is not None
            held_serial = row[0]
            fast = [record(), record()]
            assert (await post(http, running.url, fast))["accepted"] == [r["id"] for r in fast]
            async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as other:
                naive = await other.execute(
                    sql.SQL("SELECT id, serial FROM {t} WHERE serial > 0 ORDER BY serial").format(
                        t=sql.Identifier(pg_table)
                    )
                )
                visible = await naive.fetchall()
            assert [i for i, _ in visible] == [r["id"] for r in fast]
            assert held_serial < min(s for _, s in visible), "a serial cursor would now be past the held row"
            page = await feed(http, running.url, "0")
            assert page == {"evaluations": [], "next": "0"}, "nothing is served past a batch still open"
            await slow.commit()
        finally:
            await slow.close()
        served: list[str] = []
        after = "0"
        deadline = time.monotonic() + 20
        while len(served) < 3 and time.monotonic() < deadline:
            page = await feed(http, running.url, after, limit=1)
            served += [e["id"] for e in page["evaluations"]]
            after = page["next"]
            if not page["evaluations"]:
                await asyncio.sleep(0.05)  # another transaction in the cluster may hold the horizon
    assert served == [held["id"]] + [r["id"] for r in fast]


@pytest.fixture
async def two_receivers(postgres_url: str, pg_table: str, tmp_path: Path) -> AsyncIterator[list[str]]:
    """Two `hallhub central` processes on one PostgreSQL table; their URLs."""
    processes: list[CentralProcess] = []
    urls: list[str] = []
    try:
        for n in range(2):
            process, url = await asyncio.to_thread(
                start_receiver_process, postgres_url, pg_table, TOKEN, tmp_path / f"receiver-{n}.log"
            )
            processes.append(process)
            urls.append(url)
        yield urls
        for process in processes:
            assert process.terminate() == 0, process.log()
            assert "Traceback" not in process.log()
    finally:
        for process in processes:
            process.stop_quietly()


@pytest.mark.postgres
@pytest.mark.slow
async def test_two_receivers_many_nodes_and_a_reader_paging_every_id_exactly_once(
    two_receivers: list[str], postgres_url: str, pg_table: str
) -> None:
    nodes = [f"hall-{n:02d}" for n in range(16)]
    sent: dict[str, str] = {}
    duplicates_seen = 0
    rng = random.Random(17)

    async def node_client(http: aiohttp.ClientSession, node: str) -> None:
        nonlocal duplicates_seen
        for number in range(12):
            records = [record(node_id=node) if n % 7 else record("alert") for n in range(rng.randint(5, 60))]
            for r in records:
                if r["kind"] == "evaluation":
                    sent[r["id"]] = node
            first, second = rng.sample(two_receivers, 2)
            if number % 4 == 0:  # a retry racing the original on the other receiver
                answers = await asyncio.gather(
                    post(http, first, records, node), post(http, second, records, node)
                )
                assert sorted(answers[0]["accepted"] + answers[1]["accepted"]) == sorted(
                    r["id"] for r in records
                )
                duplicates_seen += len(answers[0]["duplicate"]) + len(answers[1]["duplicate"])
            else:
                answer = await post(http, first, records, node)
                assert len(answer["accepted"]) == len(records)

    served: list[str] = []
    writers_done = asyncio.Event()

    async def reader(http: aiohttp.ClientSession) -> None:
        after, empty_after_done = "0", 0
        deadline = time.monotonic() + 90
        for number in range(20_000):
            page = await feed(http, two_receivers[number % 2], after, limit=rng.randint(1, 40))
            served.extend(e["id"] for e in page["evaluations"])
            after = page["next"]
            if not page["evaluations"]:
                if writers_done.is_set():
                    empty_after_done += 1
                    if empty_after_done >= 3 and len(served) >= len(sent):
                        return
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.01)
        with psycopg.connect(postgres_url) as conn:
            horizon = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            running = conn.execute(
                "SELECT pid, datname, state, backend_xid::text, now() - xact_start FROM pg_stat_activity "
                "WHERE backend_xid IS NOT NULL"
            ).fetchall()
        pytest.fail(
            f"the reader stopped at cursor {after} with {len(served)} of {len(sent)} evaluations; "
            f"missing {len(set(sent) - set(served))}; snapshot {horizon}; transactions with an xid: {running}"
        )

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as http:
        reading = asyncio.create_task(reader(http))
        await asyncio.wait_for(asyncio.gather(*(node_client(http, node) for node in nodes)), 120)
        writers_done.set()
        await asyncio.wait_for(reading, 120)
    assert len(served) == len(set(served)), "no evaluation is served twice"
    assert set(served) == set(sent), "every evaluation is served"
    assert duplicates_seen > 0, "the racing retries were answered as duplicates"
    with psycopg.connect(postgres_url) as conn:
        (rows,) = conn.execute(
            sql.SQL("SELECT count(*) FROM {t} WHERE kind = 'evaluation'").format(t=sql.Identifier(pg_table))
        ).fetchone() or (0,)
    assert rows == len(sent)


@pytest.mark.postgres
async def test_a_table_from_before_the_xid_column_keeps_its_cursor(
    postgres_url: str, pg_table: str, http: aiohttp.ClientSession
) -> None:
    old = [record(), record()]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        t = sql.Identifier(pg_table)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {t} (serial BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, id TEXT PRIMARY KEY, "
                "node_id TEXT NOT NULL, kind TEXT NOT NULL, seq BIGINT NOT NULL, created_at TIMESTAMPTZ NOT NULL, "
                "data JSONB NOT NULL, received_at TIMESTAMPTZ NOT NULL)"
            ).format(t=t)
        )
        for r in old:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {t} (id, node_id, kind, seq, created_at, data, received_at) "
                    "VALUES (%s, %s, 'evaluation', %s, %s, %s, now())"
                ).format(t=t),
                (r["id"], NODE, r["seq"], r["created_at"], json.dumps(r["data"])),
            )
    new = record()
    async with start_receiver("127.0.0.1:0", postgres_url, TOKEN, table=pg_table) as running:
        assert (await post(http, running.url, [new]))["accepted"] == [new["id"]]
        page = await feed(http, running.url, "1")  # a cursor handed out before the upgrade
        assert [e["id"] for e in page["evaluations"]] == [old[1]["id"], new["id"]]
        first = await feed(http, running.url, "0", limit=1)
        assert first["next"] == "0-1"
        for bad in ("1-2-3", "x-1", "-1", "1-", "18446744073709551616-1"):
            async with http.get(f"{running.url}/v1/evaluations", params={"after": bad}, headers=AUTH) as resp:
                assert resp.status == 400, bad
                assert (await resp.json())["field"] == "after"


async def test_metrics_count_batches_records_and_pull_state(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    good, bad = record(), record(level=9)
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        await post(http, running.url, [good, bad])
        await post(http, running.url, [good])
        leases = await running.receiver.store.claim_nodes("collector-a", ["hall-a", "hall-b"], 30)
        assert [lease.node_id for lease in leases] == ["hall-a", "hall-b"]
        async with http.get(f"{running.url}/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
    lines = set(text.splitlines())
    assert 'hallhub_central_batches_total{result="ok"} 2.0' in lines
    assert 'hallhub_central_records_total{result="accepted"} 1.0' in lines
    assert 'hallhub_central_records_total{result="duplicate"} 1.0' in lines
    assert 'hallhub_central_records_total{result="rejected"} 1.0' in lines
    assert "hallhub_central_store_up 1.0" in lines
    assert 'hallhub_central_pull_leased{node="hall-a"} 1.0' in lines
    assert 'hallhub_central_pull_cursor{node="hall-b"} 0.0' in lines
    assert not any(line.startswith("hallhub_central_pull_lag_seconds{") for line in lines), "never caught up"
