"""A small in-test EventSink: records what a driver reports and lets a test wait for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from drivers.base import DeviceEvent, DeviceOffline, DeviceOnline, FrameDropped, Outcome
from drivers.qr.events import CodeScanned


class RecordingSink:
    """Stands in for the hub: answers every submit with STORED and keeps every event in order."""

    def __init__(self) -> None:
        self.events: list[DeviceEvent] = []
        self.submitted: list[DeviceEvent] = []
        self._changed = asyncio.Event()

    def submit(self, event: DeviceEvent) -> Awaitable[Outcome]:
        self.submitted.append(event)
        self._record(event)
        return self._stored()

    def notify(self, event: DeviceEvent) -> None:
        self._record(event)

    async def _stored(self) -> Outcome:
        return Outcome.STORED

    def _record(self, event: DeviceEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[DeviceEvent]) -> list[DeviceEvent]:
        return [e for e in self.events if type(e) is kind]

    @property
    def codes(self) -> list[str]:
        return [e.data for e in self.events if isinstance(e, CodeScanned)]

    @property
    def drops(self) -> list[str]:
        return [e.reason for e in self.events if isinstance(e, FrameDropped)]

    @property
    def onlines(self) -> int:
        return len(self.of(DeviceOnline))

    @property
    def offlines(self) -> int:
        return len(self.of(DeviceOffline))

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `condition()` holds, re-checking after each event; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; events so far: {self.events}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
