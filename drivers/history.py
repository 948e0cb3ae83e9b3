"""Bounded history lists for the device simulators: tests read the last few entries, a demo runs for hours."""

from __future__ import annotations

from typing import TypeVar

HISTORY_KEPT = 100
"""Entries kept per list (up to twice as many between trims). Tests read the last few; 1,000 held
~1.3 MB of acks per simulated device and grew a demo's process for over an hour before levelling."""

_T = TypeVar("_T")


def remember(history: list[_T], item: _T) -> None:
    """Append `item`; once the list holds twice HISTORY_KEPT entries, drop all but the newest HISTORY_KEPT.

    Dropping half at a time keeps an append O(1) amortised, and the history a plain list.
    """
    history.append(item)
    if len(history) > 2 * HISTORY_KEPT:
        del history[:-HISTORY_KEPT]
