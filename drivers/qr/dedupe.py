"""Report a code once: a time window for serial scanners, presence tracking for cameras.

Both are pure (time is passed in, from a monotonic clock) and hold a bounded amount of state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class RepeatFilter:
    """Accepts a code, then rejects the same code until `window_s` has passed since it was accepted.

    A citizen who presses the trigger twice, or a scanner in continuous mode, produces one report
    per window. Only codes accepted within the last window are remembered.
    """

    def __init__(self, window_s: float = 3.0) -> None:
        if window_s < 0:
            raise ValueError(f"repeat window must not be negative, not {window_s}")
        self._window_s = window_s
        self._accepted_at: dict[str, float] = {}

    def accept(self, code: str, now: float) -> bool:
        """True if `code` should be reported now (and remember it); False for a repeat."""
        self._prune(now)
        if code in self._accepted_at:
            return False
        if self._window_s > 0:
            self._accepted_at[code] = now
        return True

    def _prune(self, now: float) -> None:
        """Forget codes whose window has ended, so memory stays bounded."""
        expired = [c for c, at in self._accepted_at.items() if now - at >= self._window_s]
        for code in expired:
            del self._accepted_at[code]


@dataclass(slots=True)
class _Sighting:
    last_seen: float
    misses: int = 0


class PresenceTracker:
    """Tracks which codes are in a camera's view; reports a code when it comes into view.

    A code stays "in view" while it is decoded on consecutive frames. It is forgotten (and would be
    reported again) once it was missing from `gone_frames` frames in a row, or, if `gone_s` is set,
    once it has not been seen for `gone_s` seconds, whichever comes first. A single frame where the
    decoder misses a code held still therefore does not produce a second report.
    """

    def __init__(self, gone_frames: int = 10, gone_s: float | None = None) -> None:
        if gone_frames < 1:
            raise ValueError(f"gone_frames must be at least 1, not {gone_frames}")
        if gone_s is not None and gone_s <= 0:
            raise ValueError(f"gone_s must be positive, not {gone_s}")
        self._gone_frames = gone_frames
        self._gone_s = gone_s
        self._in_view: dict[str, _Sighting] = {}

    def update(self, codes: Iterable[str], now: float) -> list[str]:
        """Record one processed frame's codes; return those that just came into view, in order."""
        seen = list(dict.fromkeys(codes))
        appeared: list[str] = []
        for code in seen:
            sighting = self._in_view.get(code)
            if sighting is None or self._gone(sighting, now):
                appeared.append(code)
            self._in_view[code] = _Sighting(last_seen=now)
        visible = set(seen)
        for code, sighting in list(self._in_view.items()):
            if code in visible:
                continue
            sighting.misses += 1
            if self._gone(sighting, now):
                del self._in_view[code]
        return appeared

    def clear(self) -> None:
        """Forget every code (nothing is in view)."""
        self._in_view.clear()

    def _gone(self, sighting: _Sighting, now: float) -> bool:
        if sighting.misses >= self._gone_frames:
            return True
        return self._gone_s is not None and now - sighting.last_seen >= self._gone_s
