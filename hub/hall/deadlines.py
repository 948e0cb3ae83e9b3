"""When a bad review must be called back and put right (CONTRACTS §11), in the node's time zone.

The callback is due `callback_within_min` minutes after the bad review. Rectification is due
`rectify_within_days` working days after it, at the same local time of day: a working day is Monday
to Friday in the node's time zone and not one of `holidays`. A review given on a day off counts from
the start of the next working day (with 3 days, a Saturday review is due at Thursday 00:00).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

SATURDAY = 5
MAX_STEPS = 3 * 366


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The §11 deadline rules of one node."""

    timezone: ZoneInfo
    callback_within: timedelta
    rectify_working_days: int
    holidays: frozenset[date]

    @classmethod
    def from_config(
        cls, timezone: str, callback_within_min: int, rectify_within_days: int, holidays: Iterable[str]
    ) -> Deadlines:
        """From `[followup]` and `national.timezone` (both validated at load)."""
        return cls(
            ZoneInfo(timezone),
            timedelta(minutes=callback_within_min),
            rectify_within_days,
            frozenset(date.fromisoformat(day) for day in holidays),
        )

    def is_working_day(self, day: date) -> bool:
        """Monday to Friday and not a listed holiday."""
        return day.weekday() < SATURDAY and day not in self.holidays

    def callback_due(self, raised_at: datetime) -> datetime:
        """When the callback of a bad review raised at `raised_at` is due (UTC)."""
        return (raised_at + self.callback_within).astimezone(UTC)

    def rectify_due(self, raised_at: datetime) -> datetime:
        """When rectification is due: `rectify_within_days` working days later, same local time."""
        local = raised_at.astimezone(self.timezone)
        day, from_midnight = self._rectify_day(local.date())
        clock = time(0, 0) if from_midnight else local.timetz().replace(tzinfo=None)
        return datetime.combine(day, clock, tzinfo=self.timezone).astimezone(UTC)

    @functools.lru_cache(maxsize=64)  # noqa: B019 (a frozen, hashable rule set; a few live per hub)
    def _rectify_day(self, start: date) -> tuple[date, bool]:
        """The day rectification is due for a review given on `start`, and whether it counts from
        midnight (a review on a day off). Once per day of reviews: every bad review asks."""
        day = start
        from_midnight = not self.is_working_day(day)
        # Bounded: even a year of listed holidays cannot make these loops run more than ~1,100 steps.
        steps = 0
        while not self.is_working_day(day) and steps < MAX_STEPS:
            day += timedelta(days=1)
            steps += 1
        remaining = self.rectify_working_days
        while remaining > 0 and steps < MAX_STEPS:
            day += timedelta(days=1)
            steps += 1
            if self.is_working_day(day):
                remaining -= 1
        return day, from_midnight

    def local_day(self, moment: datetime) -> str:
        """The date of `moment` in the node's time zone, `YYYY-MM-DD`."""
        return moment.astimezone(self.timezone).date().isoformat()


__all__ = ["Deadlines"]
