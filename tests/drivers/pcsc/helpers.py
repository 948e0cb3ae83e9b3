"""Test doubles shared by the PC/SC tests: a recording event sink and a recording identifier."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from drivers.base import CitizenIdentity, DeviceEvent, Outcome

WAIT_S = 5.0

E = TypeVar("E", bound=DeviceEvent)


class RecordingSink:
    """An EventSink that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[DeviceEvent] = []
        self._changed = asyncio.Event()

    def notify(self, event: DeviceEvent) -> None:
        """Keep the event."""
        self.events.append(event)
        self._changed.set()

    async def submit(self, event: DeviceEvent) -> Outcome:
        """Keep the event; it is 'stored'."""
        self.notify(event)
        return Outcome.STORED

    async def wait_for(
        self, kind: type[E], check: Callable[[E], bool] = lambda _: True, *, after: int = 0
    ) -> E:
        """The first event of `kind` at index >= `after` passing `check`, waiting up to 5 s."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for event in self.events[after:]:
                    if isinstance(event, kind) and check(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: type[E]) -> list[E]:
        """All events of `kind` so far."""
        return [event for event in self.events if isinstance(event, kind)]


class RecordingIdentifier:
    """A CitizenIdentifier that remembers what it was given (only in these pure tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def identify(self, id_number: str, name: str | None = None) -> CitizenIdentity:
        """Remember the inputs; return a fixed identity."""
        self.calls.append((id_number, name))
        return CitizenIdentity(masked="masked", ref="ref")
