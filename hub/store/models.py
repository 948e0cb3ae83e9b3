"""SQLModel mirrors of the outbox tables, for the read-side queries (status, dead letters, CLI).

The schema itself is created by the versioned SQL files in hub/schema; a test keeps these in step.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class RecordRow(SQLModel, table=True):
    """A row of `records`."""

    __tablename__ = "records"

    seq: int | None = Field(default=None, primary_key=True)
    id: str = Field(unique=True)
    kind: str
    priority: int
    created_at: str
    device_id: str | None = None
    case_no: str | None = None
    body: str
    sealed: str | None = None
    state: int = 0
    delivered_at: str | None = None
    delivered_via: str | None = None


class DedupRow(SQLModel, table=True):
    """A row of `dedup`: one device message already stored."""

    __tablename__ = "dedup"

    device_id: str = Field(primary_key=True)
    msg_id: str = Field(primary_key=True)
    record_id: str
    expires_at: float | None = None
    created_at: float
    expires_mono: float | None = None
    boot_id: str | None = None


class DeadLetterRow(SQLModel, table=True):
    """A row of `dead_letters`: a record the platform rejected, with its reason."""

    __tablename__ = "dead_letters"

    seq: int = Field(primary_key=True)
    record_id: str
    kind: str
    reason: str
    failed_at: str


class KvRow(SQLModel, table=True):
    """A row of `kv`: small durable state (sync cursor, store events)."""

    __tablename__ = "kv"

    key: str = Field(primary_key=True)
    value: str
