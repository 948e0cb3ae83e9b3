"""Receiver throughput on PostgreSQL with N `hallhub central` processes (CONTRACTS §16).

Each simulated node posts gzip batches of 500 evaluations (§6) as fast as its answers come back,
all nodes at once, spread over the receivers round-robin. For each receiver count the run reports
records/s, batch latency p50/p99, the CPU of PostgreSQL and of the receivers, and checks the
table afterwards: every record exactly once. Then it pages the evaluations feed to the end.

    .venv/bin/python bench/central_receivers.py                      # 1 then 2 receivers
    .venv/bin/python bench/central_receivers.py --receivers 1 2 4 --nodes 40 --batches 10

Bounded: every request has a timeout, every loop a count; the tables are dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
import uuid6
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Figure, free_port, percentile, print_figures, write_result
from contract import wire
from hub.ops.broker import port_open

TOKEN = "bench-central-token"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"


def _evaluation(node: str, seq: int) -> dict[str, Any]:
    created = datetime(2026, 12, 1, 8, 0, tzinfo=UTC) + timedelta(milliseconds=seq)
    return {
        "id": str(uuid6.uuid7()),
        "seq": seq,
        "kind": "evaluation",
        "created_at": wire.format_timestamp(created),
        "data": {
            "level": 1 + seq % 5,
            "reasons": [],
            "comment": None,
            "channel": "keypad",
            "device_id": "kp-07",
            "window": "07",
            "staff_id": f"S{seq % 17:03d}",
            "case_no": f"CASE-{node}-{seq}",
            "item_code": "370102-001",
            "session": seq,
            "citizen_ref": None,
            "citizen_masked": None,
            "device_ts": None,
            "node_id": node,
            "hall_code": "370102",
            "flags": [],
        },
    }


@dataclass
class Prepared:
    """Every node's batches, encoded before the clock starts."""

    bodies: dict[str, list[tuple[str, bytes]]]
    total: int


def prepare(nodes: int, batches: int, size: int) -> Prepared:
    """Build and gzip the batches of every node."""
    bodies: dict[str, list[tuple[str, bytes]]] = {}
    for n in range(nodes):
        node = f"hall-{n:04d}"
        items = []
        for b in range(batches):
            records = [_evaluation(node, b * size + i + 1) for i in range(size)]
            batch = wire.new_batch(node, records, batch_id=str(uuid6.uuid7()))
            items.append((batch.batch_id, wire.encode_batch(batch)))
        bodies[node] = items
    return Prepared(bodies, nodes * batches * size)


def start_receivers(
    count: int, db: str, table: str, pool: int, logs: Path
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """`count` receiver processes on free loopback ports, answering."""
    processes, urls = [], []
    for n in range(count):
        port = free_port()
        with (logs / f"receiver-{table}-{n}.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "hub", "central", "--db", db, "--table", table, "--token", TOKEN,
                     "--listen", f"127.0.0.1:{port}", "--pool-size", str(pool)],
                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            )  # fmt: skip
        urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or processes[-1].poll() is not None:
                raise RuntimeError(f"receiver {n} did not start")
            time.sleep(0.05)
    return processes, urls


def postgres_cpu_seconds() -> float:
    """CPU of the PostgreSQL server so far: live processes, plus the backends that already exited
    (counted in the postmaster's children times: a pool's connections come and go during a run)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info["name"] not in ("postgres", "postmaster"):
            continue
        try:
            times = proc.cpu_times()
            parent = psutil.Process(proc.info["ppid"]).name() if proc.info["ppid"] else ""
        except psutil.Error:
            continue
        total += times.user + times.system
        if parent not in ("postgres", "postmaster"):
            total += times.children_user + times.children_system
    return total


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU of these processes (those still alive)."""
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def drive(urls: list[str], prepared: Prepared) -> tuple[float, list[float], int]:
    """Post every node's batches, the nodes concurrently; (seconds, latencies in ms, duplicates)."""
    latencies: list[float] = []
    duplicates = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:

        async def node_loop(index: int, node: str, items: list[tuple[str, bytes]]) -> None:
            nonlocal duplicates
            for number, (batch_id, body) in enumerate(items):
                base = urls[(index + number) % len(urls)]
                for _attempt in range(20):
                    started = time.perf_counter()
                    async with http.post(
                        f"{base}{wire.batch_path(node)}",
                        data=body,
                        headers=wire.batch_headers(TOKEN, batch_id),
                    ) as resp:
                        raw = await resp.read()
                    if resp.status == 200:
                        latencies.append((time.perf_counter() - started) * 1000)
                        duplicates += len(wire.decode_answer(raw).duplicate)
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise RuntimeError(f"{node}: batch {batch_id} refused 20 times")

        started = time.perf_counter()
        await asyncio.gather(
            *(node_loop(i, node, items) for i, (node, items) in enumerate(prepared.bodies.items()))
        )
        return time.perf_counter() - started, latencies, duplicates


async def read_feed(url: str, expected: int) -> float:
    """Page the evaluations feed to the end (1,000 a page); its rate in records/s."""
    seen, after = 0, "0"
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for _ in range(expected // 1000 + 100):
            async with http.get(
                f"{url}/v1/evaluations",
                params={"after": after, "limit": "1000"},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                page = await resp.json()
            if not page["evaluations"]:
                break
            seen += len(page["evaluations"])
            after = page["next"]
    if seen != expected:
        raise RuntimeError(f"the feed served {seen} of {expected}")
    return seen / (time.perf_counter() - started)


def run_one(count: int, args: argparse.Namespace, prepared: Prepared, logs: Path) -> dict[str, Any]:
    """One measurement with `count` receivers on a fresh table."""
    table = f"bench_central_{uuid.uuid4().hex[:10]}"
    processes, urls = start_receivers(count, args.db, table, args.pool_size, logs)
    receivers = [psutil.Process(p.pid) for p in processes]
    try:
        pg_before, rx_before = postgres_cpu_seconds(), cpu_seconds(receivers)
        seconds, latencies, duplicates = asyncio.run(drive(urls, prepared))
        pg_cpu, rx_cpu = postgres_cpu_seconds() - pg_before, cpu_seconds(receivers) - rx_before
        feed_rate = asyncio.run(read_feed(urls[0], prepared.total))
        with psycopg.connect(args.db) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*), count(DISTINCT id) FROM {}").format(sql.Identifier(table))
            ).fetchone()
        rows, distinct = row if row else (0, 0)
    finally:
        for process in processes:
            process.terminate()
            process.wait(30)
        with psycopg.connect(args.db, autocommit=True) as conn:
            for suffix in ("", "_pull", "_collectors", "_rejected"):
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table + suffix)))
    if rows != prepared.total or distinct != prepared.total or duplicates:
        raise RuntimeError(
            f"{rows} rows, {distinct} distinct, {duplicates} duplicates for {prepared.total} records"
        )
    return {
        "receivers": count,
        "records": prepared.total,
        "seconds": round(seconds, 3),
        "records_per_s": round(prepared.total / seconds, 1),
        "batch_ms_p50": round(percentile(latencies, 50), 2),
        "batch_ms_p99": round(percentile(latencies, 99), 2),
        "postgres_cpu_cores": round(pg_cpu / seconds, 2),
        "receivers_cpu_cores": round(rx_cpu / seconds, 2),
        "feed_records_per_s": round(feed_rate, 1),
        "exactly_once": True,
    }


def main() -> None:
    """Parse the arguments, run each receiver count, print and record the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--receivers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--nodes", type=int, default=40, help="simulated nodes posting at once")
    parser.add_argument("--batches", type=int, default=10, help="batches per node")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--pool-size", type=int, default=8)
    parser.add_argument("--db", default=DEFAULT_DB)
    args = parser.parse_args()
    prepared = prepare(args.nodes, args.batches, args.batch_size)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    runs = []
    for count in args.receivers:
        result = run_one(count, args, prepared, logs)
        runs.append(result)
        r = result
        print(
            f"{count} receiver(s): {r['records_per_s']:,.0f} records/s, "
            f"batch p50 {r['batch_ms_p50']} ms p99 {r['batch_ms_p99']} ms, "
            f"PostgreSQL {r['postgres_cpu_cores']} cores, receivers {r['receivers_cpu_cores']} cores, "
            f"feed {r['feed_records_per_s']:,.0f} records/s",
            flush=True,
        )
    figures = {
        f"records_per_s_{r['receivers']}": Figure(
            r["records_per_s"], "records/s", "higher", f"{r['receivers']} receiver(s): records/s"
        )
        for r in runs
    } | {
        f"batch_p99_ms_{r['receivers']}": Figure(
            r["batch_ms_p99"], "ms", "lower", f"{r['receivers']} receiver(s): batch p99"
        )
        for r in runs
    }
    print_figures("central receivers on PostgreSQL", figures)
    command = "python bench/central_receivers.py " + " ".join(sys.argv[1:])
    write_result(
        "central_receivers",
        command.strip(),
        figures,
        {"runs": runs, "nodes": args.nodes, "batches": args.batches},
    )


if __name__ == "__main__":
    main()
