"""The simulator's own plumbing: the pty port, and a bounded simulated line served to the driver."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from drivers.base import Outcome
from drivers.keypad import KeypadLineDriver
from drivers.keypad.codec import Frame, FrameDecoder, Ping, encode_frame, make_frame
from drivers.keypad.simulator import PtyPort, SimulatedKeypad, SimulatedLine, run_simulated_line
from tests.drivers.keypad.helpers import FAST, RecordingSink, eventually, running


def test_pty_port_plug_unplug_replug(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "ttyKP9")
    assert not port.plugged
    with pytest.raises(RuntimeError, match="unplugged"):
        _ = port.master_fd
    port.plug()
    first = os.readlink(port.link)
    assert first.startswith("/dev/pts/")
    with pytest.raises(RuntimeError, match="already plugged"):
        port.plug()
    slave = os.open(port.link, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(port.master_fd, b"\x02\x03\n")  # raw: no echo, no newline translation
        assert os.read(slave, 16) == b"\x02\x03\n"
    finally:
        os.close(slave)
    port.unplug()
    assert not port.link.exists()
    assert not port.link.is_symlink()
    with port:
        assert port.plugged
        assert port.link.is_symlink()
    assert not port.plugged


async def test_keypad_answers_ping_with_ack_and_pong(tmp_path: Path) -> None:
    keypad = SimulatedKeypad(5, firmware="FW-9")
    async with SimulatedLine(tmp_path / "ttyKP5", [keypad]) as line:
        fd = os.open(line.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(fd, encode_frame(make_frame(5, 1, Ping())))
            decoder = FrameDecoder()
            frames: list[Frame] = []

            def read() -> None:
                frames.extend(f for f in decoder.feed(os.read(fd, 256)) if isinstance(f, Frame))

            asyncio.get_running_loop().add_reader(fd, read)
            try:
                await eventually(lambda: len(frames) >= 2)
            finally:
                asyncio.get_running_loop().remove_reader(fd)
        finally:
            os.close(fd)
    assert frames[0] == Frame(5, 1, 0x06, b"\x01\x01")  # ACK echoes the PING's SEQ
    assert frames[1].cmd == 0x81
    assert frames[1].payload == b"FW-9"
    assert keypad.pings == 1


async def test_run_simulated_line_serves_the_driver(tmp_path: Path) -> None:
    path = tmp_path / "ttyKP7"
    sink = RecordingSink()
    driver = KeypadLineDriver(str(path), 9600, {1: "kp-01", 2: "kp-02"}, timings=FAST)
    simulation = asyncio.create_task(
        run_simulated_line(
            path,
            [1, 2],
            duration_s=10.0,
            max_presses=3,
            free_ratings_per_min=300.0,
            press_delay_s=(0.05, 0.1),
            status_interval_s=0.2,
            seed=3,
        )
    )
    async with running(driver, sink):
        await eventually(lambda: all(info.online for info in driver.keypads), timeout_s=5.0)
        await driver.prompt("kp-02", 9, 30, "02")
        summary = await asyncio.wait_for(simulation, 20.0)
    assert summary.presses == 3
    assert summary.acked == 3
    assert summary.prompts == 1
    assert sum(summary.levels.values()) == 3
    assert sink.outcomes().count(Outcome.STORED) == 3
    assert {e.session for e, _ in sink.submits} <= {0, 9}


async def test_run_simulated_line_is_bounded_in_time(tmp_path: Path) -> None:
    summary = await asyncio.wait_for(
        run_simulated_line(tmp_path / "ttyKP8", [1], duration_s=0.3, status_interval_s=None), 5.0
    )
    assert summary.presses == 0
    assert not (tmp_path / "ttyKP8").exists()


async def test_line_rejects_duplicate_addresses(tmp_path: Path) -> None:
    line = SimulatedLine(tmp_path / "ttyKP6", [SimulatedKeypad(1)])
    with pytest.raises(ValueError, match="already on the line"):
        line.add(SimulatedKeypad(1))
    with pytest.raises(ValueError, match=r"1\.\.254"):
        SimulatedKeypad(0)
    with pytest.raises(RuntimeError, match="not on a line"):
        SimulatedKeypad(2).press(5)
