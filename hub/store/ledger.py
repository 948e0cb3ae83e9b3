"""The case ledger (CONTRACTS §15): what the 一次一评 rule remembers of each case, durably.

One row per (case number, channel) in the outbox file (`migrations/004_case_ledger.sql`): the levels
of the first two ratings that counted, and when the case was first and last counted. The outbox's one
write path reads the rows of a run's cases once, hands each rating the levels counted before it, and
writes the changed rows in the same transaction as the ratings, so that two ratings of one case
committed together are judged in turn and a rating never counts without being stored. Record
retention and quota shedding delete records, never these rows; only `prune_case_ledger` does, by the
age of a case's last counted rating (`national.case_history_days`). Keys are case numbers and
channels, never anything about the citizen.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CaseKey", "CaseLedger", "prune_case_ledger"]

CaseKey = tuple[str, str]
"""(case_no, channel): 一次一评 counts one evaluation per case and channel (§6a)."""

_SELECT = (
    "SELECT l.case_no, l.channel, l.first_level, l.second_level, l.first_at, l.last_at"
    " FROM json_each(?) AS k JOIN case_ledger AS l"
    " ON l.case_no = json_extract(k.value, '$[0]') AND l.channel = json_extract(k.value, '$[1]')"
)
_UPSERT = (
    "INSERT INTO case_ledger (case_no, channel, first_level, second_level, first_at, last_at)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (case_no, channel) DO UPDATE SET"
    " second_level = excluded.second_level, last_at = excluded.last_at"
)


@dataclass(slots=True)
class _Entry:
    """One case and channel: the levels of its first two counted ratings, and when it was counted."""

    first_level: int
    second_level: int | None
    first_at: str
    last_at: str

    @property
    def levels(self) -> tuple[int, ...]:
        """The counted levels, oldest first."""
        return (self.first_level,) if self.second_level is None else (self.first_level, self.second_level)


class CaseLedger:
    """The ledger rows of one run's cases: read once, updated as each rating is judged, written once."""

    def __init__(self, conn: sqlite3.Connection, keys: Iterable[CaseKey]) -> None:
        """Read the rows of `keys` inside the writer's transaction."""
        wanted = [list(key) for key in keys]
        self._entries: dict[CaseKey, _Entry] = {}
        self._changed: set[CaseKey] = set()
        if wanted:
            for case_no, channel, first, second, first_at, last_at in conn.execute(
                _SELECT, (json.dumps(wanted, ensure_ascii=False),)
            ):
                self._entries[(case_no, channel)] = _Entry(int(first), second, first_at, last_at)

    def levels(self, key: CaseKey) -> tuple[int, ...]:
        """The levels of the ratings of this case and channel that counted so far, oldest first."""
        entry = self._entries.get(key)
        return () if entry is None else entry.levels

    def count(self, key: CaseKey, level: int, at: str) -> None:
        """A rating of this case and channel counted (at `at`, RFC 3339 UTC): remember it.

        Only the first two levels are kept (一次一评 allows no more); a later one only moves `last_at`.
        """
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(level, None, at, at)
        else:
            if entry.second_level is None:
                entry.second_level = level
            entry.last_at = max(entry.last_at, at)
        self._changed.add(key)

    def write(self, conn: sqlite3.Connection) -> None:
        """Write the rows that changed, in the caller's transaction."""
        if not self._changed:
            return
        rows = []
        for key in self._changed:
            entry = self._entries[key]
            rows.append((*key, entry.first_level, entry.second_level, entry.first_at, entry.last_at))
        conn.executemany(_UPSERT, rows)
        self._changed.clear()


def prune_case_ledger(conn: sqlite3.Connection, cutoff: str) -> int:
    """Delete the cases whose last counted rating is older than `cutoff` (RFC 3339 UTC); how many."""
    return int(conn.execute("DELETE FROM case_ledger WHERE last_at < ?", (cutoff,)).rowcount)
