"""The outbox: the one place that decides "stored"."""

from hub.store.outbox import (
    Duplicate,
    Outbox,
    OutboxStats,
    Rejected,
    Stored,
    StoreResult,
    StoreUnavailable,
)

__all__ = [
    "Duplicate",
    "Outbox",
    "OutboxStats",
    "Rejected",
    "StoreResult",
    "StoreUnavailable",
    "Stored",
]
