"""The outbox's counts with a large backlog: what /metrics, /healthz, /v1/status and hub/state pay.

python bench/backlog_stats.py [--records 1000000]

Fills a store (the hub's schema, on /var/tmp) with pending records of three kinds, then times
`pending_by_kind` as the hub reads it, the same counts by `GROUP BY` (what it did before schema 3),
and migrating a schema-2 store of that size (the one-off cost of the upgrade on a node).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import Figure, print_figures, work_dir, write_result

from hub.store.outbox import PENDING, pending_by_kind
from hub.store.schema import MIGRATIONS, migrate, open_connection

KINDS = ("evaluation",) * 8 + ("scan", "alert")
INSERT = (
    "INSERT INTO records (seq, id, kind, priority, created_at, device_id, body)"
    " VALUES (?, ?, ?, 1, ?, 'terminal-00', '{\"level\":5}')"
)


def rows(count: int) -> Iterator[tuple[object, ...]]:
    start = 1_790_000_000  # 2026-09-22: one record a second from then on
    for seq in range(1, count + 1):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start + seq))
        yield seq, f"rec-{seq:09d}", KINDS[seq % len(KINDS)], stamp


def fill(path: Path, count: int, schema_steps: int) -> float:
    """A store at schema `schema_steps` holding `count` pending records; seconds taken."""
    started = time.perf_counter()
    conn = open_connection(path)
    migrate(conn, MIGRATIONS[:schema_steps])
    conn.execute("PRAGMA synchronous = OFF")  # filling is set-up, not what is measured
    conn.execute("BEGIN")
    conn.executemany(INSERT, rows(count))
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


def timed_ms(action: Callable[[], object], repeat: int) -> float:
    """Median wall time of `action()` in ms."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000, help="pending records in the store")
    parser.add_argument("--repeat", type=int, default=5, help="timed reads of each kind")
    args = parser.parse_args()
    with work_dir("backlog") as folder:
        path = folder / "outbox.db"
        print(f"filling a schema-2 store with {args.records:,} pending records ...", flush=True)
        fill_s = fill(path, args.records, 2)
        print(f"  {fill_s:.1f} s; migrating it to the current schema ...", flush=True)
        conn = open_connection(path)
        started = time.perf_counter()
        migrate(conn)
        migrate_s = time.perf_counter() - started
        conn.close()
        reader = sqlite3.connect(path)
        counts, oldest = pending_by_kind(reader)
        assert sum(counts.values()) == args.records, counts
        group_by = (
            f"SELECT kind, count(*), min(created_at) FROM records WHERE state = {PENDING} GROUP BY kind"
        )
        counted_ms = timed_ms(lambda: pending_by_kind(reader), args.repeat)
        group_by_ms = timed_ms(lambda: reader.execute(group_by).fetchall(), args.repeat)
        reader.close()
    figures = {
        "backlog.counts_ms": Figure(counted_ms, "ms", "lower", "pending by kind + oldest (as the hub reads)"),
        "backlog.group_by_ms": Figure(group_by_ms, "ms", "lower", "the same by GROUP BY (before schema 3)"),
        "backlog.migrate_s": Figure(migrate_s, "s", "lower", "migrating the store to schema 3, once"),
    }
    print_figures(f"Outbox counts with {args.records:,} pending records", figures)
    print(f"\npending {counts}, first in the queue captured at {oldest}")
    write_result(
        "backlog_stats",
        ("python bench/backlog_stats.py " + " ".join(sys.argv[1:])).strip(),
        figures,
        {"records": args.records, "pending_by_kind": counts, "fill_s": round(fill_s, 2)},
    )


if __name__ == "__main__":
    main()
