"""RepeatFilter (serial) and PresenceTracker (camera), driven by a fake clock."""

from __future__ import annotations

import pytest

from drivers.qr.dedupe import PresenceTracker, RepeatFilter


def test_repeat_within_the_window_is_suppressed() -> None:
    repeats = RepeatFilter(3.0)
    assert repeats.accept("A", 100.0)
    assert not repeats.accept("A", 101.0)
    assert not repeats.accept("A", 102.9)
    assert repeats.accept("B", 102.9)
    assert repeats.accept("A", 103.0)
    assert not repeats.accept("A", 103.5)


def test_window_runs_from_the_report_not_from_the_last_repeat() -> None:
    repeats = RepeatFilter(3.0)
    assert repeats.accept("A", 0.0)
    assert not repeats.accept("A", 2.0)
    assert not repeats.accept("A", 2.9)
    assert repeats.accept("A", 3.1)


def test_zero_window_reports_everything() -> None:
    repeats = RepeatFilter(0)
    assert all(repeats.accept("A", float(t)) for t in range(3))


def test_repeat_filter_memory_is_bounded() -> None:
    repeats = RepeatFilter(1.0)
    for i in range(1000):
        repeats.accept(f"code-{i}", i * 0.01)
    assert len(repeats._accepted_at) <= 101


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        RepeatFilter(-1)


def test_code_in_view_is_reported_when_it_appears() -> None:
    tracker = PresenceTracker(gone_frames=3)
    assert tracker.update(["A"], 0.0) == ["A"]
    assert tracker.update(["A", "B"], 0.2) == ["B"]
    assert tracker.update(["B", "A"], 0.4) == []


def test_short_miss_keeps_the_code_long_absence_forgets_it() -> None:
    tracker = PresenceTracker(gone_frames=3)
    tracker.update(["A"], 0.0)
    assert tracker.update([], 0.2) == []
    assert tracker.update([], 0.4) == []
    assert tracker.update(["A"], 0.6) == []  # missing from 2 frames: same sighting
    for t in (0.8, 1.0, 1.2):
        tracker.update([], t)
    assert tracker.update(["A"], 1.4) == ["A"]  # missing from 3 frames: a new sighting


def test_time_limit_forgets_a_code_even_without_frames() -> None:
    tracker = PresenceTracker(gone_frames=100, gone_s=2.0)
    tracker.update(["A"], 0.0)
    assert tracker.update(["A"], 1.0) == []
    assert tracker.update(["A"], 3.5) == ["A"]  # e.g. the camera was offline in between


def test_duplicates_within_one_frame_count_once() -> None:
    tracker = PresenceTracker()
    assert tracker.update(["A", "A", "B"], 0.0) == ["A", "B"]


def test_clear_forgets_everything() -> None:
    tracker = PresenceTracker()
    tracker.update(["A"], 0.0)
    tracker.clear()
    assert tracker.update(["A"], 0.1) == ["A"]


@pytest.mark.parametrize(
    ("options", "message"), [({"gone_frames": 0}, "gone_frames"), ({"gone_s": 0.0}, "gone_s")]
)
def test_bad_tracker_settings(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PresenceTracker(**options)  # type: ignore[arg-type]
