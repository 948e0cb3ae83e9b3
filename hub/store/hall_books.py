"""The hall's books in the outbox file: each bad review's follow-up (§11) and the daily tallies (§14).

`HallBooks.on_store` is a store hook: it runs in the writer's transaction right after records are
inserted, so a rating and its tally, or a follow-up step and its state, are committed together or
not at all (a `kill -9` between the commit and the HTTP answer leaves a step stored exactly once).
Both tables outlive the records: delivered records go after `outbox.retention_days`, these after
`KEEP_DAYS`. Every statement on them is here (hub/store owns the file's SQL).
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from contract.records import Kind, Record, format_utc, parse_rfc3339

KEEP_DAYS: Final = 400
DIMENSIONS: Final = ("window", "staff", "item", "channel")
"""What the tallies are kept by; `day` is derived from the channel rows (every rating has one)."""
EXCLUDING_FLAGS: Final = frozenset({"suspect", "repeat"})
OVERDUE_TYPES: Final = {"callback_overdue": "callback_overdue", "rectify_overdue": "rectify_overdue"}
By = Literal["window", "staff", "item", "channel", "day"]

Counts = Counter[tuple[str, str, str, str]]
"""Increments of one commit, by (column, day, dimension, key)."""
DueDates = Callable[[datetime], tuple[datetime, datetime]]
LocalDay = Callable[[datetime], str]


@dataclass(frozen=True, slots=True)
class Followup:
    """One bad review's follow-up as stored: who, where, when due, and the steps taken."""

    alert_id: str
    evaluation_id: str
    raised_at: str
    day: str
    window: str | None
    staff_id: str | None
    case_no: str | None
    item_code: str | None
    callback_due: str
    rectify_due: str
    callback: dict[str, Any] | None
    rectify: dict[str, Any] | None
    callback_overdue: bool
    rectify_overdue: bool

    @property
    def closed(self) -> bool:
        """Nothing more is due once the rectify step is taken (substantiated or not)."""
        return self.rectify is not None


@dataclass(frozen=True, slots=True)
class TallyRow:
    """One key's figures over a range of days."""

    key: str | None
    levels: tuple[int, int, int, int, int]
    excluded: int
    callbacks: int
    callbacks_on_time: int
    rectified: int
    rectified_on_time: int


_FOLLOWUP_COLUMNS = (
    "alert_id, evaluation_id, raised_at, day, window, staff_id, case_no, item_code, callback_due,"
    " rectify_due, callback, rectify, callback_overdue, rectify_overdue"
)


def _followup(row: Sequence[Any]) -> Followup:
    (alert_id, evaluation_id, raised_at, day, window, staff_id, case_no, item_code) = row[:8]
    return Followup(
        alert_id,
        evaluation_id,
        raised_at,
        day,
        window,
        staff_id,
        case_no,
        item_code,
        callback_due=row[8],
        rectify_due=row[9],
        callback=json.loads(row[10]) if row[10] else None,
        rectify=json.loads(row[11]) if row[11] else None,
        callback_overdue=bool(row[12]),
        rectify_overdue=bool(row[13]),
    )


class HallBooks:
    """Keeps the follow-up rows and the tallies in step with the records as they are stored."""

    def __init__(self, *, due_dates: DueDates, local_day: LocalDay) -> None:
        self.due_dates = due_dates
        self.local_day = local_day
        self._day_of_minute: tuple[str, str] = ("", "")

    def _day_of(self, created_at: str) -> str:
        """The local day of a record's time, computed once per minute of times (the hot path: every
        rating; a minute, not an hour, for zones whose offset is not whole hours)."""
        minute = created_at[:16]
        if self._day_of_minute[0] != minute:
            self._day_of_minute = (minute, self.local_day(parse_rfc3339(created_at)))
        return self._day_of_minute[1]

    # -- the store hook (writer thread, inside the transaction) --------------------------------

    def on_store(self, conn: sqlite3.Connection, records: list[Record]) -> None:
        """Tally each rating, open a follow-up per bad review, and apply steps and overdue alerts."""
        evaluations = {r.id: r for r in records if r.kind is Kind.EVALUATION}
        counts: Counts = Counter()
        for record in records:
            if record.kind is Kind.EVALUATION:
                self._tally_rating(counts, record)
            elif record.kind is Kind.ALERT:
                kind = record.data.get("type")
                if kind == "bad_review":
                    self._open(conn, record, evaluations.get(str(record.data.get("evaluation_id"))))
                elif kind in OVERDUE_TYPES:
                    conn.execute(
                        f"UPDATE followups SET {OVERDUE_TYPES[kind]} = 1 WHERE alert_id = ?",
                        (record.data.get("alert_id"),),
                    )
            elif record.kind is Kind.FOLLOWUP:
                self._step(conn, counts, record)
        _add_counts(conn, counts)

    def _tally_rating(self, counts: Counts, record: Record) -> None:
        data = record.data
        level = data.get("level")
        if not isinstance(level, int) or not 1 <= level <= 5:
            return
        day = self._day_of(record.created_at)
        column = "excluded" if EXCLUDING_FLAGS & set(data.get("flags") or ()) else f"l{level}"
        _bump(
            counts, day, _keys(data.get("window"), data.get("staff_id"), data.get("item_code"), data), column
        )

    def _open(self, conn: sqlite3.Connection, alert: Record, evaluation: Record | None) -> None:
        data = alert.data
        evaluation_id = str(data.get("evaluation_id"))
        if evaluation is not None:
            rated_at, channel = evaluation.created_at, evaluation.data.get("channel")
        else:
            row = conn.execute("SELECT body FROM records WHERE id = ?", (evaluation_id,)).fetchone()
            stored = json.loads(row[0]) if row else {}
            rated_at = stored.get("created_at", alert.created_at)
            channel = stored.get("data", {}).get("channel")
        raised = parse_rfc3339(alert.created_at)
        callback_due, rectify_due = self.due_dates(raised)
        conn.execute(
            "INSERT OR IGNORE INTO followups (alert_id, evaluation_id, raised_at, day, window, staff_id,"
            " case_no, item_code, channel, callback_due, rectify_due) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                alert.id,
                evaluation_id,
                alert.created_at,
                self.local_day(parse_rfc3339(rated_at)),
                data.get("window"),
                data.get("staff_id"),
                data.get("case_no"),
                data.get("item_code"),
                channel,
                format_utc(callback_due),
                format_utc(rectify_due),
            ),
        )

    def _step(self, conn: sqlite3.Connection, counts: Counts, record: Record) -> None:
        data = record.data
        step = data.get("step")
        if step not in ("callback", "rectify"):
            return
        row = conn.execute(
            f"SELECT day, window, staff_id, item_code, channel, {step} FROM followups WHERE alert_id = ?",
            (data.get("alert_id"),),
        ).fetchone()
        if row is None or row[5] is not None:
            return  # not a bad review of this node, or the step was already taken: counted once
        day, window, staff_id, item_code, channel, _taken = row
        conn.execute(
            f"UPDATE followups SET {step} = ?, closed = ? WHERE alert_id = ?",
            (json.dumps(data, ensure_ascii=False), int(step == "rectify"), data.get("alert_id")),
        )
        done = "callbacks" if step == "callback" else "rectified"
        keys = _keys(window, staff_id, item_code, {"channel": channel})
        _bump(counts, day, keys, done)
        if not data.get("late"):
            _bump(counts, day, keys, f"{done}_on_time")

    # -- reads (reader connection) -------------------------------------------------------------

    @staticmethod
    def followup(conn: sqlite3.Connection, alert_id: str) -> Followup | None:
        """One bad review's follow-up, or None."""
        row = conn.execute(
            f"SELECT {_FOLLOWUP_COLUMNS} FROM followups WHERE alert_id = ?", (alert_id,)
        ).fetchone()
        return _followup(row) if row else None

    @staticmethod
    def open_followups(conn: sqlite3.Connection, limit: int) -> list[Followup]:
        """Follow-ups with a step still due, oldest bad review first."""
        rows = conn.execute(
            f"SELECT {_FOLLOWUP_COLUMNS} FROM followups WHERE closed = 0 ORDER BY raised_at LIMIT ?",
            (limit,),
        ).fetchall()
        return [_followup(row) for row in rows]

    @staticmethod
    def overdue(conn: sqlite3.Connection, now: str, limit: int) -> list[Followup]:
        """Open follow-ups past a deadline whose overdue alert is not stored yet."""
        rows = conn.execute(
            f"SELECT {_FOLLOWUP_COLUMNS} FROM followups WHERE closed = 0 AND ("
            " (callback IS NULL AND callback_overdue = 0 AND callback_due <= ?)"
            " OR (rectify IS NULL AND rectify_overdue = 0 AND rectify_due <= ?))"
            " ORDER BY raised_at LIMIT ?",
            (now, now, limit),
        ).fetchall()
        return [_followup(row) for row in rows]

    @staticmethod
    def next_due(conn: sqlite3.Connection) -> str | None:
        """The earliest deadline still to be watched (its overdue alert not stored yet), or None."""
        row = conn.execute(
            "SELECT min(due) FROM ("
            " SELECT min(callback_due) AS due FROM followups"
            "  WHERE closed = 0 AND callback IS NULL AND callback_overdue = 0"
            " UNION ALL SELECT min(rectify_due) FROM followups"
            "  WHERE closed = 0 AND rectify IS NULL AND rectify_overdue = 0)"
        ).fetchone()
        return row[0] if row else None

    @staticmethod
    def tallies(conn: sqlite3.Connection, first_day: str, last_day: str, by: By) -> list[TallyRow]:
        """Figures per key from `first_day` to `last_day` (inclusive, local dates), by one dimension."""
        key = "day" if by == "day" else "key"
        dim = "channel" if by == "day" else by
        rows = conn.execute(
            f"SELECT {key}, sum(l1), sum(l2), sum(l3), sum(l4), sum(l5), sum(excluded), sum(callbacks),"
            " sum(callbacks_on_time), sum(rectified), sum(rectified_on_time)"
            f" FROM tallies WHERE dim = ? AND day BETWEEN ? AND ? GROUP BY {key} ORDER BY {key}",
            (dim, first_day, last_day),
        ).fetchall()
        return [TallyRow(row[0] or None, (row[1], row[2], row[3], row[4], row[5]), *row[6:]) for row in rows]

    # -- upkeep (writer) -----------------------------------------------------------------------

    @staticmethod
    def prune(conn: sqlite3.Connection, before_day: str) -> int:
        """Forget tallies and closed follow-ups of days before `before_day`; the rows removed."""
        removed = conn.execute("DELETE FROM tallies WHERE day < ?", (before_day,)).rowcount
        removed += conn.execute("DELETE FROM followups WHERE closed = 1 AND day < ?", (before_day,)).rowcount
        return removed


def _keys(
    window: object, staff_id: object, item_code: object, data: dict[str, Any]
) -> Iterable[tuple[str, str]]:
    """The (dimension, key) pairs a rating or step counts under; '' stands for none."""
    return (
        ("window", str(window or "")),
        ("staff", str(staff_id or "")),
        ("item", str(item_code or "")),
        ("channel", str(data.get("channel") or "")),
    )


_COLUMNS = frozenset(
    {
        "l1",
        "l2",
        "l3",
        "l4",
        "l5",
        "excluded",
        "callbacks",
        "callbacks_on_time",
        "rectified",
        "rectified_on_time",
    }
)


def _bump(counts: Counts, day: str, keys: Iterable[tuple[str, str]], column: str) -> None:
    """Count one more in `column` of each key's row of `day` (written by `_add_counts`)."""
    assert column in _COLUMNS  # a column name from this module only, never from input
    for dim, key in keys:
        counts[(column, day, dim, key)] += 1


def _add_counts(conn: sqlite3.Connection, counts: Counts) -> None:
    """Add a commit's counts to the tallies: one upsert per row and column touched, however many
    ratings the commit holds (a group commit of hundreds of ratings touches a few dozen rows)."""
    by_column: dict[str, list[tuple[str, str, str, int]]] = {}
    for (column, day, dim, key), n in counts.items():
        by_column.setdefault(column, []).append((day, dim, key, n))
    for column, rows in by_column.items():
        conn.executemany(
            f"INSERT INTO tallies (day, dim, key, {column}) VALUES (?, ?, ?, ?)"
            f" ON CONFLICT (dim, day, key) DO UPDATE SET {column} = {column} + excluded.{column}",
            rows,
        )


__all__ = ["DIMENSIONS", "KEEP_DAYS", "By", "Followup", "HallBooks", "TallyRow"]
