"""The reference central receiver behind `hallhub central` (CONTRACTS §6, §16).

It takes the hub's batches (`POST /v1/nodes/{node_id}/batches`), upserts each record by id into
one table on SQLite or PostgreSQL, lets the platform page through what arrived
(`GET /v1/evaluations?after=CURSOR&limit=N`) and serves `/metrics`. On PostgreSQL any number of
receivers share the database. The same stores keep the pull collector's leases and cursors
(`sync.collector`). Fault switches make it misbehave on purpose for tests and demos. Start it
with `run_receiver` (serve until cancelled) or `start_receiver` (an async context manager), or
mount `CentralReceiver(...).make_app()` in any aiohttp runner. `PostgresStore` and
`parse_feed_cursor` load psycopg (the `postgres` extra), so they are imported on first use only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync.receiver._app import (
    DEFAULT_PAGE,
    MAX_PAGE,
    RECEIVER_KEY,
    CentralReceiver,
    Misbehaviour,
    ReceiverStats,
)
from sync.receiver._open import open_store
from sync.receiver._server import (
    DEFAULT_LISTEN,
    RunningReceiver,
    parse_listen,
    run_receiver,
    start_receiver,
)
from sync.receiver._sqlite import SqliteStore
from sync.receiver._store import (
    DEFAULT_POOL_SIZE,
    DEFAULT_TABLE,
    FeedPage,
    LeaseLostError,
    NodeLease,
    PageResult,
    PulledRecord,
    PullStatus,
    Store,
    StoredRecord,
    StoreUnavailableError,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PAGE",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TABLE",
    "MAX_PAGE",
    "RECEIVER_KEY",
    "CentralReceiver",
    "FeedPage",
    "LeaseLostError",
    "Misbehaviour",
    "NodeLease",
    "PageResult",
    "PostgresStore",
    "PullStatus",
    "PulledRecord",
    "ReceiverStats",
    "RunningReceiver",
    "SqliteStore",
    "Store",
    "StoreUnavailableError",
    "StoredRecord",
    "open_store",
    "parse_feed_cursor",
    "parse_listen",
    "run_receiver",
    "start_receiver",
]

if TYPE_CHECKING:
    from sync.receiver._postgres import PostgresStore, parse_feed_cursor

_POSTGRES_NAMES = frozenset({"PostgresStore", "parse_feed_cursor"})


def __getattr__(name: str) -> object:
    """`PostgresStore` and `parse_feed_cursor`, imported from the PostgreSQL module when first asked for."""
    if name in _POSTGRES_NAMES:
        from sync.receiver import _postgres  # noqa: PLC0415 (psycopg only when PostgreSQL is used)

        return getattr(_postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
