"""Fixtures for the ID-card driver: a simulated reader on a real pty, a recording sink, a driver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.base import DeviceEvent, Outcome
from drivers.idcard.driver import IdCardReaderDriver
from drivers.idcard.simulator import SimulatedSamReader
from hub.privacy.sealing import NodeIdentifier

SECRET = bytes(range(32, 64))
E = TypeVar("E", bound=DeviceEvent)


class RecordingSink:
    """An `EventSink` that records everything and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.events: list[DeviceEvent] = []
        self.outcome = Outcome.STORED
        self._changed = asyncio.Event()

    async def submit(self, event: DeviceEvent) -> Outcome:
        self.events.append(event)
        self._changed.set()
        return self.outcome

    def notify(self, event: DeviceEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition on the simulator's side (bounded in time)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "dev" / "ttyIDCARD"


@pytest.fixture
async def reader(link: Path) -> AsyncIterator[SimulatedSamReader]:
    async with SimulatedSamReader(link) as simulated:
        yield simulated


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


DriverFactory = Callable[..., IdCardReaderDriver]


@pytest.fixture
async def start_driver(link: Path, sink: RecordingSink) -> AsyncIterator[DriverFactory]:
    """Start drivers on the simulator's link with fast reconnects; cancel them at the end."""
    tasks: list[asyncio.Task[None]] = []

    def start(**overrides: Any) -> IdCardReaderDriver:
        options: dict[str, Any] = {
            "identifier": NodeIdentifier(SECRET),
            "request_timeout_s": 0.3,
            "read_timeout_s": 1.0,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
        }
        options.update(overrides)
        driver = IdCardReaderDriver("idcard-01", str(link), **options)
        tasks.append(asyncio.create_task(driver.run(sink)))
        return driver

    yield start
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
