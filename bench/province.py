"""A simulated province: N nodes come back at once and drain their backlogs into the central side (§6, §16).

Each simulated node is a light async client with its own backlog of stored record texts, posting
real §6 batches (gzip, `Idempotency-Key`, built by `wire.stored_batch_body` exactly as the uplink
builds them) through a round-robin "load balancer" over the receivers, one batch in flight per node,
the same batch id on every retry, full-jitter backoff on a network error, a timeout or a 5xx, and
no request left unbounded. The receivers are `hallhub central` processes on the local PostgreSQL.

Runs, each on a fresh table that is dropped afterwards:
1. 1 receiver, then 2 receivers, undisturbed;
2. 2 receivers with faults (`--faults`): one receiver killed with SIGKILL at 30 % of the records
   and started again at 45 %, and PostgreSQL restarted at 60 % (`--restart-postgres`, only when no
   other client is connected to it: the server is shared, see docs/benchmarks.md);
3. the pull collector (`--hubs K`): K real hubs (`python -m hub run`) with backlogs in their outboxes,
   pulled by two `hallhub central pull` processes into the same database.

Each run reports records/s, batch latency p50/p99, the CPU of PostgreSQL and of the receivers, and
checks every node's rows in the table: exactly its records, once (0 lost, 0 duplicated).

    .venv/bin/python bench/province.py            # 1,000 nodes x 1,000 records, 1 then 2 receivers
    .venv/bin/python bench/province.py --faults --restart-postgres --hubs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Figure, percentile, print_figures, write_result
from province_pull import run_pull

from contract import wire
from contract.records import new_record_id
from drivers.backoff import full_jitter
from hub.ops.broker import free_port, port_open

TOKEN = "bench-province-token"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
REQUEST_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 200
TABLE_SUFFIXES = ("", "_pull", "_collectors", "_rejected")


# --- the simulated nodes' backlogs ------------------------------------------------------------------


def record_text(node: str, seq: int, rng: random.Random) -> str:
    """One evaluation as a hub stores it: compact §1 JSON text (non-ASCII kept as UTF-8)."""
    level = rng.choices((5, 4, 3, 2, 1), weights=(70, 15, 10, 3, 2))[0]
    created = datetime(2026, 12, 1, 8, 0, tzinfo=UTC) + timedelta(seconds=seq * 20)
    record = {
        "id": new_record_id(),
        "seq": seq,
        "kind": "evaluation",
        "created_at": wire.format_timestamp(created),
        "data": {
            "level": level,
            "reasons": ["R1"] if level <= 2 else [],
            "comment": "等了很久" if level <= 2 else None,
            "channel": "pad",
            "device_id": f"pad-{seq % 12:02d}",
            "window": f"w{seq % 12}",
            "staff_id": f"S{seq % 40:03d}",
            "case_no": f"{node}-{seq:08d}",
            "item_code": "370102-001",
            "item_name": "营业执照办理",
            "session": seq,
            "citizen_ref": None,
            "citizen_masked": None,
            "device_ts": None,
            "node_id": node,
            "hall_code": "370102",
            "flags": [],
        },
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Node:
    """One simulated node: its batches (id, ids, gzip body) and what the receivers answered."""

    node_id: str
    batches: list[tuple[str, list[str], bytes]]
    accepted: Counter[str] = field(default_factory=Counter)
    duplicate_answers: int = 0
    retries: int = 0


def prepare(nodes: int, records: int, batch_size: int, seed: int) -> list[Node]:
    """Every node's backlog as gzip §6 batches, built before the clock starts."""
    rng = random.Random(seed)
    sent_at = wire.format_timestamp(datetime.now(UTC))
    prepared = []
    for n in range(nodes):
        node_id = f"hall-{n:05d}"
        texts = [record_text(node_id, seq, rng) for seq in range(1, records + 1)]
        batches = []
        for begin in range(0, records, batch_size):
            part = texts[begin : begin + batch_size]
            batch_id = new_record_id()
            ids = [json.loads(text)["id"] for text in part]
            batches.append((batch_id, ids, wire.stored_batch_body(node_id, batch_id, sent_at, part)))
        prepared.append(Node(node_id, batches))
    return prepared


# --- receivers and PostgreSQL ---------------------------------------------------------------------


@dataclass
class Receivers:
    """`hallhub central` processes on fixed loopback ports (a killed one comes back on its port)."""

    db: str
    table: str
    pool: int
    logs: Path
    ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, index: int) -> None:
        """Start receiver `index` and wait (bounded) until it listens."""
        port = self.ports[index]
        with (self.logs / f"province-{self.table}-{index}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "hub", "central", "--db", self.db, "--table", self.table,
                 "--token", TOKEN, "--listen", f"127.0.0.1:{port}", "--pool-size", str(self.pool)],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"receiver {index} did not start (see {self.logs})")
            time.sleep(0.05)

    def kill(self, index: int) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait(10)

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


def postgres_cpu_seconds() -> float:
    """CPU of the PostgreSQL server so far: its live processes plus the backends that already exited."""
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


def other_postgres_clients(db: str, ours: list[int]) -> int:
    """Client connections to the server other than this benchmark's (the receivers with pids `ours`)."""
    ports = set()
    for pid in ours:
        with contextlib.suppress(psutil.Error):
            ports |= {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.raddr}
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(1 for (port,) in rows if port not in ports)


@dataclass
class PostgresCpu:
    """PostgreSQL's CPU over a run, across a restart (which starts every process's count afresh)."""

    spent: float = 0.0
    since: float = field(default_factory=postgres_cpu_seconds)

    def restart(self) -> float:
        """`pg_ctlcluster 15 main restart -m fast`, the CPU before it kept; the seconds it took."""
        self.spent += postgres_cpu_seconds() - self.since
        started = time.monotonic()
        subprocess.run(["pg_ctlcluster", "15", "main", "restart", "-m", "fast"], check=True, timeout=120)
        self.since = postgres_cpu_seconds()
        return time.monotonic() - started

    def total(self) -> float:
        return self.spent + postgres_cpu_seconds() - self.since


def _own_cpu_seconds() -> float:
    """This process's CPU (the simulated nodes), user + system."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def drop_tables(db: str, table: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        for suffix in TABLE_SUFFIXES:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table + suffix)))


def rows_by_node(db: str, table: str) -> dict[str, tuple[int, int]]:
    """Per node: rows and distinct ids in the receivers' table."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            sql.SQL("SELECT node_id, count(*), count(DISTINCT id) FROM {} GROUP BY node_id").format(
                sql.Identifier(table)
            )
        ).fetchall()
    return {str(node): (int(count), int(distinct)) for node, count, distinct in rows}


# --- the push clients -----------------------------------------------------------------------------


@dataclass
class Progress:
    """Records answered so far, and the latencies of answered batches."""

    total: int
    done: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def push_node(
    http: aiohttp.ClientSession,
    urls: list[str],
    index: int,
    node: Node,
    progress: Progress,
    rng: random.Random,
) -> None:
    """Drain one node: each batch until answered 200, the same id every time (§6)."""
    for number, (batch_id, ids, body) in enumerate(node.batches):
        headers = wire.batch_headers(TOKEN, batch_id)
        path = wire.batch_path(node.node_id)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            url = urls[(index + number + attempt) % len(urls)] + path
            started = time.perf_counter()
            try:
                async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                progress.errors[type(exc).__name__] += 1
            else:
                if status == 200:
                    progress.latencies_ms.append((time.perf_counter() - started) * 1000)
                    answer = wire.decode_answer(raw)
                    if answer.rejected or set(answer.accepted) | set(answer.duplicate) != set(ids):
                        raise RuntimeError(f"{node.node_id}: batch {batch_id} answered {answer}")
                    node.accepted.update(answer.accepted)
                    node.duplicate_answers += len(answer.duplicate)
                    progress.done += len(ids)
                    break
                if status < 500 and status not in (408, 429):
                    raise RuntimeError(f"{node.node_id}: HTTP {status}: {raw[:300]!r}")
                progress.errors[f"HTTP {status}"] += 1
            node.retries += 1
            await asyncio.sleep(full_jitter(attempt, 0.2, 5.0, rng))
        else:
            raise RuntimeError(f"{node.node_id}: batch {batch_id} not delivered in {MAX_ATTEMPTS} tries")


async def drive(
    urls: list[str], nodes: list[Node], concurrency: int, faults: list[tuple[float, Callable[[], None]]]
) -> tuple[float, Progress, list[str]]:
    """All nodes at once (at most `concurrency` draining at a time); faults fire at fractions of the
    records answered. Returns the seconds, the progress and what each fault did."""
    progress = Progress(sum(len(ids) for node in nodes for _b, ids, _body in node.batches))
    slots = asyncio.Semaphore(concurrency)
    rng = random.Random(7)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    notes: list[str] = []

    async def node_task(index: int, node: Node, http: aiohttp.ClientSession) -> None:
        async with slots:
            await push_node(http, urls, index, node, progress, rng)

    async def fault_task(started: float) -> None:
        for fraction, action in sorted(faults, key=lambda f: f[0]):
            while progress.done < fraction * progress.total:
                await asyncio.sleep(0.05)
            at = time.perf_counter() - started
            await asyncio.to_thread(action)
            notes.append(f"{action.__name__} at {fraction:.0%} ({at:.1f} s)")

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        started = time.perf_counter()
        faulting = asyncio.create_task(fault_task(started))
        try:
            await asyncio.gather(*(node_task(i, node, http) for i, node in enumerate(nodes)))
        except BaseException:
            faulting.cancel()
            raise
        # every fraction is reached now: let a fault still under way (a restart) finish, bounded
        await asyncio.wait_for(faulting, 180)
        return time.perf_counter() - started, progress, notes


def check_exactly_once(db: str, table: str, nodes: list[Node]) -> dict[str, int]:
    """Every node's rows are its records, once; no record was accepted twice. Raises otherwise."""
    counts = rows_by_node(db, table)
    lost = duplicated = accepted_twice = 0
    for node in nodes:
        expected = sum(len(ids) for _b, ids, _body in node.batches)
        rows, distinct = counts.get(node.node_id, (0, 0))
        lost += max(0, expected - distinct)
        duplicated += rows - distinct
        accepted_twice += sum(1 for n in node.accepted.values() if n > 1)
    strangers = set(counts) - {node.node_id for node in nodes}
    result = {
        "nodes_checked": len(nodes),
        "lost": lost,
        "duplicated_rows": duplicated,
        "accepted_twice": accepted_twice,
        "foreign_nodes": len(strangers),
    }
    if lost or duplicated or accepted_twice or strangers:
        raise RuntimeError(f"exactly-once violated: {result}")
    return result


def run_push(
    receivers_count: int,
    nodes: list[Node],
    args: argparse.Namespace,
    *,
    faults: bool = False,
) -> dict[str, Any]:
    """One run on a fresh table: start the receivers, drive every node, check, drop the table."""
    for node in nodes:
        node.accepted.clear()
        node.duplicate_answers = node.retries = 0
    table = f"bench_province_{uuid.uuid4().hex[:10]}"
    receivers = Receivers(
        args.db, table, args.pool_size, args.logs, [free_port() for _ in range(receivers_count)]
    )
    plan: list[tuple[float, Callable[[], None]]] = []
    skipped: list[str] = []
    if faults:

        def kill_receiver_1() -> None:
            receivers.kill(1)

        def start_receiver_1() -> None:
            receivers.start(1)

        plan += [(0.30, kill_receiver_1), (0.45, start_receiver_1)]
        if args.restart_postgres:

            def restart_postgresql() -> None:
                others = other_postgres_clients(args.db, [p.pid for p in receivers.processes])
                if others:
                    skipped.append(f"PostgreSQL restart skipped: {others} other client connection(s)")
                else:
                    skipped.append(f"PostgreSQL restarted in {pg.restart():.1f} s")

            plan.append((0.60, restart_postgresql))
    try:
        for index in range(receivers_count):
            receivers.start(index)
        pg, rx_before, me_before = PostgresCpu(), receivers.cpu_seconds(), _own_cpu_seconds()
        seconds, progress, notes = asyncio.run(drive(receivers.urls, nodes, args.concurrency, plan))
        pg_cpu, rx_cpu = pg.total(), receivers.cpu_seconds() - rx_before
        client_cpu = _own_cpu_seconds() - me_before
        checked = check_exactly_once(args.db, table, nodes)
    finally:
        receivers.stop()
        drop_tables(args.db, table)
    return {
        "receivers": receivers_count,
        "faults": faults,
        "fault_log": notes + skipped,
        "nodes": len(nodes),
        "records": progress.total,
        "seconds": round(seconds, 2),
        "records_per_s": round(progress.total / seconds, 1),
        "batch_ms_p50": round(percentile(progress.latencies_ms, 50), 1),
        "batch_ms_p99": round(percentile(progress.latencies_ms, 99), 1),
        "postgres_cpu_cores": round(pg_cpu / seconds, 2),
        "receivers_cpu_cores": round(rx_cpu / seconds, 2),
        "nodes_client_cpu_cores": round(client_cpu / seconds, 2),
        "retries": sum(node.retries for node in nodes),
        "duplicate_answers": sum(node.duplicate_answers for node in nodes),
        "errors": dict(progress.errors),
        "exactly_once": checked,
    }


def main() -> None:
    """Parse the arguments, run the province, print and record the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--records", type=int, default=1000, help="records in each node's backlog")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--receivers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=200, help="nodes draining at the same time")
    parser.add_argument("--pool-size", type=int, default=8, help="each receiver's PostgreSQL pool")
    parser.add_argument("--faults", action="store_true", help="a run with a receiver killed mid-run")
    parser.add_argument("--restart-postgres", action="store_true", help="… and PostgreSQL restarted")
    parser.add_argument("--hubs", type=int, default=0, help="real hubs pulled by the collector (0: none)")
    parser.add_argument("--hub-records", type=int, default=20_000, help="evaluations in each hub's outbox")
    parser.add_argument("--db", default=DEFAULT_DB)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--logs", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")))
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; preparing {args.nodes:,} nodes …",
        flush=True,
    )
    started = time.monotonic()
    nodes = prepare(args.nodes, args.records, args.batch_size, args.seed)
    print(f"  {args.nodes * args.records:,} records in {time.monotonic() - started:.1f} s", flush=True)

    runs = []
    for count in args.receivers:
        runs.append(run_push(count, nodes, args))
        _print_run(runs[-1])
    if args.faults:
        runs.append(run_push(2, nodes, args, faults=True))
        _print_run(runs[-1])
    pulled = None
    if args.hubs:
        pulled = run_pull(args.hubs, args.hub_records, args.db, args.logs, args.seed)
        print(f"pull: {pulled}", flush=True)

    figures: dict[str, Figure] = {}
    for r in runs:
        tag = f"{r['receivers']}{'_faults' if r['faults'] else ''}"
        label = f"{r['receivers']} receiver(s){' with faults' if r['faults'] else ''}"
        figures[f"records_per_s_{tag}"] = Figure(
            r["records_per_s"], "records/s", "higher", f"{label}: records/s"
        )
        figures[f"batch_p99_ms_{tag}"] = Figure(r["batch_ms_p99"], "ms", "lower", f"{label}: batch p99")
    if pulled is not None:
        figures["pull_records_per_s"] = Figure(
            pulled["records_per_s"], "records/s", "higher", "pull collector"
        )
    print_figures(f"province: {args.nodes:,} nodes x {args.records:,} records", figures)
    command = "python bench/province.py " + " ".join(sys.argv[1:])
    write_result(
        "province",
        command.strip(),
        figures,
        {"runs": runs, "pull": pulled, "load_average_at_start": load, "args": {
            k: v for k, v in vars(args).items() if k != "logs"}},
    )  # fmt: skip


def _print_run(r: dict[str, Any]) -> None:
    print(
        f"{r['receivers']} receiver(s){' + faults' if r['faults'] else ''}: {r['records']:,} records in "
        f"{r['seconds']} s = {r['records_per_s']:,.0f} records/s, batch p50 {r['batch_ms_p50']} ms "
        f"p99 {r['batch_ms_p99']} ms, PostgreSQL {r['postgres_cpu_cores']} cores, receivers "
        f"{r['receivers_cpu_cores']} cores, nodes {r['nodes_client_cpu_cores']} cores, "
        f"retries {r['retries']}, duplicate answers "
        f"{r['duplicate_answers']}, {r['exactly_once']} {r['fault_log']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
