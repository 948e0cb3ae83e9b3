"""The simulators' bounded history lists."""

from __future__ import annotations

from drivers.history import HISTORY_KEPT, remember


def test_history_keeps_the_newest_entries_and_stays_a_list() -> None:
    history: list[int] = []
    for n in range(5 * HISTORY_KEPT):
        remember(history, n)
        assert len(history) <= 2 * HISTORY_KEPT
    assert isinstance(history, list)
    assert history[-1] == 5 * HISTORY_KEPT - 1
    assert history == list(range(history[0], 5 * HISTORY_KEPT)), "in order, with no gap"
    assert len(history) >= HISTORY_KEPT
