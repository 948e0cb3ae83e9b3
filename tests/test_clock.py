"""The clocks sessions run on: the system's (really fires, on the loop) and the tests' FakeClock."""

from __future__ import annotations

import asyncio
import time

import pytest

from hub.clock import SYSTEM_CLOCK, Clock, SystemClock
from tests.support.clock import FakeClock


async def test_the_system_clock_fires_on_the_running_loop() -> None:
    fired = asyncio.Event()
    started = SYSTEM_CLOCK.monotonic()
    SYSTEM_CLOCK.call_later(0.01, fired.set)
    async with asyncio.timeout(5):
        await fired.wait()
    assert SYSTEM_CLOCK.monotonic() - started >= 0.01
    assert abs(SYSTEM_CLOCK.monotonic() - time.monotonic()) < 1.0, "time.monotonic's time"


async def test_a_cancelled_system_timer_never_fires() -> None:
    clock: Clock = SystemClock()
    fired: list[str] = []
    clock.call_later(0.01, lambda: fired.append("kept")).cancel()
    clock.call_later(0.02, lambda: fired.append("late"))
    await asyncio.sleep(0.05)
    assert fired == ["late"]


def test_the_system_clock_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        SYSTEM_CLOCK.call_later(0.01, lambda: None)


def test_fake_time_moves_only_when_advanced() -> None:
    clock: Clock = FakeClock(start=50.0)
    assert clock.monotonic() == 50.0
    assert isinstance(clock, FakeClock)
    clock.advance(2.5)
    assert clock.monotonic() == 52.5
    clock.now = 100.0
    assert clock.monotonic() == 100.0
    with pytest.raises(ValueError, match="never goes back"):
        clock.advance(-1)
    assert clock.monotonic() == 100.0


def test_fake_timers_run_when_due_in_due_order_at_their_due_time() -> None:
    clock = FakeClock(start=0.0)
    ran: list[tuple[str, float]] = []

    def note(name: str) -> None:
        ran.append((name, clock.monotonic()))

    clock.call_later(3, lambda: note("c"))
    clock.call_later(1, lambda: note("a1"))
    clock.call_later(1, lambda: note("a2"))  # same due time: in the order they were scheduled
    clock.call_later(2, lambda: note("b"))
    clock.call_later(-5, lambda: note("now"))  # a negative delay is due at once
    assert clock.pending == [0.0, 1.0, 1.0, 2.0, 3.0]
    clock.advance(0.999)
    assert ran == [("now", 0.0)]
    clock.advance(1.001)
    assert ran == [("now", 0.0), ("a1", 1.0), ("a2", 1.0), ("b", 2.0)]
    assert clock.monotonic() == 2.0
    assert clock.pending == [3.0]
    clock.advance(10)
    assert ran[-1] == ("c", 3.0)
    assert clock.monotonic() == 12.0
    assert clock.pending == []


def test_timers_scheduled_by_timers_run_in_the_same_advance_if_due() -> None:
    clock = FakeClock(start=0.0)
    ran: list[tuple[str, float]] = []

    def first() -> None:
        ran.append(("first", clock.monotonic()))
        clock.call_later(2, lambda: ran.append(("second", clock.monotonic())))
        clock.call_later(0, lambda: ran.append(("at once", clock.monotonic())))
        clock.call_later(10, lambda: ran.append(("later", clock.monotonic())))

    clock.call_later(1, first)
    clock.call_later(2.5, lambda: ran.append(("between", clock.monotonic())))
    clock.advance(5)
    assert ran == [("first", 1.0), ("at once", 1.0), ("between", 2.5), ("second", 3.0)]
    assert clock.pending == [11.0]


def test_a_cancelled_fake_timer_never_runs() -> None:
    clock = FakeClock()
    ran: list[str] = []
    kept = clock.call_later(1, lambda: ran.append("kept"))
    dropped = clock.call_later(1, lambda: ran.append("dropped"))
    dropped.cancel()
    assert len(clock.pending) == 1
    clock.advance(1)
    assert ran == ["kept"]
    assert (kept.ran, dropped.ran, dropped.cancelled) == (True, False, True)
    kept.cancel()  # after it ran: nothing happens
    clock.advance(5)
    assert ran == ["kept"]


def test_a_timer_cancelled_by_an_earlier_one_in_the_same_advance_never_runs() -> None:
    clock = FakeClock()
    ran: list[str] = []
    victim = clock.call_later(2, lambda: ran.append("victim"))
    clock.call_later(1, victim.cancel)
    clock.advance(3)
    assert ran == []


def test_a_raising_timer_stops_the_advance_at_its_time() -> None:
    clock = FakeClock(start=0.0)
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    clock.call_later(1, boom)
    clock.call_later(2, lambda: ran.append("after"))
    with pytest.raises(RuntimeError, match="boom"):
        clock.advance(5)
    assert (clock.monotonic(), ran) == (1.0, [])
    clock.advance(0)
    assert ran == []
    clock.advance(1)
    assert ran == ["after"]
