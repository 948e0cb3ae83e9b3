"""Baselines: this machine's ceilings, so that the hub's figures can be read as a share of them.

1. Mosquitto alone: QoS-1 messages/s from `mosquitto_pub -l` through a private broker to
   `mosquitto_sub` on loopback (C clients: the broker's ceiling, not Python's), rating-sized payloads,
   in rounds of at most 20,000 messages (mosquitto_pub 2.0.11 -l drops out with "out of memory" on
   larger inputs); the median round is reported.
2. The hub's MQTT library (aiomqtt over paho): QoS-1 publishes/s awaited one at a time and with many
   in flight, and QoS-1 messages/s received. The hub handles three QoS-1 messages per rating (the
   rating in, its ack and its `events/evaluation` mirror out), so these bound the hub's rate.
3. SQLite with WAL and `synchronous=FULL` on this disk (/var/tmp, where the benchmarks keep the
   outbox): commits/s with a commit per rating (its record row and dedup row, in the hub's schema) and
   with batches of 100 ratings, with commit latency.
4. The hub's outbox alone (in-process, no MQTT): stores/s with group commit from 400 concurrent
   writers, with and without the evaluation hook the hub installs (the national record mapping).

Run from the repository root:  .venv/bin/python bench/baselines.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiomqtt
from _common import (
    REPO,
    Figure,
    percentile,
    print_figures,
    start_broker,
    wait_for_quiet,
    work_dir,
    write_result,
)

from hub.metrics import HubMetrics
from hub.store.outbox import DedupKey, Outbox
from hub.store.schema import migrate, open_connection
from tests.support.hub import node_config, terminals

RATING = json.dumps(
    {
        "msg_id": "0123456789abcdef0123",
        "level": 5,
        "case_no": "BENCH0123456789",
        "item_code": "11370100MB0000000X",
        "staff_id": "S001",
        "ts": "2026-11-22T10:00:00.000Z",
    },
    separators=(",", ":"),
)
TOPIC = "bench/baseline"
BODY = "x" * 560  # about the size of an evaluation record's wire JSON


class ProcessCpu:
    """The last CPU time seen for a process that may exit at any moment."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.seconds = 0.0

    def sample(self) -> None:
        """Read its CPU time now (kept if the process is already gone)."""
        with contextlib.suppress(psutil.Error):
            times = self.proc.cpu_times()
            self.seconds = float(times.user + times.system)


def mosquitto_c_clients(port: int, broker_pid: int, count: int, folder: Path) -> dict[str, Any]:
    """`mosquitto_pub -l -q 1` → broker → `mosquitto_sub -q 1 -C count`: messages/s and CPU."""
    lines = folder / "lines.txt"
    lines.write_text((RATING + "\n") * count, encoding="utf-8")
    sub = subprocess.Popen(
        ["mosquitto_sub", "-p", str(port), "-q", "1", "-t", TOPIC, "-C", str(count)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    broker = ProcessCpu(broker_pid)
    broker.sample()
    broker_start = broker.seconds
    started = time.monotonic()
    with lines.open("rb") as source:
        pub = subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", TOPIC, "-l", "-M", "100"],
            stdin=source,
        )
    meters = {"mosquitto_pub": ProcessCpu(pub.pid), "mosquitto_sub": ProcessCpu(sub.pid)}
    deadline = started + 60
    while sub.poll() is None and time.monotonic() < deadline:
        for meter in meters.values():
            meter.sample()
        broker.sample()
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    received_all = sub.poll() == 0
    for proc in (pub, sub):
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return {
        "messages": count,
        "payload_bytes": len(RATING),
        "received_all": received_all,
        "seconds": round(elapsed, 3),
        "msgs_per_s": count / elapsed if received_all else math.nan,
        "cpu_s": {
            "mosquitto": round(broker.seconds - broker_start, 3),
            **{name: round(meter.seconds, 3) for name, meter in meters.items()},
        },
    }


def _client(port: int) -> aiomqtt.Client:
    client = aiomqtt.Client(
        "127.0.0.1", port, identifier=f"baseline-{uuid.uuid4().hex[:8]}", max_inflight_messages=0
    )
    client.pending_calls_threshold = 10**6  # as the hub does: no warning per publish
    return client


async def aiomqtt_publish(port: int, count: int, in_flight: int) -> dict[str, Any]:
    """QoS-1 publishes/s, with at most `in_flight` unconfirmed (1 = each awaited in turn)."""
    payload = RATING.encode()
    async with _client(port) as client:
        slots = asyncio.Semaphore(in_flight)

        async def one() -> None:
            try:
                await client.publish(TOPIC, payload, qos=1)
            finally:
                slots.release()

        cpu_start = time.process_time()
        started = time.monotonic()
        tasks = set()
        for _ in range(count):
            await slots.acquire()
            if in_flight == 1:
                await one()
                continue
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_start
    return {
        "messages": count,
        "in_flight": in_flight,
        "msgs_per_s": count / elapsed,
        "cpu_us_per_msg": cpu / count * 1e6,
    }


async def aiomqtt_receive(port: int, count: int) -> dict[str, Any]:
    """QoS-1 messages/s received by an aiomqtt subscriber from `mosquitto_pub -l` (a C client)."""
    lines = "\n".join([RATING] * count) + "\n"
    async with _client(port) as client:
        await client.subscribe(TOPIC, qos=1)
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-p", str(port), "-q", "1", "-t", TOPIC, "-l", "-M", "100",
            stdin=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert pub.stdin is not None
        received = 0
        cpu_start = time.process_time()
        started = time.monotonic()
        pub.stdin.write(lines.encode())
        await pub.stdin.drain()
        pub.stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                async for _message in client.messages:
                    received += 1
                    if received >= count:
                        break
        elapsed = time.monotonic() - started
        cpu = time.process_time() - cpu_start
        with contextlib.suppress(ProcessLookupError):
            pub.kill()
        await pub.wait()
    return {
        "messages": count,
        "received": received,
        "msgs_per_s": received / elapsed,
        "cpu_us_per_msg": cpu / max(1, received) * 1e6,
    }


def sqlite_commits(folder: Path, batch: int, seconds: float) -> dict[str, Any]:
    """Ratings/s and commits/s in the hub's schema, WAL + synchronous=FULL, `batch` per commit."""
    path = folder / f"sqlite-{batch}.db"
    conn = open_connection(path)
    migrate(conn)
    seq = 0
    latencies: list[float] = []
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline and seq < 5_000_000:
        rows, dedup = [], []
        now = time.time()
        for _ in range(batch):
            seq += 1
            record_id = str(uuid.uuid4())
            rows.append((seq, record_id, "evaluation", 1, "2026-11-22T10:00:00.000Z", "pad-00", None, BODY))
            dedup.append(("pad-00", f"m{seq}", record_id, None, now))
        begin = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO records (seq, id, kind, priority, created_at, device_id, case_no, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO dedup (device_id, msg_id, record_id, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
            dedup,
        )
        conn.execute("COMMIT")
        latencies.append((time.perf_counter() - begin) * 1000)
    elapsed = time.monotonic() - started
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.close()
    return {
        "batch": batch,
        "journal_mode": mode,
        "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(sync, sync),
        "ratings": seq,
        "ratings_per_s": seq / elapsed,
        "commits_per_s": len(latencies) / elapsed,
        "commit_ms_p50": round(percentile(latencies, 50), 3),
        "commit_ms_p99": round(percentile(latencies, 99), 3),
    }


async def outbox_alone(folder: Path, with_hook: bool, writers: int, seconds: float) -> dict[str, Any]:
    """Stores/s through the hub's Outbox (group commit) from `writers` concurrent tasks."""
    from hub.ingest.intake import Intake  # noqa: PLC0415 (after sys.path is set up, like the hub wires it)
    from sync.annotate import make_evaluation_hook  # noqa: PLC0415

    data = folder / f"outbox-{'hook' if with_hook else 'plain'}"
    config = node_config(data, 1883, terminals(writers, "pad"))
    outbox = Outbox(data / "outbox.db", evaluation_hook=make_evaluation_hook(config) if with_hook else None)
    await outbox.open()
    intake = Intake(config, outbox, HubMetrics())
    stop_at = time.monotonic() + seconds
    stored = 0

    async def writer(index: int) -> None:
        nonlocal stored
        device = config.device[index]
        n = 0
        while time.monotonic() < stop_at and n < 1_000_000:
            n += 1
            records = intake.evaluation(device, level=5, reasons=[], case_no=f"C{index}-{n}")
            await intake.store(records, DedupKey(device.id, f"{index}-{n}"))
            stored += 1

    cpu_start = time.process_time()
    started = time.monotonic()
    commits_start = outbox.commits
    await asyncio.gather(*(writer(i) for i in range(writers)))
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_start
    commits = outbox.commits - commits_start
    await outbox.close()
    return {
        "writers": writers,
        "evaluation_hook": with_hook,
        "stores": stored,
        "stores_per_s": stored / elapsed,
        "commits_per_s": commits / elapsed,
        "stores_per_commit": stored / max(1, commits),
        "cpu_us_per_store": cpu / max(1, stored) * 1e6,
    }


def _run(label: str, action: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = asyncio.run(action())
    print(f"  {label}: {json.dumps({k: _round(v) for k, v in result.items()})}")
    return result


def _round(value: Any) -> Any:
    return round(value, 1) if isinstance(value, float) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per C-client round")
    parser.add_argument("--rounds", type=int, default=5, help="C-client rounds")
    parser.add_argument("--py-messages", type=int, default=20_000, help="messages per aiomqtt run")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per SQLite and outbox run")
    args = parser.parse_args()
    messages = max(1000, min(args.messages, 20_000))
    rounds = max(1, min(args.rounds, 20))
    py_messages = max(1000, min(args.py_messages, 200_000))
    seconds = max(1.0, min(args.seconds, 30.0))
    command = (
        f"python bench/baselines.py --messages {messages} --rounds {rounds} --py-messages {py_messages}"
        f" --seconds {seconds:g}"
    )
    print(command)
    details: dict[str, Any] = {"other_load_before_cores": wait_for_quiet()}
    with work_dir("baselines") as folder:
        with start_broker(folder / "broker") as broker:
            assert broker.process is not None
            print("Mosquitto with C clients (mosquitto_pub -l → mosquitto_sub), QoS 1")
            runs = []
            for _ in range(rounds):
                runs.append(mosquitto_c_clients(broker.port, broker.process.pid, messages, folder))
                print(f"  {json.dumps({k: _round(v) for k, v in runs[-1].items()})}")
            rates = [run["msgs_per_s"] for run in runs if run["received_all"]]
            details["mosquitto_c"] = {
                "rounds": runs,
                "msgs_per_s": statistics.median(rates) if rates else math.nan,
            }
            print("aiomqtt (the hub's MQTT client), QoS 1")
            details["aiomqtt_publish_awaited"] = _run(
                "publish, each awaited", lambda: aiomqtt_publish(broker.port, py_messages // 4, 1)
            )
            details["aiomqtt_publish_pipelined"] = _run(
                "publish, 500 in flight", lambda: aiomqtt_publish(broker.port, py_messages, 500)
            )
            details["aiomqtt_receive"] = _run("receive", lambda: aiomqtt_receive(broker.port, py_messages))
        print("SQLite, WAL, synchronous=FULL, the hub's schema (a record row and a dedup row per rating)")
        for batch in (1, 100):
            result = sqlite_commits(folder, batch, seconds)
            details[f"sqlite_batch_{batch}"] = result
            print(f"  batch {batch}: {json.dumps({k: _round(v) for k, v in result.items()})}")
        print("The hub's outbox alone (in-process, 400 concurrent writers, group commit)")
        for hook in (False, True):
            details[f"outbox_{'hook' if hook else 'plain'}"] = _run(
                "with evaluation hook" if hook else "without hook",
                functools.partial(outbox_alone, folder, hook, 400, seconds),
            )
    publish = details["aiomqtt_publish_pipelined"]["msgs_per_s"]
    receive = details["aiomqtt_receive"]["msgs_per_s"]
    mqtt_bound = 1.0 / (1.0 / receive + 2.0 / publish)
    details["derived"] = {
        "aiomqtt_bound_ratings_per_s": mqtt_bound,
        "explanation": "one QoS-1 receive and two QoS-1 publishes per rating, nothing else, on one core",
    }
    figures = {
        "baseline.mosquitto_qos1": Figure(
            details["mosquitto_c"]["msgs_per_s"], "msgs/s", "higher", "Mosquitto QoS-1 pub→sub (C clients)"
        ),
        "baseline.aiomqtt_publish_awaited": Figure(
            details["aiomqtt_publish_awaited"]["msgs_per_s"], "msgs/s", "higher", "aiomqtt publish, awaited"
        ),
        "baseline.aiomqtt_publish_pipelined": Figure(
            publish, "msgs/s", "higher", "aiomqtt publish, 500 in flight"
        ),
        "baseline.aiomqtt_receive": Figure(receive, "msgs/s", "higher", "aiomqtt receive"),
        "baseline.aiomqtt_bound_ratings": Figure(
            mqtt_bound, "ratings/s", "higher", "aiomqtt-only bound (1 in + 2 out)"
        ),
        "baseline.sqlite_commit_per_rating": Figure(
            details["sqlite_batch_1"]["commits_per_s"],
            "commits/s",
            "higher",
            "SQLite FULL, commit per rating",
        ),
        "baseline.sqlite_batch_100": Figure(
            details["sqlite_batch_100"]["ratings_per_s"], "ratings/s", "higher", "SQLite FULL, 100 per commit"
        ),
        "baseline.outbox_plain": Figure(
            details["outbox_plain"]["stores_per_s"], "stores/s", "higher", "hub outbox alone, no hook"
        ),
        "baseline.outbox_hook": Figure(
            details["outbox_hook"]["stores_per_s"], "stores/s", "higher", "hub outbox alone, with hook"
        ),
    }
    print_figures("Baselines", figures)
    details["repo"] = str(REPO)
    path = write_result("baselines", command, figures, details)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
