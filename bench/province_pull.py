"""The pull half of the simulated province: real hubs' pull APIs (§5) drained by `hallhub central pull` (§16).

K hubs run as their own processes (`python -m hub run`, push off, one private Mosquitto for all),
each with a backlog written through its outbox as the hub writes it. Two collector processes share
the node list by leases in PostgreSQL; one is killed with SIGKILL at 40 % of the records and its nodes
are taken over after `--lease-s`. The run ends when the table holds every record (bounded); then every
node's rows are checked (exactly its records, once) and every hub's outbox must be fully acked.

Used by `bench/province.py --hubs K`; on its own:  .venv/bin/python bench/province_pull.py --hubs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import PULL_TOKEN, HubProc, start_broker, work_dir
from drain import fill_outbox, node_document

from hub.config import parse_config
from hub.ops.broker import free_port
from tests.support.hub import write_toml

LEASE_S = 4.0
DEADLINE_S = 600.0


def _table_rows(db: str, table: str) -> int:
    with psycopg.connect(db) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if not exists or exists[0] is None:
            return 0
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _by_node(db: str, table: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            sql.SQL("SELECT node_id, count(*), count(DISTINCT id) FROM {} GROUP BY node_id").format(
                sql.Identifier(table)
            )
        ).fetchall()
    return {str(n): (int(c), int(d)) for n, c, d in rows}


def _pending(db_path: Path) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM records WHERE state = 0").fetchone()[0])
    finally:
        conn.close()


def _collector(db: str, table: str, nodes_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "hub", "central", "pull", "--db", db, "--nodes", str(nodes_file),
             "--table", table, "--lease-s", str(LEASE_S), "--interval-s", "0.5", "--max-backoff-s", "2"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


def run_pull(hubs: int, records: int, db: str, logs: Path, seed: int) -> dict[str, Any]:
    """Fill K hubs, pull them with two collectors (one killed mid-run), check, drop the tables."""
    table = f"bench_province_pull_{uuid.uuid4().hex[:10]}"
    with work_dir("province-pull") as folder, start_broker(folder / "broker") as broker:
        procs: list[HubProc] = []
        expected: dict[str, int] = {}
        lines = []
        for k in range(hubs):
            home = folder / f"hub-{k}"
            api_port = free_port()
            raw = node_document(home, broker.port, api_port, "", 500)
            raw["node"]["id"] = f"pull-hall-{k:03d}"
            raw.pop("central")
            filled = asyncio.run(fill_outbox(parse_config(raw), records, seed + k))
            expected[raw["node"]["id"]] = int(filled["records"])
            procs.append(HubProc(write_toml(home / "node.toml", raw), api_port, home))
            lines += ["[[node]]", f'id = "{raw["node"]["id"]}"', f'url = "http://127.0.0.1:{api_port}"']
            lines += [f'token = "{PULL_TOKEN}"', ""]
        nodes_file = folder / "nodes.toml"
        nodes_file.write_text("\n".join(lines), encoding="utf-8")
        total = sum(expected.values())
        collectors: list[subprocess.Popen[bytes]] = []
        killed_at = None
        try:
            for proc in procs:
                proc.start(timeout_s=120)
            started = time.monotonic()
            collectors = [_collector(db, table, nodes_file, logs / f"{table}-{n}.log") for n in range(2)]
            done = 0
            while done < total and time.monotonic() - started < DEADLINE_S:
                time.sleep(0.25)
                done = _table_rows(db, table)
                if killed_at is None and done >= 0.4 * total:
                    collectors[0].send_signal(signal.SIGKILL)
                    collectors[0].wait(10)
                    killed_at = round(time.monotonic() - started, 2)
            seconds = time.monotonic() - started
            time.sleep(2.0)  # the acks follow the last commit
            pending = {proc.config_path.parent.name: _pending(proc.db_path) for proc in procs}
            by_node = _by_node(db, table)
        finally:
            for process in collectors:
                if process.poll() is None:
                    process.terminate()
                    process.wait(30)
            for proc in procs:
                proc.stop()
            with psycopg.connect(db, autocommit=True) as conn:
                for suffix in ("", "_pull", "_collectors", "_rejected"):
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table + suffix)))
    lost = sum(max(0, n - by_node.get(node, (0, 0))[1]) for node, n in expected.items())
    duplicated = sum(rows - distinct for rows, distinct in by_node.values())
    result = {
        "hubs": hubs,
        "records": total,
        "seconds": round(seconds, 2),
        "records_per_s": round(total / seconds, 1),
        "collector_killed_at_s": killed_at,
        "lost": lost,
        "duplicated_rows": duplicated,
        "hub_records_left_unacked": sum(pending.values()),
    }
    if lost or duplicated or sum(pending.values()):
        raise RuntimeError(f"pull: exactly-once or ack violated: {result}")
    return result


def main() -> None:
    """Run the pull half on its own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubs", type=int, default=3)
    parser.add_argument("--records", type=int, default=20_000, help="evaluations in each hub's outbox")
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seed", type=int, default=20261207)
    args = parser.parse_args()
    print(run_pull(args.hubs, args.records, args.db, Path(os.environ.get("TMPDIR", "/tmp")), args.seed))


if __name__ == "__main__":
    main()
