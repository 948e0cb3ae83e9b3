"""The receiver's tables on PostgreSQL, shared by any number of receivers and collectors.

Each process holds a small psycopg connection pool; a batch is one transaction with one multi-row
`INSERT … SELECT FROM unnest(…) ON CONFLICT (id) DO NOTHING RETURNING id`, and nothing else is
locked: batches from several receivers commit side by side.

The evaluations cursor cannot then be the `serial` alone: serials are drawn when a row is
inserted, not when it commits, so a reader paging with `serial > cursor` can pass a serial whose
transaction is still open and never see it. Every row also records the id of the transaction
that wrote it (`xid`, an `xid8`, 64 bits, never wrapping). The feed is ordered by `(xid, serial)`
and only shows rows with `xid` below the oldest transaction still running, `pg_snapshot_xmin`
of the reader's snapshot: every writer that can still commit has an xid at or above that horizon,
so anything that appears later sorts after every row already served (docs/sync.md).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from contract.wire import ReceivedRecord, format_timestamp
from sync.receiver._store import (
    DEFAULT_POOL_SIZE,
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
    jsonb_problem,
)

__all__ = ["DEFAULT_POOL_SIZE", "PostgresStore", "parse_feed_cursor"]

_T = TypeVar("_T")
_Conn = psycopg.AsyncConnection[Any]
_MAX_XID: Final = 2**64 - 1
_MAX_SERIAL: Final = 2**63 - 1


def parse_feed_cursor(text: str) -> tuple[int, int]:
    """`XID-SERIAL` as `next` gives it, or a bare serial from before the xid column (xid 0)."""
    xid_text, sep, serial_text = text.rpartition("-")
    if not sep:
        xid_text = "0"
    for part, top in ((xid_text, _MAX_XID), (serial_text, _MAX_SERIAL)):
        if not part.isascii() or not part.isdecimal() or int(part) > top:
            raise ValueError(text)
    return int(xid_text), int(serial_text)


class PostgresStore:
    """The tables in PostgreSQL through a psycopg connection pool."""

    def __init__(self, url: str, table: str = DEFAULT_TABLE, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be 1 or more, got {pool_size!r}")
        self._url = url
        self._table = check_table(table)
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[_Conn] | None = None
        t = self._table
        self._t = sql.Identifier(t)
        self._pull = sql.Identifier(f"{t}_pull")
        self._collectors = sql.Identifier(f"{t}_collectors")
        self._rejected = sql.Identifier(f"{t}_rejected")

    async def _with_conn(self, work: Callable[[_Conn], Awaitable[_T]]) -> _T:
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("the PostgreSQL store is not open")
        try:
            async with pool.connection() as conn:
                return await work(conn)
        except PoolTimeout as exc:
            raise StoreUnavailableError(
                f"PostgreSQL: no connection within the pool's timeout: {exc}"
            ) from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(f"PostgreSQL: {exc}") from exc

    async def open(self) -> None:
        """Open the pool and create the tables (once, under a lock held only while creating)."""
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[_Conn] = AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "connect_timeout": 10},
            timeout=10.0,
            open=False,
            name=f"central-{self._table}",
        )
        try:
            await pool.open(wait=True, timeout=10.0)
        except PoolTimeout as exc:
            await pool.close()
            raise StoreUnavailableError(f"PostgreSQL: cannot connect: {exc}") from exc
        self._pool = pool
        try:
            await self._with_conn(self._create)
        except BaseException:
            await self.close()
            raise

    async def _create(self, conn: _Conn) -> None:
        t, table = self._t, self._table
        async with conn.transaction():
            # Concurrent CREATE TABLE IF NOT EXISTS can fail on the catalog's unique index: receivers
            # starting together take turns here, and only here.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"hallhub-central-schema:{table}",)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {t} ("
                    "serial BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, id TEXT PRIMARY KEY, "
                    "node_id TEXT NOT NULL, kind TEXT NOT NULL, seq BIGINT NOT NULL, "
                    "created_at TIMESTAMPTZ NOT NULL, data JSONB NOT NULL, "
                    "received_at TIMESTAMPTZ NOT NULL, "
                    "xid xid8 NOT NULL DEFAULT pg_current_xact_id())"
                ).format(t=t)
            )
            cursor = await conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s AND column_name = 'xid'",
                (table,),
            )
            if await cursor.fetchone() is None:
                # A table from before the xid column: its rows sort first (xid 0) in serial order,
                # which was their commit order under the old per-batch lock.
                await conn.execute(
                    sql.SQL("ALTER TABLE {t} ADD COLUMN xid xid8 NOT NULL DEFAULT '0'").format(t=t)
                )
                await conn.execute(
                    sql.SQL("ALTER TABLE {t} ALTER COLUMN xid SET DEFAULT pg_current_xact_id()").format(t=t)
                )
            await conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (kind, xid, serial)").format(
                    i=sql.Identifier(f"{table}_kind_xid"), t=t
                )
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {p} (node_id TEXT PRIMARY KEY, "
                    "cursor BIGINT NOT NULL DEFAULT 0, acked BIGINT NOT NULL DEFAULT 0, owner TEXT, "
                    "lease_until TIMESTAMPTZ, accepted BIGINT NOT NULL DEFAULT 0, "
                    "duplicates BIGINT NOT NULL DEFAULT 0, rejected BIGINT NOT NULL DEFAULT 0, "
                    "errors BIGINT NOT NULL DEFAULT 0, caught_up_at TIMESTAMPTZ)"
                ).format(p=self._pull)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {c} (owner TEXT PRIMARY KEY, seen_at TIMESTAMPTZ NOT NULL)"
                ).format(c=self._collectors)
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {r} (node_id TEXT NOT NULL, seq BIGINT NOT NULL, "
                    "error TEXT NOT NULL, raw TEXT NOT NULL, rejected_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                ).format(r=self._rejected)
            )

    async def close(self) -> None:
        """Close the pool and its connections."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def unstorable(self, record: ReceivedRecord) -> str | None:
        """JSONB refuses NUL characters and lone surrogates; such a record is rejected alone."""
        return jsonb_problem(record.data_json)

    async def _insert_rows(self, conn: _Conn, node_id: str, records: Sequence[ReceivedRecord]) -> set[str]:
        """One multi-row upsert inside the caller's transaction, in id order.

        The records' JSON goes as a binary text array (`%b`): in the text format psycopg escapes
        every `"` of every JSON text with a regular expression, which was a third of a receiver's
        CPU in the province benchmark.

        Id order (UUIDv7: creation order) is also lock order: two batches sharing ids take their
        row locks in the same order, so they wait for each other instead of deadlocking.
        """
        if not records:
            return set()
        statement = sql.SQL(
            "INSERT INTO {t} (id, node_id, kind, seq, created_at, data, received_at) "
            "SELECT u.id, %(node)s, u.kind, u.seq, u.created_at::timestamptz, u.data::jsonb, "
            "%(now)s FROM unnest(%(ids)s::text[], %(kinds)s::text[], %(seqs)s::bigint[], "
            "%(created)s::text[], %(data)b::text[]) AS u(id, kind, seq, created_at, data) "
            "ORDER BY u.id ON CONFLICT (id) DO NOTHING RETURNING id"
        ).format(t=self._t)
        params = {
            "node": node_id,
            "now": datetime.now(UTC),
            "ids": [r.id for r in records],
            "kinds": [r.kind for r in records],
            "seqs": [r.seq for r in records],
            "created": [r.created_at for r in records],
            "data": [r.data_json for r in records],
        }
        cursor = await conn.execute(statement, params)
        return {row[0] for row in await cursor.fetchall()}

    async def insert(self, node_id: str, records: Sequence[ReceivedRecord]) -> set[str]:
        """Upsert a batch in one transaction; no lock beyond the rows' own."""

        async def work(conn: _Conn) -> set[str]:
            async with conn.transaction():
                return await self._insert_rows(conn, node_id, records)

        return await self._with_conn(work)

    async def evaluations(self, after: str, limit: int) -> FeedPage:
        """Evaluations after `(xid, serial)`, below the horizon of transactions still running.

        One REPEATABLE READ snapshot serves both the horizon and the rows: every transaction
        below the horizon has ended in that snapshot, so its rows are all there or never will be.
        """
        xid, serial = parse_feed_cursor(after)
        query = sql.SQL(
            "SELECT serial, id, node_id, kind, seq, created_at, data, received_at, xid::text FROM {t} "
            "WHERE kind = 'evaluation' AND (xid, serial) > (%s::xid8, %s) "
            "AND xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY xid, serial LIMIT %s"
        ).format(t=self._t)

        async def work(conn: _Conn) -> list[tuple[Any, ...]]:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cursor = await conn.execute(query, (str(xid), serial, limit))
                return await cursor.fetchall()

        rows = await self._with_conn(work)
        records = [
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
        next_cursor = f"{rows[-1][8]}-{rows[-1][0]}" if rows else after
        return FeedPage(records, next_cursor)

    async def counts_by_kind(self) -> dict[str, int]:
        """Rows per kind."""
        query = sql.SQL("SELECT kind, COUNT(*) FROM {t} GROUP BY kind").format(t=self._t)

        async def work(conn: _Conn) -> dict[str, int]:
            cursor = await conn.execute(query)
            return {row[0]: row[1] for row in await cursor.fetchall()}

        return await self._with_conn(work)

    # --- pull collector -------------------------------------------------------------------------

    async def claim_nodes(self, owner: str, node_ids: Sequence[str], lease_s: float) -> list[NodeLease]:
        """Heartbeat, renew, trim to the fair share, claim with `FOR UPDATE SKIP LOCKED`.

        Lease times are the database's clock, so collectors on machines whose clocks differ agree.
        """
        wanted = sorted(set(node_ids))
        p, c = self._pull, self._collectors

        async def work(conn: _Conn) -> list[NodeLease]:
            async with conn.transaction():
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {p} (node_id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING"
                    ).format(p=p),
                    (wanted,),
                )
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {c} (owner, seen_at) VALUES (%s, now()) "
                        "ON CONFLICT (owner) DO UPDATE SET seen_at = now()"
                    ).format(c=c),
                    (owner,),
                )
                await conn.execute(
                    sql.SQL("DELETE FROM {c} WHERE seen_at < now() - make_interval(secs => %s)").format(c=c),
                    (lease_s,),
                )
                live_row = await (
                    await conn.execute(sql.SQL("SELECT count(*) FROM {c}").format(c=c))
                ).fetchone()
                share = math.ceil(len(wanted) / max(live_row[0] if live_row else 1, 1))
                renewed = await conn.execute(
                    sql.SQL(
                        "UPDATE {p} SET lease_until = now() + make_interval(secs => %s) "
                        "WHERE owner = %s AND node_id = ANY(%s) RETURNING node_id"
                    ).format(p=p),
                    (lease_s, owner, wanted),
                )
                mine = sorted(row[0] for row in await renewed.fetchall())
                if len(mine) > share:
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {p} SET owner = NULL, lease_until = NULL WHERE node_id = ANY(%s)"
                        ).format(p=p),
                        (mine[share:],),
                    )
                    mine = mine[:share]
                elif len(mine) < share:
                    claimed = await conn.execute(
                        sql.SQL(
                            "UPDATE {p} SET owner = %s, lease_until = now() + make_interval(secs => %s) "
                            "FROM (SELECT node_id FROM {p} WHERE node_id = ANY(%s) "
                            "AND (owner IS NULL OR lease_until < now()) ORDER BY node_id "
                            "LIMIT %s FOR UPDATE SKIP LOCKED) AS free "
                            "WHERE {p}.node_id = free.node_id RETURNING {p}.node_id"
                        ).format(p=p),
                        (owner, lease_s, wanted, share - len(mine)),
                    )
                    mine += [row[0] for row in await claimed.fetchall()]
                rows = await conn.execute(
                    sql.SQL(
                        "SELECT node_id, cursor, acked FROM {p} WHERE node_id = ANY(%s) ORDER BY node_id"
                    ).format(p=p),
                    (mine,),
                )
                return [NodeLease(r[0], r[1], r[2]) for r in await rows.fetchall()]

        return await self._with_conn(work)

    async def release_nodes(self, owner: str) -> None:
        """Free this owner's leases and forget its heartbeat, so others take over at once."""

        async def work(conn: _Conn) -> None:
            async with conn.transaction():
                await conn.execute(
                    sql.SQL("UPDATE {p} SET owner = NULL, lease_until = NULL WHERE owner = %s").format(
                        p=self._pull
                    ),
                    (owner,),
                )
                await conn.execute(
                    sql.SQL("DELETE FROM {c} WHERE owner = %s").format(c=self._collectors), (owner,)
                )

        await self._with_conn(work)

    async def store_page(
        self, owner: str, node_id: str, records: Sequence[PulledRecord], next_after: int, caught_up: bool
    ) -> PageResult:
        """Records, rejects and cursor in one transaction, under the node row's lock and owner check."""
        valid = [r.record for r in records if r.record is not None]
        bad = [r for r in records if r.record is None]
        p = self._pull

        async def work(conn: _Conn) -> PageResult:
            async with conn.transaction():
                held = await conn.execute(
                    sql.SQL("SELECT owner FROM {p} WHERE node_id = %s FOR UPDATE").format(p=p), (node_id,)
                )
                row = await held.fetchone()
                if row is None or row[0] != owner:
                    raise LeaseLostError(node_id)
                inserted = await self._insert_rows(conn, node_id, valid)
                if bad:
                    async with conn.cursor() as cur:
                        await cur.executemany(
                            sql.SQL(
                                "INSERT INTO {r} (node_id, seq, error, raw) VALUES (%s, %s, %s, %s)"
                            ).format(r=self._rejected),
                            [(node_id, b.seq, b.error, b.raw) for b in bad],
                        )
                result = PageResult(len(inserted), len(valid) - len(inserted), len(bad))
                await conn.execute(
                    sql.SQL(
                        "UPDATE {p} SET cursor = GREATEST(cursor, %s), accepted = accepted + %s, "
                        "duplicates = duplicates + %s, rejected = rejected + %s, "
                        "caught_up_at = CASE WHEN %s THEN now() ELSE caught_up_at END WHERE node_id = %s"
                    ).format(p=p),
                    (next_after, result.accepted, result.duplicates, result.rejected, caught_up, node_id),
                )
                return result

        return await self._with_conn(work)

    async def note_acked(self, owner: str, node_id: str, upto: int) -> None:
        """Move the node's acked mark up (never down)."""
        statement = sql.SQL("UPDATE {p} SET acked = GREATEST(acked, %s) WHERE node_id = %s").format(
            p=self._pull
        )

        async def work(conn: _Conn) -> None:
            await conn.execute(statement, (upto, node_id))

        await self._with_conn(work)

    async def note_error(self, node_id: str) -> None:
        """Count one failed pull."""
        statement = sql.SQL("UPDATE {p} SET errors = errors + 1 WHERE node_id = %s").format(p=self._pull)

        async def work(conn: _Conn) -> None:
            await conn.execute(statement, (node_id,))

        await self._with_conn(work)

    async def pull_status(self) -> list[PullStatus]:
        """Every node's pull state, by node id."""
        query = sql.SQL(
            "SELECT node_id, cursor, acked, accepted, duplicates, rejected, errors, "
            "CASE WHEN lease_until >= now() THEN owner END, "
            "EXTRACT(EPOCH FROM now() - caught_up_at)::float8 FROM {p} ORDER BY node_id"
        ).format(p=self._pull)

        async def work(conn: _Conn) -> list[tuple[Any, ...]]:
            return await (await conn.execute(query)).fetchall()

        return [
            PullStatus(
                node_id=r[0],
                cursor=r[1],
                acked=r[2],
                accepted=r[3],
                duplicates=r[4],
                rejected=r[5],
                errors=r[6],
                owner=r[7],
                caught_up_age_s=None if r[8] is None else max(float(r[8]), 0.0),
            )
            for r in await self._with_conn(work)
        ]
