"""Drain benchmark: a backlog of evaluations pushed by the hub to the reference receiver on loopback.

1. An outbox is filled with `--records` evaluations (default 1,000,000; about 1 in 20 a bad review,
   so alerts come on top), written through `Outbox.store` with the national hook, as the hub
   writes them. The receiver is down meanwhile: nothing is sent.
2. The reference receiver starts as its own process (`python -m hub central`, SQLite, WAL, FULL),
   and the hub as its own (`python -m hub run`, push on, batches of `--batch-max`).
3. The hub drains the backlog. Every `--sample-s` the hub's RSS and the outbox's pending count
   are sampled; CPU of hub and receiver is measured over the drain.

`--receiver sink` replaces the reference receiver with `bench/_sink_receiver.py`, which parses each
batch and answers its ids without checking or storing records: the rate the node side alone can
drain, to tell the hub's limit from the receiver's.

Figures: records per second from the hub's READY to an empty queue; the minutes a week of a busy
hall takes at that rate (`--per-day` evaluations a day, 5,000 by default, plus their alerts); the
hub's peak RSS and how much it grew over the drain (it must stay flat); and the bytes per
evaluation in the gzip request bodies (encoded exactly as the uplink does, from the stored records).
At the end the receiver's table must hold every record once.

Run from the repository root:  .venv/bin/python bench/drain.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    NODE_ID,
    PULL_TOKEN,
    PYTHON,
    REPO,
    CpuMeter,
    Figure,
    HubProc,
    print_figures,
    start_broker,
    work_dir,
    write_result,
)

from contract import wire
from contract.records import Record, new_record_id
from hub.config import HubConfig, parse_config
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.ops.broker import free_port
from hub.store.outbox import Outbox, Stored
from sync.annotate import make_evaluation_hook
from tests.support.hub import node_raw, terminals, write_toml

TOKEN = "drain-bench-token"
CHUNK = 5000
ITEMS = [
    ("370102-001", "营业执照办理"),
    ("370102-014", "不动产登记"),
    ("370102-027", "社会保障卡申领"),
    ("370102-033", "居住证办理"),
    (None, None),
]
COMMENTS = [None] * 8 + ["办事效率高", "等了很久，希望多开窗口"]


def node_document(
    folder: Path, broker_port: int, api_port: int, central_url: str, batch_max: int
) -> dict[str, Any]:
    """The node config: 12 pads, push to `central_url`, a quota far above the backlog."""
    raw = node_raw(folder / "data", broker_port, terminals(12, "pad"))
    raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN}
    raw["central"] = {"url": central_url, "token": TOKEN, "batch_max": batch_max}
    raw["outbox"] = {"max_mb": 16_384}
    raw["national"] = {"dept_code": "11370102MB0000000X", "reasons": {"R1": "0101", "R2": "0203"}}
    return raw


def rating_records(config: HubConfig, start: int, count: int, rng: random.Random) -> list[Record]:
    """Evaluations as the pads produce them, each its own case; a bad review adds its alert."""
    intake = Intake(config, Outbox(":memory:"), HubMetrics())
    pads = [device for device in config.device if device.kind == "pad"]
    records: list[Record] = []
    for n in range(start, start + count):
        level = rng.choices((5, 4, 3, 2, 1), weights=(70, 15, 10, 3, 2))[0]
        item_code, item_name = rng.choice(ITEMS)
        records += intake.evaluation(
            pads[n % len(pads)],
            level=level,
            reasons=rng.sample(["R1", "R2", "R3"], k=rng.randint(1, 2)) if level <= 2 else [],
            comment=rng.choice(COMMENTS),
            case_no=f"370102-2026-{n:08d}" if item_code else None,
            item_code=item_code,
            item_name=item_name,
            staff_id=f"S{n % 40:03d}",
            session=n + 1,
        )
    return records


async def fill_outbox(config: HubConfig, count: int, seed: int) -> dict[str, Any]:
    """Write the backlog through the outbox (group commit, national hook); return counts and time."""
    rng = random.Random(seed)
    outbox = Outbox(
        Path(config.node.data_dir) / "outbox.db",
        max_bytes=config.outbox.max_mb * 2**20,
        evaluation_hook=make_evaluation_hook(config),
    )
    await outbox.open()
    started = time.monotonic()
    stored = 0
    try:
        for begin in range(0, count, CHUNK):
            records = rating_records(config, begin, min(CHUNK, count - begin), rng)
            result = await outbox.store(records)
            assert isinstance(result, Stored), result
            stored += len(records)
            if begin // CHUNK % 20 == 19:
                print(f"  filled {begin + CHUNK:,} evaluations ({stored:,} records)", flush=True)
        stats = await outbox.stats()
    finally:
        await outbox.close()
    return {
        "evaluations": count,
        "records": stored,
        "by_kind": stats.pending_by_kind,
        "fill_s": round(time.monotonic() - started, 2),
    }


def wire_sizes(db: Path, batch_max: int, batches: int) -> dict[str, Any]:
    """Gzip request bodies built from stored evaluations exactly as the uplink builds them
    (`wire.stored_batch_body` of the stored texts)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        bodies = [
            body
            for (body,) in conn.execute(
                "SELECT body FROM records WHERE kind = 'evaluation' ORDER BY seq LIMIT ?",
                (batch_max * batches,),
            )
        ]
    finally:
        conn.close()
    raw_bytes = gzip_bytes = 0
    sent_at = wire.format_timestamp(datetime.now(UTC))
    for begin in range(0, len(bodies), batch_max):
        texts = bodies[begin : begin + batch_max]
        batch_id = new_record_id()
        raw_bytes += len(wire.stored_batch_body(NODE_ID, batch_id, sent_at, texts, compress=False))
        gzip_bytes += len(wire.stored_batch_body(NODE_ID, batch_id, sent_at, texts))
    count = len(bodies)
    return {
        "evaluations_measured": count,
        "json_bytes_per_evaluation": round(raw_bytes / count, 1),
        "gzip_bytes_per_evaluation": round(gzip_bytes / count, 1),
        "compression_ratio": round(raw_bytes / gzip_bytes, 2),
        "gzip_bytes_per_batch": round(gzip_bytes / max(1, -(-count // batch_max))),
    }


def pending_count(db: Path) -> int:
    """Pending records, read-only from the outbox file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM records WHERE state = 0").fetchone()[0])
    finally:
        conn.close()


def start_receiver(folder: Path, kind: str) -> tuple[subprocess.Popen[str], str]:
    """`hallhub central` on a free port with a SQLite file (or the sink); returns the process and URL."""
    port = free_port()
    command = (
        [PYTHON, str(REPO / "bench" / "_sink_receiver.py"), str(port), TOKEN]
        if kind == "sink"
        else [PYTHON, "-m", "hub", "central", "--listen", f"127.0.0.1:{port}",
              "--db", f"sqlite:///{folder / 'central.db'}", "--token", TOKEN]
    )  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PYTHONUNBUFFERED": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"receiver did not start: {line}{process.stdout.read()}")
    return process, line.split()[-1]


def central_count(folder: Path, kind: str, url: str) -> int:
    """Rows in the receiver's table (the sink: distinct ids it answered, and no id twice)."""
    if kind == "sink":
        with urllib.request.urlopen(f"{url}/count", timeout=30) as answer:
            tally = json.load(answer)
        return int(tally["distinct"]) if tally["received"] == tally["distinct"] else -1
    conn = sqlite3.connect(f"file:{folder / 'central.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM hallhub_records").fetchone()[0])
    finally:
        conn.close()


def rss_mb(pid: int) -> float:
    """The process's resident set size in MB."""
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def drain(folder: Path, args: argparse.Namespace, total: int) -> dict[str, Any]:
    """Start receiver and hub, sample until the outbox is empty, stop both, check the receiver."""
    db = folder / "data" / "outbox.db"
    receiver, url = start_receiver(folder, args.receiver)
    samples: list[dict[str, float]] = []
    try:
        with start_broker(folder / "broker") as broker:
            api_port = free_port()
            raw = node_document(folder, broker.port, api_port, url, args.batch_max)
            config_path = write_toml(folder / "node.toml", raw)
            hub = HubProc(config_path, api_port, folder)
            launched = time.monotonic()
            hub.start(timeout_s=600)
            ready = time.monotonic()
            meter = CpuMeter({"hub": hub.pid, "receiver": receiver.pid})
            deadline = ready + args.max_minutes * 60
            left = total
            try:
                while left > 0 and time.monotonic() < deadline:
                    time.sleep(args.sample_s)
                    left = pending_count(db)
                    samples.append(
                        {
                            "t_s": round(time.monotonic() - ready, 2),
                            "rss_mb": round(rss_mb(hub.pid), 2),
                            "pending": left,
                        }
                    )
                finished = time.monotonic()
                cpu = meter.stop()
            finally:
                code = hub.stop()
        received = central_count(folder, args.receiver, url)
    finally:
        receiver.send_signal(2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            receiver.wait(30)
        if receiver.poll() is None:
            receiver.kill()
        if receiver.stdout is not None:
            receiver.stdout.close()
    if left:
        raise RuntimeError(f"{left:,} records still pending after {args.max_minutes} minutes")
    return {
        "start_to_ready_s": round(ready - launched, 2),
        "hub_ready_s": round(hub.ready_s, 2),
        "hub_healthy_s": round(hub.healthy_s, 2),
        "drain_s": round(finished - ready, 2),
        "hub_exit_code": code,
        "cpu": cpu,
        "samples": samples,
        "received": received,
    }


def memory_summary(samples: list[dict[str, float]], total: int) -> dict[str, float]:
    """Peak RSS, RSS early and late in the drain, and the growth per 100,000 records drained."""
    rss = [s["rss_mb"] for s in samples]
    quarter = max(1, len(rss) // 4)
    early, late = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
    drained = [total - s["pending"] for s in samples]
    slope = 0.0
    if len(samples) >= 3 and drained[-1] > drained[0]:
        slope = statistics.linear_regression(drained, rss).slope * 100_000
    return {
        "peak_rss_mb": round(max(rss), 2),
        "early_median_rss_mb": round(early, 2),
        "late_median_rss_mb": round(late, 2),
        "growth_early_to_late_mb": round(late - early, 2),
        "rss_mb_per_100k_records": round(slope, 3),
        "samples": len(rss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="evaluations in the backlog")
    parser.add_argument("--batch-max", type=int, default=500, help="central.batch_max")
    parser.add_argument("--per-day", type=int, default=5000, help="evaluations a busy hall takes a day")
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS and progress sampling interval")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="give up after this long")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--receiver", choices=("reference", "sink"), default="reference", help="what the hub drains to"
    )
    parser.add_argument("--keep", type=Path, help="keep the work folder here instead of deleting it")
    args = parser.parse_args()
    command = "  ".join(["python bench/drain.py", *sys.argv[1:]]).strip()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)

    with work_dir("drain") as folder:
        print(f"filling an outbox with {args.records:,} evaluations …", flush=True)
        config = parse_config(node_document(folder, 1, 1, "http://127.0.0.1:1", args.batch_max))
        filled = asyncio.run(fill_outbox(config, args.records, args.seed))
        total = filled["records"]
        sizes = wire_sizes(folder / "data" / "outbox.db", args.batch_max, batches=20)
        outbox_mb = sum(p.stat().st_size for p in (folder / "data").glob("outbox.db*")) / 2**20
        print(
            f"  {total:,} records in {filled['fill_s']} s, outbox {outbox_mb:,.0f} MB; draining …", flush=True
        )
        result = drain(folder, args, total)
        if args.keep is not None:
            shutil.copytree(folder, args.keep, dirs_exist_ok=True)

    rate = total / result["drain_s"]
    alerts_per_evaluation = (total - args.records) / args.records
    week_records = args.per_day * 7 * (1 + alerts_per_evaluation)
    memory = memory_summary(result["samples"], total)
    if result["received"] != total:
        raise SystemExit(f"receiver holds {result['received']:,} rows, expected {total:,}")
    figures = {
        "drain_records_per_s": Figure(rate, "records/s", "higher", "drain rate (hub → receiver, loopback)"),
        "week_backlog_minutes": Figure(
            week_records / rate / 60,
            "minutes",
            "lower",
            f"a week at {args.per_day:,} evaluations/day",
            target=10.0,
        ),
        "peak_rss_mb": Figure(memory["peak_rss_mb"], "MB", "lower", "hub peak RSS while draining"),
        "rss_growth_mb": Figure(
            memory["growth_early_to_late_mb"],
            "MB",
            "lower",
            "hub RSS growth, early → late drain",
            target=10.0,
        ),
        "gzip_bytes_per_evaluation": Figure(
            sizes["gzip_bytes_per_evaluation"], "bytes", "lower", "bytes per evaluation on the wire (gzip)"
        ),
        "hub_cpu_percent": Figure(
            result["cpu"]["processes"]["hub"]["percent_of_one_core"],
            "% of a core",
            "lower",
            "hub CPU while draining",
        ),
    }
    details = {
        "records": total,
        "evaluations": args.records,
        "batch_max": args.batch_max,
        "fill": filled,
        "outbox_mb_before_drain": round(outbox_mb, 1),
        "wire": sizes,
        "drain": {k: v for k, v in result.items() if k != "samples"},
        "memory": memory,
        "week_assumption": {
            "evaluations_per_day": args.per_day,
            "records_per_week": round(week_records),
            "note": "alerts on top of evaluations in the benchmark's proportion",
        },
        "rss_samples": result["samples"][:: max(1, len(result["samples"]) // 200)],
    }
    details["receiver"] = args.receiver
    details["load_average_at_start"] = load
    path = write_result("drain" if args.receiver == "reference" else "drain_sink", command, figures, details)
    print_figures(
        f"drain of {total:,} records ({args.records:,} evaluations), batches of {args.batch_max}", figures
    )
    receiver_cpu = result["cpu"]["processes"]["receiver"]["percent_of_one_core"]
    others = result["cpu"]["machine"]["other_processes_core_s"] / result["drain_s"]
    print(
        f"\nhub start to healthy with the backlog: {result['start_to_ready_s']} s · "
        f"drain {result['drain_s']} s · {args.receiver} receiver CPU {receiver_cpu} % of a core · "
        f"other processes {others:.2f} cores"
    )
    print(
        f"wire: {sizes['json_bytes_per_evaluation']} B JSON → {sizes['gzip_bytes_per_evaluation']} B gzip "
        f"per evaluation (×{sizes['compression_ratio']}), {sizes['gzip_bytes_per_batch']:,} B per batch"
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
