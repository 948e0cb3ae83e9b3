"""What the receiver and the pull collector need from a database, and `open_store` to pick one.

One table holds every record: `id` (primary key), `node_id`, `kind`, `seq`, `created_at`, `data`
(JSON), `received_at` and `serial`, a receiver-side counter. Beside it, the pull collector keeps
`{table}_pull` (one row per node: its cursor, lease and counters), `{table}_collectors` (a
heartbeat per collector process, to share the nodes fairly) and `{table}_rejected` (pulled
records that could not be stored, kept verbatim instead of being lost behind the ack).

- SQLite (`sync.receiver._sqlite`): the demo and single-process use.
- PostgreSQL (`sync.receiver._postgres`): several receivers and collectors on one database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from contract.wire import ReceivedRecord, format_timestamp

__all__ = [
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TABLE",
    "FeedPage",
    "LeaseLostError",
    "NodeLease",
    "PageResult",
    "PullStatus",
    "PulledRecord",
    "Store",
    "StoreUnavailableError",
    "StoredRecord",
    "check_table",
    "jsonb_problem",
    "utc_now_text",
]

DEFAULT_TABLE: Final = "hallhub_records"
DEFAULT_POOL_SIZE: Final = 8
"""The most PostgreSQL connections one process opens (here, not in the PostgreSQL module, so that a
SQLite receiver never loads psycopg)."""
# 48 leaves room for the longest derived name (`{table}_collectors`) under PostgreSQL's 63.
_TABLE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class StoreUnavailableError(Exception):
    """The database cannot be reached or written right now; the request may be retried."""


class LeaseLostError(Exception):
    """Another collector holds this node's lease now: the page was not stored, nothing was moved."""


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


@dataclass(frozen=True, slots=True)
class FeedPage:
    """A page of the evaluations feed and the cursor to ask for the next one."""

    rows: list[StoredRecord]
    next: str


@dataclass(frozen=True, slots=True)
class NodeLease:
    """A node this collector holds: where its pull resumes and how far it was acknowledged."""

    node_id: str
    cursor: int
    acked: int


@dataclass(frozen=True, slots=True)
class PulledRecord:
    """One entry of a pulled page: a valid record, or the raw text and why it cannot be stored."""

    seq: int
    record: ReceivedRecord | None
    raw: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class PageResult:
    """What storing one pulled page did."""

    accepted: int
    duplicates: int
    rejected: int


@dataclass(frozen=True, slots=True)
class PullStatus:
    """One node's pull state, as `/metrics` shows it. Ages are seconds, None when never."""

    node_id: str
    cursor: int
    acked: int
    accepted: int
    duplicates: int
    rejected: int
    errors: int
    owner: str | None
    caught_up_age_s: float | None


class Store(Protocol):
    """What the receiver and the collector need from a database."""

    async def open(self) -> None:
        """Connect and create the tables if they are missing."""
        ...

    async def close(self) -> None:
        """Release the connections (and thread); safe to call twice."""
        ...

    def unstorable(self, record: ReceivedRecord) -> str | None:
        """Why this store cannot keep the record at all, or None."""
        ...

    async def insert(self, node_id: str, records: Sequence[ReceivedRecord]) -> set[str]:
        """Upsert by id in one transaction; return the ids that were new."""
        ...

    async def evaluations(self, after: str, limit: int) -> FeedPage:
        """Evaluations after the cursor in feed order; `ValueError` for a cursor it never gave."""
        ...

    async def counts_by_kind(self) -> dict[str, int]:
        """How many rows of each kind are stored."""
        ...

    async def claim_nodes(self, owner: str, node_ids: Sequence[str], lease_s: float) -> list[NodeLease]:
        """Heartbeat, renew this owner's leases, give up any above its fair share, claim free or
        expired ones up to it; return every node the owner holds now."""
        ...

    async def release_nodes(self, owner: str) -> None:
        """Give up every lease of this owner and its heartbeat (a clean stop)."""
        ...

    async def store_page(
        self, owner: str, node_id: str, records: Sequence[PulledRecord], next_after: int, caught_up: bool
    ) -> PageResult:
        """Store a pulled page and move the node's cursor in one transaction, only while `owner`
        holds the lease (`LeaseLostError` otherwise)."""
        ...

    async def note_acked(self, owner: str, node_id: str, upto: int) -> None:
        """Record that the node confirmed the ack up to `upto`."""
        ...

    async def note_error(self, node_id: str) -> None:
        """Count a failed pull of this node."""
        ...

    async def pull_status(self) -> list[PullStatus]:
        """Every node's pull state."""
        ...


def check_table(table: str) -> str:
    """The table name if it is a safe lower-case SQL name, else `ValueError`."""
    if not _TABLE_NAME.fullmatch(table):
        raise ValueError(f"table {table!r} must be a lower-case SQL name: a-z 0-9 _, up to 48")
    return table


def utc_now_text() -> str:
    """Now as a §1 timestamp."""
    return format_timestamp(datetime.now(UTC))


def jsonb_problem(data_json: str) -> str | None:
    """Why JSONB would refuse this `data` text (NUL or a lone surrogate in a string), or None.

    Only a text that holds a NUL, a `\\u0000` or a `\\ud…` escape can be refused; the rest is
    answered without decoding it.
    """
    if "\x00" not in data_json and "\\u0000" not in data_json and not _SURROGATE_ESCAPE.search(data_json):
        return None
    try:
        data = json.loads(data_json)
    except ValueError:
        return "data is not valid JSON"
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
