"""The clock the hall's timers run on: the monotonic time and one-shot timers.

Parts that wait minutes (an evaluation session's expiry, the windows kept for late ratings) take a
`Clock`, so that tests can move time instead of sleeping through it; the hub runs on SYSTEM_CLOCK.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol


class Timer(Protocol):
    """A scheduled callback that can still be called off (`asyncio.TimerHandle` is one)."""

    def cancel(self) -> None:
        """Never run the callback; does nothing once it has run or was cancelled."""


class Clock(Protocol):
    """Monotonic seconds, and callbacks run after a delay measured on the same time."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never going back (as `time.monotonic`)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run `callback()` once, `delay` seconds from now; cancel the answer to call it off."""


class SystemClock:
    """The real clock: `time.monotonic` and the running event loop's `call_later`."""

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """The running loop's `call_later` (so it must be called from a coroutine or callback)."""
        return asyncio.get_running_loop().call_later(delay, callback)


SYSTEM_CLOCK: Final[Clock] = SystemClock()
"""The clock every part uses unless a test gives it another."""

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "Timer"]
