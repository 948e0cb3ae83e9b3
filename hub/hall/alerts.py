"""Open bad-review alerts: listed on /v1/status until someone acknowledges them.

An alert is open from the moment its record is committed until `POST /v1/alerts/{id}/ack`; the
acknowledgement is kept in the outbox so it survives restarts. Only the newest `MAX_OPEN` open alerts
are listed (and held in memory): a hall that never acknowledges would otherwise grow the list, and
the hub, with every bad review. An older alert can still be acknowledged by its id.
"""

from __future__ import annotations

import json
from typing import Any

from contract.records import Kind, Record, utc_now
from hub.store.outbox import Outbox

OPEN_TYPES = frozenset({"bad_review"})
MAX_OPEN = 500


class AlertBook:
    """The alerts waiting for a person: bad reviews the hall must call back within the hour."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._open: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        """Rebuild the open list from recent alert records and stored acknowledgements."""
        for record in await self.outbox.recent_records("alert", MAX_OPEN):
            if (
                record["data"].get("type") in OPEN_TYPES
                and await self.outbox.kv_get(_ack_key(record["id"])) is None
            ):
                self._open[record["id"]] = record

    def on_commit(self, records: list[Record]) -> None:
        """Outbox listener: every new bad-review alert is open; past MAX_OPEN the oldest is unlisted."""
        for record in records:
            if record.kind is Kind.ALERT and record.data.get("type") in OPEN_TYPES:
                self._open[record.id] = record.to_wire()
                if len(self._open) > MAX_OPEN:
                    del self._open[next(iter(self._open))]  # insertion order is commit order

    def open_alerts(self) -> list[dict[str, Any]]:
        """Open alerts, oldest first."""
        return sorted(self._open.values(), key=lambda r: r["seq"])

    async def acknowledge(self, alert_id: str, by: str | None) -> dict[str, Any] | None:
        """Close an alert; None if no such alert; idempotent for one already closed."""
        record = self._open.get(alert_id)
        existing = await self.outbox.kv_get(_ack_key(alert_id))
        if record is None and existing is None:
            stored = await self.outbox.get_record(alert_id)
            if stored is None or stored["kind"] != "alert":
                return None
        if existing is not None:
            return json.loads(existing)  # type: ignore[no-any-return]
        ack = {"id": alert_id, "acknowledged_at": utc_now(), "by": by}
        await self.outbox.kv_set(_ack_key(alert_id), json.dumps(ack, ensure_ascii=False))
        self._open.pop(alert_id, None)
        return ack


def _ack_key(alert_id: str) -> str:
    return f"alert_ack:{alert_id}"
