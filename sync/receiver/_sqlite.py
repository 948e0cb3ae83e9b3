"""The receiver's tables in one SQLite file: the demo and single-process use.

The stdlib driver runs on one worker thread that owns the connection (WAL, `synchronous=FULL`: an
id is answered `accepted` only once it is on disk). Every write is a `BEGIN IMMEDIATE` transaction
and assigns `serial` as `MAX(serial) + 1` inside it, so serial order is commit order even with
several processes on one file, and the evaluations cursor is simply the last serial read.
Leases use this machine's clock: SQLite is never shared between machines.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from contract.wire import ReceivedRecord
from sync.receiver._store import (
    DEFAULT_TABLE,
    FeedPage,
    LeaseLostError,
    NodeLease,
    PageResult,
    PulledRecord,
    PullStatus,
    StoredRecord,
    StoreUnavailableError,
    check_table,
    utc_now_text,
)

__all__ = ["SqliteStore"]

_T = TypeVar("_T")
_MAX_CURSOR: Final = 2**63 - 1


def parse_serial_cursor(text: str) -> int:
    """A decimal serial cursor, or `ValueError`."""
    if not text.isascii() or not text.isdecimal() or int(text) > _MAX_CURSOR:
        raise ValueError(text)
    return int(text)


class SqliteStore:
    """The tables in a SQLite file, used from one worker thread that owns the connection."""

    def __init__(self, path: str, table: str = DEFAULT_TABLE) -> None:
        self._path = path
        self._table = check_table(table)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise StoreUnavailableError("the SQLite store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work, conn)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"SQLite: {exc}") from exc

    async def open(self) -> None:
        """Open the file (creating its folder), switch to WAL and create the tables."""
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._connect)
        except (OSError, sqlite3.Error) as exc:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise StoreUnavailableError(f"SQLite {self._path}: {exc}") from exc
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=10.0, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            t = self._table
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} ("
                "id TEXT PRIMARY KEY, node_id TEXT NOT NULL, kind TEXT NOT NULL, "
                "seq INTEGER NOT NULL, created_at TEXT NOT NULL, data TEXT NOT NULL, "
                "received_at TEXT NOT NULL, serial INTEGER NOT NULL UNIQUE)"
            )
            conn.execute(f"CREATE INDEX IF NOT EXISTS {t}_kind_serial ON {t} (kind, serial)")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t}_pull (node_id TEXT PRIMARY KEY, "
                "cursor INTEGER NOT NULL DEFAULT 0, acked INTEGER NOT NULL DEFAULT 0, owner TEXT, "
                "lease_until REAL, accepted INTEGER NOT NULL DEFAULT 0, "
                "duplicates INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0, "
                "errors INTEGER NOT NULL DEFAULT 0, caught_up_at REAL)"
            )
            conn.execute(f"CREATE TABLE IF NOT EXISTS {t}_collectors (owner TEXT PRIMARY KEY, seen_at REAL)")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t}_rejected (node_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                "error TEXT NOT NULL, raw TEXT NOT NULL, rejected_at TEXT NOT NULL)"
            )
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        """Close the connection on its thread, then stop the thread."""
        executor, conn = self._executor, self._conn
        self._executor, self._conn = None, None
        if executor is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    def unstorable(self, record: ReceivedRecord) -> str | None:
        """SQLite keeps every valid record."""
        return None

    def _transaction(self, conn: sqlite3.Connection, work: Callable[[], _T]) -> _T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _insert_rows(
        self, conn: sqlite3.Connection, node_id: str, records: Sequence[ReceivedRecord]
    ) -> set[str]:
        """Insert inside the caller's write transaction, serials following the last one.

        The ids already stored are looked up in one query and the rest inserted with one
        `executemany`: a statement and a rowcount per record cost ~4 µs a record (18.0 → 14.4 µs).
        Inside `BEGIN IMMEDIATE` no other writer can store one of them meanwhile.
        """
        t = self._table
        received_at = utc_now_text()
        ids = json.dumps([r.id for r in records])
        stored = {
            row_id
            for (row_id,) in conn.execute(
                f"SELECT id FROM {t} WHERE id IN (SELECT value FROM json_each(?))", (ids,)
            )
        }
        (last,) = conn.execute(f"SELECT COALESCE(MAX(serial), 0) FROM {t}").fetchone()
        fresh: dict[str, ReceivedRecord] = {}
        for r in records:
            if r.id not in stored and r.id not in fresh:
                fresh[r.id] = r
        conn.executemany(
            f"INSERT INTO {t} (id, node_id, kind, seq, created_at, data, received_at, serial) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r.id, node_id, r.kind, r.seq, r.created_at, r.data_json, received_at, last + n)
                for n, r in enumerate(fresh.values(), 1)
            ],
        )
        return set(fresh)

    async def insert(self, node_id: str, records: Sequence[ReceivedRecord]) -> set[str]:
        """The records not stored yet, in one transaction; answers their ids."""

        def work(conn: sqlite3.Connection) -> set[str]:
            return self._transaction(conn, lambda: self._insert_rows(conn, node_id, records))

        return await self._run(work)

    async def evaluations(self, after: str, limit: int) -> FeedPage:
        """Evaluation rows after the serial cursor, oldest commit first."""
        start = parse_serial_cursor(after)
        query = (
            "SELECT serial, id, node_id, kind, seq, created_at, data, received_at "
            f"FROM {self._table} WHERE kind = 'evaluation' AND serial > ? ORDER BY serial LIMIT ?"
        )

        def work(conn: sqlite3.Connection) -> list[StoredRecord]:
            return [
                StoredRecord(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7])
                for row in conn.execute(query, (start, limit))
            ]

        rows = await self._run(work)
        return FeedPage(rows, str(rows[-1].serial) if rows else str(start))

    async def counts_by_kind(self) -> dict[str, int]:
        """Rows per kind."""
        query = f"SELECT kind, COUNT(*) FROM {self._table} GROUP BY kind"

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute(query))

        return await self._run(work)

    # --- pull collector -------------------------------------------------------------------------

    async def claim_nodes(self, owner: str, node_ids: Sequence[str], lease_s: float) -> list[NodeLease]:
        """Heartbeat, renew, trim to the fair share and claim, in one write transaction."""
        t = self._table
        wanted = sorted(set(node_ids))

        def claim(conn: sqlite3.Connection) -> list[NodeLease]:
            now = time.time()
            until = now + lease_s
            conn.executemany(f"INSERT OR IGNORE INTO {t}_pull (node_id) VALUES (?)", [(n,) for n in wanted])
            conn.execute(
                f"INSERT OR REPLACE INTO {t}_collectors (owner, seen_at) VALUES (?, ?)", (owner, now)
            )
            conn.execute(f"DELETE FROM {t}_collectors WHERE seen_at < ?", (now - lease_s,))
            (live,) = conn.execute(f"SELECT COUNT(*) FROM {t}_collectors").fetchone()
            share = math.ceil(len(wanted) / max(live, 1))
            states = {
                row[0]: (row[1], row[2])
                for row in conn.execute(f"SELECT node_id, owner, lease_until FROM {t}_pull")
            }
            mine = [n for n in wanted if states[n][0] == owner]
            for node in mine[share:]:
                conn.execute(
                    f"UPDATE {t}_pull SET owner = NULL, lease_until = NULL WHERE node_id = ?", (node,)
                )
            mine = mine[:share]
            free = [n for n in wanted if states[n][0] is None or (states[n][1] or 0) < now]
            mine += [n for n in free if n not in mine][: max(share - len(mine), 0)]
            conn.executemany(
                f"UPDATE {t}_pull SET owner = ?, lease_until = ? WHERE node_id = ?",
                [(owner, until, n) for n in mine],
            )
            leases = []
            for node in sorted(mine):
                cursor, acked = conn.execute(
                    f"SELECT cursor, acked FROM {t}_pull WHERE node_id = ?", (node,)
                ).fetchone()
                leases.append(NodeLease(node, cursor, acked))
            return leases

        return await self._run(lambda conn: self._transaction(conn, lambda: claim(conn)))

    async def release_nodes(self, owner: str) -> None:
        """Free this owner's leases and forget its heartbeat."""
        t = self._table

        def release(conn: sqlite3.Connection) -> None:
            conn.execute(f"UPDATE {t}_pull SET owner = NULL, lease_until = NULL WHERE owner = ?", (owner,))
            conn.execute(f"DELETE FROM {t}_collectors WHERE owner = ?", (owner,))

        await self._run(lambda conn: self._transaction(conn, lambda: release(conn)))

    async def store_page(
        self, owner: str, node_id: str, records: Sequence[PulledRecord], next_after: int, caught_up: bool
    ) -> PageResult:
        """Records, rejects and the node's cursor in one transaction, fenced by the lease owner."""
        t = self._table
        valid = [p.record for p in records if p.record is not None]
        bad = [p for p in records if p.record is None]

        def store(conn: sqlite3.Connection) -> PageResult:
            row = conn.execute(f"SELECT owner FROM {t}_pull WHERE node_id = ?", (node_id,)).fetchone()
            if row is None or row[0] != owner:
                raise LeaseLostError(node_id)
            inserted = self._insert_rows(conn, node_id, valid)
            now_text = utc_now_text()
            conn.executemany(
                f"INSERT INTO {t}_rejected (node_id, seq, error, raw, rejected_at) VALUES (?, ?, ?, ?, ?)",
                [(node_id, p.seq, p.error, p.raw, now_text) for p in bad],
            )
            result = PageResult(len(inserted), len(valid) - len(inserted), len(bad))
            conn.execute(
                f"UPDATE {t}_pull SET cursor = MAX(cursor, ?), accepted = accepted + ?, "
                "duplicates = duplicates + ?, rejected = rejected + ?, "
                "caught_up_at = CASE WHEN ? THEN ? ELSE caught_up_at END WHERE node_id = ?",
                (
                    next_after,
                    result.accepted,
                    result.duplicates,
                    result.rejected,
                    caught_up,
                    time.time(),
                    node_id,
                ),
            )
            return result

        return await self._run(lambda conn: self._transaction(conn, lambda: store(conn)))

    async def note_acked(self, owner: str, node_id: str, upto: int) -> None:
        """Move the node's acked mark up (never down)."""
        statement = f"UPDATE {self._table}_pull SET acked = MAX(acked, ?) WHERE node_id = ?"
        await self._run(
            lambda conn: self._transaction(conn, lambda: conn.execute(statement, (upto, node_id)))
        )

    async def note_error(self, node_id: str) -> None:
        """Count one failed pull."""
        statement = f"UPDATE {self._table}_pull SET errors = errors + 1 WHERE node_id = ?"
        await self._run(lambda conn: self._transaction(conn, lambda: conn.execute(statement, (node_id,))))

    async def pull_status(self) -> list[PullStatus]:
        """Every node's pull state, oldest catch-up first."""
        query = (
            "SELECT node_id, cursor, acked, accepted, duplicates, rejected, errors, owner, lease_until, "
            f"caught_up_at FROM {self._table}_pull ORDER BY node_id"
        )

        def work(conn: sqlite3.Connection) -> list[PullStatus]:
            now = time.time()
            return [
                PullStatus(
                    node_id=r[0],
                    cursor=r[1],
                    acked=r[2],
                    accepted=r[3],
                    duplicates=r[4],
                    rejected=r[5],
                    errors=r[6],
                    owner=r[7] if r[8] is not None and r[8] >= now else None,
                    caught_up_age_s=None if r[9] is None else max(now - r[9], 0.0),
                )
                for r in conn.execute(query)
            ]

        return await self._run(work)
