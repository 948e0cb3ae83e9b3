"""Fixtures for keypad tests: a simulated line on a real pty, and a driver pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.keypad import KeypadLineDriver
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from tests.drivers.keypad.helpers import FAST, RecordingSink, eventually, running


@pytest.fixture
def port_path(tmp_path: Path) -> Path:
    return tmp_path / "ttyKP0"


@pytest.fixture
def keypad() -> SimulatedKeypad:
    return SimulatedKeypad(1, retransmit_interval_s=0.2, seed=7)


@pytest.fixture
async def line(port_path: Path, keypad: SimulatedKeypad) -> AsyncIterator[SimulatedLine]:
    async with SimulatedLine(port_path, [keypad]) as sim:
        yield sim


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def driver(line: SimulatedLine) -> KeypadLineDriver:
    return KeypadLineDriver(line.path, 9600, {1: "kp-01"}, timings=FAST)


@pytest.fixture
async def online(driver: KeypadLineDriver, sink: RecordingSink) -> AsyncIterator[KeypadLineDriver]:
    """The driver running against the simulated line, with keypad 1 answered at least once."""
    async with running(driver, sink):
        await eventually(lambda: driver.keypads[0].firmware is not None)
        yield driver
