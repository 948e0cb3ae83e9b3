"""Satisfaction figures (CONTRACTS §14) from the daily tallies: by window, staff, item, channel or day.

The tallies are written with each rating and follow-up step (`hub.store.hall_books`), so a report
costs one grouped query over at most 400 days × keys, whatever the outbox holds or has pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final, get_args
from zoneinfo import ZoneInfo

from hub.store.hall_books import KEEP_DAYS, By, HallBooks, TallyRow
from hub.store.outbox import Outbox

BY_VALUES: Final = get_args(By)
MAX_RANGE_DAYS: Final = KEEP_DAYS


class StatsRequestError(ValueError):
    """A stats request that cannot be answered; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class Period:
    """A named range of local dates, inclusive."""

    name: str
    first: date
    last: date


def periods(today: date) -> list[Period]:
    """Today, this week (from Monday), this month and this quarter, each up to today."""
    quarter_month = 3 * ((today.month - 1) // 3) + 1
    return [
        Period("today", today, today),
        Period("week", today - timedelta(days=today.weekday()), today),
        Period("month", today.replace(day=1), today),
        Period("quarter", today.replace(month=quarter_month, day=1), today),
    ]


def parse_range(first: str | None, last: str | None, by: str | None) -> tuple[date, date, By]:
    """Check `from`, `to` and `by` of a request; StatsRequestError naming the parameter."""
    if by is None:
        by = "window"
    if by not in BY_VALUES:
        raise StatsRequestError(f"by: expected one of {', '.join(BY_VALUES)}, got {by!r}")
    dates = []
    for name, text in (("from", first), ("to", last)):
        if text is None:
            raise StatsRequestError(f"{name}: required, a date YYYY-MM-DD")
        try:
            if len(text) != 10:
                raise ValueError(text)
            dates.append(date.fromisoformat(text))
        except ValueError:
            raise StatsRequestError(f"{name}: expected a date YYYY-MM-DD, got {text[:40]!r}") from None
    if dates[1] < dates[0]:
        raise StatsRequestError(f"to: {dates[1]} is before from {dates[0]}")
    if (dates[1] - dates[0]).days + 1 > MAX_RANGE_DAYS:
        raise StatsRequestError(f"to: at most {MAX_RANGE_DAYS} days from `from`")
    return dates[0], dates[1], by  # type: ignore[return-value]


def _figures(row: TallyRow, bad_level: int) -> dict[str, Any]:
    total = sum(row.levels)
    good = sum(row.levels[2:])
    return {
        "total": total,
        "levels": {str(level): count for level, count in enumerate(row.levels, start=1)},
        "good_rate": round(good / total, 4) if total else None,
        "bad": sum(row.levels[:bad_level]),
        "callbacks": row.callbacks,
        "callbacks_on_time": row.callbacks_on_time,
        "rectified": row.rectified,
        "rectified_on_time": row.rectified_on_time,
        "excluded": row.excluded,
    }


def _sum(rows: Sequence[TallyRow]) -> TallyRow:
    levels = tuple(sum(row.levels[i] for row in rows) for i in range(5))
    return TallyRow(
        None,
        (levels[0], levels[1], levels[2], levels[3], levels[4]),
        sum(r.excluded for r in rows),
        sum(r.callbacks for r in rows),
        sum(r.callbacks_on_time for r in rows),
        sum(r.rectified for r in rows),
        sum(r.rectified_on_time for r in rows),
    )


class SatisfactionStats:
    """§14 reports for one node."""

    def __init__(self, outbox: Outbox, timezone: str, bad_level: int) -> None:
        self.outbox = outbox
        self.timezone = ZoneInfo(timezone)
        self.bad_level = bad_level

    def today(self, now: datetime | None = None) -> date:
        """Today in the node's time zone."""
        return (now or datetime.now(self.timezone)).astimezone(self.timezone).date()

    async def report(self, first: date, last: date, by: By) -> dict[str, Any]:
        """`{"from", "to", "by", "rows": [...], "total": {...}}` as §14 answers."""
        rows = await self.outbox.read(
            lambda conn: HallBooks.tallies(conn, first.isoformat(), last.isoformat(), by)
        )
        total_rows = (
            rows
            if by in ("channel", "day")
            else await self.outbox.read(
                lambda conn: HallBooks.tallies(conn, first.isoformat(), last.isoformat(), "channel")
            )
        )
        return {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "by": by,
            "rows": [{"key": row.key, **_figures(row, self.bad_level)} for row in rows],
            "total": _figures(_sum(total_rows), self.bad_level),
        }

    async def by_periods(self, by: By, today: date | None = None) -> dict[str, dict[str, Any]]:
        """Reports for today, this week, this month and this quarter."""
        day = today or self.today()
        return {period.name: await self.report(period.first, period.last, by) for period in periods(day)}


__all__ = ["BY_VALUES", "Period", "SatisfactionStats", "StatsRequestError", "parse_range", "periods"]
