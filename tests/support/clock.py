"""Clocks tests move instead of waiting: a hub process's wall clock, and the hub's session timers.

`faketime_env`: a hub process whose wall clock the test moves (libfaketime, driven by a file of
offsets). Only the wall clock moves; its monotonic clock stays real (timeouts and dedup windows run
on it).

`FakeClock`: a `hub.clock.Clock` for an in-process hub's evaluation sessions (their expiry, and the
windows kept for late ratings, free ratings and identified citizens), moved by `advance`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime_env(offset_file: Path, offset: str = "+0") -> dict[str, str]:
    """The environment for a process whose wall clock is shifted by what `offset_file` says
    (`+0`, `-1h`, `+2d`; rewritten by the test as it goes); fails if libfaketime is missing
    (scripts/bootstrap installs the Debian package faketime)."""
    if not LIBFAKETIME.exists():
        raise AssertionError(f"libfaketime is missing ({LIBFAKETIME}): scripts/bootstrap installs faketime")
    offset_file.write_text(offset + "\n")
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@dataclass(order=True, slots=True)
class FakeTimer:
    """A callback `FakeClock.advance` runs once its time has come, unless cancelled first."""

    due: float
    sequence: int
    callback: Callable[[], object] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    ran: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """Never run it (nothing happens once it has run)."""
        self.cancelled = True


class FakeClock:
    """Monotonic time that stands still until the test moves it, and timers on that time.

    `advance(seconds)` runs the timers that come due on the way, in the order of their due time
    (then of scheduling), each with `monotonic()` at its due time, as the event loop would; a
    callback that raises stops `advance` there and the exception reaches the test. `now` may be
    set to place the clock (timers it passes run at the next `advance`, which may be `advance(0)`).
    """

    def __init__(self, start: float = 1000.0) -> None:
        """`start`: the first reading (an arbitrary origin, as `time.monotonic`'s is)."""
        self.now = start
        self._timers: list[FakeTimer] = []
        self._sequence = itertools.count()

    def monotonic(self) -> float:
        """The time the test has moved the clock to."""
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        """Schedule `callback` `delay` seconds from now (a negative delay is now)."""
        timer = FakeTimer(self.now + max(delay, 0.0), next(self._sequence), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, running every timer due by then (those scheduled meanwhile too)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock never goes back ({seconds} s)")
        until = self.now + seconds
        while self._timers and self._timers[0].due <= until:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, timer.due)
            timer.ran = True
            timer.callback()
        self.now = until

    @property
    def pending(self) -> list[float]:
        """The due times of the timers still to run, earliest first."""
        return sorted(t.due for t in self._timers if not t.cancelled)
