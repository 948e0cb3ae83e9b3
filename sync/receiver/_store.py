"""The receiver's table on SQLite or PostgreSQL: one upsert by record id, read back by serial.

One table holds every record: `id` (primary key), `node_id`, `kind`, `seq`, `created_at`, `data`
(JSON), `received_at` and `serial`, a receiver-side counter in arrival order that the evaluations
cursor pages by. Writes are serialised so that a row with a smaller serial is never committed after
one with a larger serial: a reader paging with `serial > cursor` then cannot skip a row.

- SQLite: the stdlib driver on one worker thread that owns the connection (WAL,
  `synchronous=FULL`: an id is answered `accepted` only once it is on disk). The serial is
  assigned inside a `BEGIN IMMEDIATE` transaction, so several processes on one file stay ordered.
- PostgreSQL: psycopg 3's async API on one connection, reopened after a failure. The async API
  keeps the receiver a single event loop with no thread hand-offs; one connection under a lock
  is enough for a reference receiver, and each insert also takes a transaction-level advisory lock
  so that several receivers sharing the database keep serial order equal to commit order.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import psycopg
from psycopg import sql

from contract.wire import Record, format_timestamp

__all__ = [
    "DEFAULT_TABLE",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreUnavailableError",
    "StoredRecord",
    "open_store",
]

DEFAULT_TABLE: Final = "hallhub_records"
_TABLE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_T = TypeVar("_T")


class StoreUnavailableError(Exception):
    """The database cannot be reached or written right now; the request may be retried."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored, with the receiver's own fields."""

    serial: int
    id: str
    node_id: str
    kind: str
    seq: int
    created_at: str
    data: dict[str, Any]
    received_at: str

    def as_json(self) -> dict[str, Any]:
        """The record (§1) plus `node_id` and `received_at`, as `/v1/evaluations` lists it."""
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind,
            "created_at": self.created_at,
            "data": self.data,
            "node_id": self.node_id,
            "received_at": self.received_at,
        }


class Store(Protocol):
    """What the receiver needs from a database."""

    async def open(self) -> None:
        """Connect and create the table if it is missing."""
        ...

    async def close(self) -> None:
        """Release the connection (and thread); safe to call twice."""
        ...

    def unstorable(self, record: Record) -> str | None:
        """Why this store cannot keep the record at all, or None."""
        ...

    async def insert(self, node_id: str, records: Sequence[Record]) -> set[str]:
        """Upsert by id in one transaction; return the ids that were new."""
        ...

    async def evaluations(self, after: int, limit: int) -> list[StoredRecord]:
        """Evaluation records with `serial > after`, in serial order."""
        ...

    async def counts_by_kind(self) -> dict[str, int]:
        """How many rows of each kind are stored."""
        ...


def _check_table(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"table {table!r} must be a lower-case SQL name: a-z 0-9 _, up to 63")
    return table


def open_store(db_url: str, table: str = DEFAULT_TABLE) -> Store:
    """A store for `sqlite:///relative.db`, `sqlite:////absolute.db` or `postgresql://…`."""
    _check_table(table)
    if db_url.startswith("sqlite:///"):
        path = db_url.removeprefix("sqlite:///")
        if not path:
            raise ValueError("a sqlite URL needs a file path: sqlite:///path/to/central.db")
        return SqliteStore(path, table)
    if db_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(db_url, table)
    raise ValueError(f"database URL {db_url!r} is not supported: use sqlite:///path.db or postgresql://…")


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


# --- SQLite -----------------------------------------------------------------------------------


class SqliteStore:
    """The table in a SQLite file, used from one worker thread that owns the connection."""

    def __init__(self, path: str, table: str = DEFAULT_TABLE) -> None:
        self._path = path
        self._table = _check_table(table)
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
        """Open the file (creating its folder), switch to WAL and create the table."""
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

    def unstorable(self, record: Record) -> str | None:
        """SQLite keeps every valid record."""
        return None

    async def insert(self, node_id: str, records: Sequence[Record]) -> set[str]:
        """One `INSERT … ON CONFLICT (id) DO NOTHING` per record, all in one transaction."""
        rows = [(r.id, r.kind, r.seq, r.created_at, json.dumps(r.data)) for r in records]
        received_at = _now()
        t = self._table
        insert_sql = (
            f"INSERT INTO {t} (id, node_id, kind, seq, created_at, data, received_at, serial) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        )

        def work(conn: sqlite3.Connection) -> set[str]:
            inserted: set[str] = set()
            conn.execute("BEGIN IMMEDIATE")
            try:
                (last,) = conn.execute(f"SELECT COALESCE(MAX(serial), 0) FROM {t}").fetchone()
                for record_id, kind, seq, created_at, data in rows:
                    cursor = conn.execute(
                        insert_sql,
                        (record_id, node_id, kind, seq, created_at, data, received_at, last + 1),
                    )
                    if cursor.rowcount == 1:
                        inserted.add(record_id)
                        last += 1
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return inserted

        return await self._run(work)

    async def evaluations(self, after: int, limit: int) -> list[StoredRecord]:
        """Evaluation rows after the cursor, oldest arrival first."""
        query = (
            "SELECT serial, id, node_id, kind, seq, created_at, data, received_at "
            f"FROM {self._table} WHERE kind = 'evaluation' AND serial > ? ORDER BY serial LIMIT ?"
        )

        def work(conn: sqlite3.Connection) -> list[StoredRecord]:
            return [
                StoredRecord(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7])
                for row in conn.execute(query, (after, limit))
            ]

        return await self._run(work)

    async def counts_by_kind(self) -> dict[str, int]:
        """Rows per kind."""
        query = f"SELECT kind, COUNT(*) FROM {self._table} GROUP BY kind"

        def work(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute(query))

        return await self._run(work)


# --- PostgreSQL -------------------------------------------------------------------------------


def _jsonb_problem(data: dict[str, Any]) -> str | None:
    """Why JSONB would refuse this value (NUL or a lone surrogate in a string), or None."""
    pending: list[Any] = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                return "data contains a NUL character, which PostgreSQL JSONB cannot store"
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "data contains a lone UTF-16 surrogate, which is not valid Unicode"
    return None


class PostgresStore:
    """The table in PostgreSQL through one psycopg async connection, reopened after failures."""

    def __init__(self, url: str, table: str = DEFAULT_TABLE) -> None:
        self._url = url
        self._table = _check_table(table)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self._url, connect_timeout=10)
            except psycopg.OperationalError as exc:
                raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def open(self) -> None:
        """Connect and create the table and its index."""
        t = sql.Identifier(self._table)
        create = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {t} ("
            "serial BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, id TEXT PRIMARY KEY, "
            "node_id TEXT NOT NULL, kind TEXT NOT NULL, seq BIGINT NOT NULL, "
            "created_at TIMESTAMPTZ NOT NULL, data JSONB NOT NULL, "
            "received_at TIMESTAMPTZ NOT NULL)"
        ).format(t=t)
        index = sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (kind, serial)").format(
            i=sql.Identifier(f"{self._table}_kind_serial"), t=t
        )
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction():
                    await conn.execute(create)
                    await conn.execute(index)
            except psycopg.OperationalError as exc:
                await self._drop_connection()
                raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._drop_connection()

    def unstorable(self, record: Record) -> str | None:
        """JSONB refuses NUL characters and lone surrogates; such a record is rejected alone."""
        return _jsonb_problem(record.data)

    async def _locked(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        async with self._lock:
            conn = await self._connection()
            try:
                return await work(conn)
            except psycopg.OperationalError as exc:
                await self._drop_connection()
                raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc

    async def insert(self, node_id: str, records: Sequence[Record]) -> set[str]:
        """One multi-row `INSERT … ON CONFLICT (id) DO NOTHING RETURNING id` per batch."""
        if not records:
            return set()
        statement = sql.SQL(
            "INSERT INTO {t} (id, node_id, kind, seq, created_at, data, received_at) "
            "SELECT u.id, %(node)s, u.kind, u.seq, u.created_at::timestamptz, u.data::jsonb, "
            "%(now)s FROM unnest(%(ids)s::text[], %(kinds)s::text[], %(seqs)s::bigint[], "
            "%(created)s::text[], %(data)s::text[]) WITH ORDINALITY "
            "AS u(id, kind, seq, created_at, data, ord) ORDER BY u.ord "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        ).format(t=sql.Identifier(self._table))
        params = {
            "node": node_id,
            "now": datetime.now(UTC),
            "ids": [r.id for r in records],
            "kinds": [r.kind for r in records],
            "seqs": [r.seq for r in records],
            "created": [r.created_at for r in records],
            "data": [json.dumps(r.data) for r in records],
        }
        lock_key = f"hallhub-central:{self._table}"

        async def work(conn: psycopg.AsyncConnection[Any]) -> set[str]:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,))
                cursor = await conn.execute(statement, params)
                return {row[0] for row in await cursor.fetchall()}

        return await self._locked(work)

    async def evaluations(self, after: int, limit: int) -> list[StoredRecord]:
        """Evaluation rows after the cursor, oldest arrival first."""
        query = sql.SQL(
            "SELECT serial, id, node_id, kind, seq, created_at, data, received_at FROM {t} "
            "WHERE kind = 'evaluation' AND serial > %s ORDER BY serial LIMIT %s"
        ).format(t=sql.Identifier(self._table))

        async def work(conn: psycopg.AsyncConnection[Any]) -> list[StoredRecord]:
            async with conn.transaction():
                cursor = await conn.execute(query, (after, limit))
                rows = await cursor.fetchall()
            return [
                StoredRecord(
                    serial=row[0],
                    id=row[1],
                    node_id=row[2],
                    kind=row[3],
                    seq=row[4],
                    created_at=format_timestamp(row[5]),
                    data=row[6],
                    received_at=format_timestamp(row[7]),
                )
                for row in rows
            ]

        return await self._locked(work)

    async def counts_by_kind(self) -> dict[str, int]:
        """Rows per kind."""
        query = sql.SQL("SELECT kind, COUNT(*) FROM {t} GROUP BY kind").format(t=sql.Identifier(self._table))

        async def work(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
            async with conn.transaction():
                cursor = await conn.execute(query)
                rows = await cursor.fetchall()
            return {row[0]: row[1] for row in rows}

        return await self._locked(work)
