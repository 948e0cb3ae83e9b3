"""The bad-review follow-up loop (CONTRACTS §11): call the citizen back, put right what was found.

Every step is a `followup` record; the state of each bad review (`hub.store.hall_books`) changes in
the same transaction as its record, so the state is whatever was committed, across restarts and
`kill -9`. Steps are taken one at a time (a lock), which makes a repeat of a completed step answer
the same state and never store a second record. Deadlines are watched by `run`: when one passes
with its step not taken, an `alert` record `callback_overdue` / `rectify_overdue` is stored (alerts
go ahead of any backlog), once per bad review, also for deadlines that passed while the hub was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from contract.http import CallbackRequest, RectifyRequest
from contract.records import Kind, Record, format_utc, parse_rfc3339
from hub.hall.deadlines import Deadlines
from hub.store.hall_books import KEEP_DAYS, Followup, HallBooks
from hub.store.outbox import Outbox, Stored, StoreUnavailable

log = logging.getLogger(__name__)

MAX_LISTED: Final = 200
"""Open follow-ups listed on /v1/status and the status page (the oldest first)."""
OVERDUE_BATCH: Final = 500
MAX_WAIT_S: Final = 60.0
"""The longest the watcher sleeps: a clock step or a late commit is noticed within a minute."""

Clock = Callable[[], datetime]


def utc_clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StepAnswer:
    """The HTTP status and body of a step request."""

    status: int
    body: dict[str, Any]


def state_of(followup: Followup) -> dict[str, Any]:
    """The follow-up state a step answers with and /v1/status lists (§11)."""
    if followup.callback is None:
        step, due_at = "callback", followup.callback_due
    elif followup.rectify is None:
        step, due_at = "rectify", followup.rectify_due
    else:
        step, due_at = "closed", None
    return {
        "alert_id": followup.alert_id,
        "evaluation_id": followup.evaluation_id,
        "window": followup.window,
        "staff_id": followup.staff_id,
        "case_no": followup.case_no,
        "raised_at": followup.raised_at,
        "step": step,
        "due_at": due_at,
        "callback_due": followup.callback_due,
        "rectify_due": followup.rectify_due,
        "callback": followup.callback,
        "rectify": followup.rectify,
        "overdue": followup.callback_overdue or followup.rectify_overdue,
    }


def hall_books(deadlines: Deadlines) -> HallBooks:
    """The outbox's store hook that keeps the follow-up rows and the tallies with the records."""
    return HallBooks(
        due_dates=lambda raised: (deadlines.callback_due(raised), deadlines.rectify_due(raised)),
        local_day=deadlines.local_day,
    )


class FollowupBook:
    """Takes the steps of §11 and raises the overdue alerts."""

    def __init__(
        self, outbox: Outbox, deadlines: Deadlines, *, node_id: str, hall_code: str, clock: Clock = utc_clock
    ) -> None:
        self.outbox = outbox
        self.deadlines = deadlines
        self.node_id = node_id
        self.hall_code = hall_code
        self.clock = clock
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def on_commit(self, records: list[Record]) -> None:
        """Outbox listener: a new bad review has deadlines to watch."""
        if any(r.kind is Kind.ALERT and r.data.get("type") == "bad_review" for r in records):
            self._wake.set()

    async def state(self, alert_id: str) -> dict[str, Any] | None:
        """One bad review's follow-up state, or None."""
        followup = await self.outbox.read(lambda conn: HallBooks.followup(conn, alert_id))
        return state_of(followup) if followup is not None else None

    async def open_states(self) -> list[dict[str, Any]]:
        """The open follow-ups, oldest first (at most MAX_LISTED)."""
        followups = await self.outbox.read(lambda conn: HallBooks.open_followups(conn, MAX_LISTED))
        return [state_of(followup) for followup in followups]

    async def callback(self, alert_id: str, request: CallbackRequest) -> StepAnswer:
        """`POST /v1/alerts/{id}/callback`."""
        return await self._take(alert_id, "callback", request.by, request.note, {"outcome": request.outcome})

    async def rectify(self, alert_id: str, request: RectifyRequest) -> StepAnswer:
        """`POST /v1/alerts/{id}/rectify`."""
        return await self._take(
            alert_id, "rectify", request.by, request.note, {"substantiated": request.substantiated}
        )

    async def _take(
        self, alert_id: str, step: str, by: str, note: str | None, details: dict[str, Any]
    ) -> StepAnswer:
        async with self._lock:
            followup = await self.outbox.read(lambda conn: HallBooks.followup(conn, alert_id))
            if followup is None:
                return StepAnswer(404, {"error": f"no bad-review alert with id {alert_id}"})
            taken = followup.callback if step == "callback" else followup.rectify
            if taken is not None:
                return StepAnswer(200, state_of(followup))
            if step == "rectify" and followup.callback is None:
                return StepAnswer(
                    409,
                    {
                        "error": "callback: the citizen must be called back before rectify",
                        "missing": "callback",
                    },
                )
            now = self.clock()
            due = followup.callback_due if step == "callback" else followup.rectify_due
            data: dict[str, Any] = {
                "alert_id": alert_id,
                "evaluation_id": followup.evaluation_id,
                "step": step,
                "by": by,
                **details,
                "late": now > parse_rfc3339(due),
                "window": followup.window,
                "staff_id": followup.staff_id,
                "case_no": followup.case_no,
                "node_id": self.node_id,
                "hall_code": self.hall_code,
            }
            if note is not None:
                data["note"] = note
            result = await self.outbox.store(
                [Record(kind=Kind.FOLLOWUP, data=data, created_at=format_utc(now))]
            )
            if not isinstance(result, Stored):
                return StepAnswer(503, {"error": f"the step was not stored: {result}"})
            log.info(
                "followup: %s of alert %s by %s%s", step, alert_id, by, " (late)" if data["late"] else ""
            )
            stored = await self.outbox.read(lambda conn: HallBooks.followup(conn, alert_id))
            assert stored is not None
            return StepAnswer(200, state_of(stored))

    async def raise_overdue(self) -> int:
        """Store an overdue alert for every deadline passed with its step not taken; the number stored."""
        now = format_utc(self.clock())
        raised = 0
        async with self._lock:
            followups = await self.outbox.read(lambda conn: HallBooks.overdue(conn, now, OVERDUE_BATCH))
            records = []
            for followup in followups:
                if (
                    followup.callback is None
                    and not followup.callback_overdue
                    and followup.callback_due <= now
                ):
                    records.append(self._overdue("callback_overdue", followup, followup.callback_due))
                if followup.rectify is None and not followup.rectify_overdue and followup.rectify_due <= now:
                    records.append(self._overdue("rectify_overdue", followup, followup.rectify_due))
            if records:
                await self.outbox.store(records)
                raised = len(records)
                log.warning(
                    "followup: %d deadline(s) passed without their step; overdue alerts raised", raised
                )
        return raised

    def _overdue(self, kind: str, followup: Followup, due_at: str) -> Record:
        return Record(
            kind=Kind.ALERT,
            data={
                "type": kind,
                "alert_id": followup.alert_id,
                "evaluation_id": followup.evaluation_id,
                "due_at": due_at,
                "window": followup.window,
                "staff_id": followup.staff_id,
                "case_no": followup.case_no,
                "node_id": self.node_id,
            },
        )

    async def prune(self, keep_days: int = KEEP_DAYS) -> int:
        """Forget the tallies and closed follow-ups of local days more than `keep_days` ago."""
        today = self.clock().astimezone(self.deadlines.timezone).date()
        cutoff = (today - timedelta(days=keep_days)).isoformat()
        removed: int = await self.outbox.write(lambda conn: HallBooks.prune(conn, cutoff))
        return removed

    async def run(self) -> None:
        """Watch the deadlines until cancelled: raise what is overdue, then sleep until the next one."""
        while True:
            self._wake.clear()
            wait_s = MAX_WAIT_S
            with contextlib.suppress(StoreUnavailable):
                await self.raise_overdue()
                next_due = await self.outbox.read(HallBooks.next_due)
                if next_due is not None:
                    wait_s = min(
                        MAX_WAIT_S, max(0.05, (parse_rfc3339(next_due) - self.clock()).total_seconds())
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)


__all__ = ["FollowupBook", "StepAnswer", "hall_books", "state_of", "utc_clock"]
