"""The reference central receiver behind `hallhub central` (CONTRACTS §6).

It takes the hub's batches (`POST /v1/nodes/{node_id}/batches`), upserts each record by id into
one table on SQLite or PostgreSQL, and lets the platform page through what arrived
(`GET /v1/evaluations?after=CURSOR&limit=N`). Fault switches make it misbehave on purpose for
tests and demos. Start it with `run_receiver` (serve until cancelled) or `start_receiver` (an
async context manager), or mount `CentralReceiver(...).make_app()` in any aiohttp runner.
"""

from sync.receiver._app import (
    DEFAULT_PAGE,
    MAX_PAGE,
    RECEIVER_KEY,
    CentralReceiver,
    Misbehaviour,
    ReceiverStats,
)
from sync.receiver._server import (
    DEFAULT_LISTEN,
    RunningReceiver,
    parse_listen,
    run_receiver,
    start_receiver,
)
from sync.receiver._store import (
    DEFAULT_TABLE,
    PostgresStore,
    SqliteStore,
    Store,
    StoredRecord,
    StoreUnavailableError,
    open_store,
)

__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_PAGE",
    "DEFAULT_TABLE",
    "MAX_PAGE",
    "RECEIVER_KEY",
    "CentralReceiver",
    "Misbehaviour",
    "PostgresStore",
    "ReceiverStats",
    "RunningReceiver",
    "SqliteStore",
    "Store",
    "StoreUnavailableError",
    "StoredRecord",
    "open_store",
    "parse_listen",
    "run_receiver",
    "start_receiver",
]
