"""The outbox: the one place that decides "stored", and the one owner of its SQLite file."""

from hub.store.outbox import (
    DeadLetter,
    DedupKey,
    Duplicate,
    Outbox,
    OutboxStats,
    PendingRecord,
    RatingCount,
    Rejected,
    Stored,
    StoreResult,
    StoreUnavailable,
    WriteFailed,
    WriterDied,
)
from hub.store.schema import SchemaError

__all__ = [
    "DeadLetter",
    "DedupKey",
    "Duplicate",
    "Outbox",
    "OutboxStats",
    "PendingRecord",
    "RatingCount",
    "Rejected",
    "SchemaError",
    "StoreResult",
    "StoreUnavailable",
    "Stored",
    "WriteFailed",
    "WriterDied",
]
