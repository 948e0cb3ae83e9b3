"""Test helpers for the keypad driver: the hub's side of the `EventSink` seam, and polling."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TypeVar

from drivers.base import DeviceEvent, EventSink, Outcome
from drivers.keypad import KeypadLineDriver, KeypadTimings, KeyPressed
from hub.ingest.intake import rating_dedup

E = TypeVar("E", bound=DeviceEvent)

FAST = KeypadTimings(
    ping_interval_s=0.3,
    offline_after_s=1.0,
    ack_timeout_s=0.25,
    command_tries=3,
    reopen_initial_s=0.05,
    reopen_max_s=0.2,
)


class RecordingSink:
    """Records every event and answers submits like the store: first copy STORED, then DUPLICATE.

    `script` holds outcomes to answer first (e.g. FAILED); `gate`, when given, holds every submit
    until it is set, to model a slow commit.
    """

    def __init__(self, script: Iterable[Outcome] = (), gate: asyncio.Event | None = None) -> None:
        self.events: list[DeviceEvent] = []
        self.submits: list[tuple[KeyPressed, Outcome]] = []
        self.script = list(script)
        self.gate = gate
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._stored: set[tuple[str, str]] = set()

    async def submit(self, event: DeviceEvent) -> Outcome:
        assert isinstance(event, KeyPressed)
        self.calls += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.gate is not None:
                await self.gate.wait()
            key = (event.device_id, rating_dedup(event).msg_id)
            if self.script:
                outcome = self.script.pop(0)
            else:
                outcome = Outcome.DUPLICATE if key in self._stored else Outcome.STORED
            if outcome is Outcome.STORED:
                self._stored.add(key)
            self.submits.append((event, outcome))
            return outcome
        finally:
            self.concurrent -= 1

    def notify(self, event: DeviceEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[E], device_id: str | None = None) -> list[E]:
        """The notified events of one type (and device)."""
        return [
            e for e in self.events if isinstance(e, kind) and (device_id is None or e.device_id == device_id)
        ]

    def outcomes(self) -> list[Outcome]:
        return [outcome for _, outcome in self.submits]


async def eventually(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Poll `predicate` every 10 ms until it is true; fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(driver: KeypadLineDriver, sink: EventSink) -> AsyncIterator[asyncio.Task[None]]:
    """Run the driver during the `async with` body, then cancel it; it must not end by itself."""
    task = asyncio.create_task(driver.run(sink))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "driver.run ended by itself"
