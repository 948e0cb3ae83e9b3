"""The one serial opener: `tcp://` and `socket://` open like a port (zigpy's `serial.py` does the same)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from drivers.serial_errors import serial_errors_reported_plainly
from drivers.serial_port import open_serial, open_serial_streams, serial_url


def test_tcp_is_pyserial_socket_and_other_ports_pass_through() -> None:
    assert serial_url("tcp://127.0.0.1:4001") == "socket://127.0.0.1:4001"
    assert serial_url("socket://127.0.0.1:4001") == "socket://127.0.0.1:4001"
    assert serial_url("/dev/serial/by-id/usb-1") == "/dev/serial/by-id/usb-1"


async def test_a_tcp_fake_device_is_read_and_written_like_a_port() -> None:
    heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def device(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"PONG\r")
        await writer.drain()
        heard.set_result(await reader.readexactly(5))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(device, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await open_serial_streams(f"tcp://127.0.0.1:{port}", 9600, exclusive=True)
        try:
            assert await reader.readexactly(5) == b"PONG\r"
            writer.write(b"PING\r")
            assert await asyncio.wait_for(heard, 5.0) == b"PING\r"
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


class _Lost(asyncio.Protocol):
    """Remembers why the port was lost."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def _write_to_an_unplugged_pty() -> tuple[str, Exception | None]:
    """Open a real pty's device side, unplug it (close the other side), write; the port and the error."""
    leader, follower = os.openpty()
    path = os.ttyname(follower)
    try:
        transport, protocol = await open_serial(path, 9600, _Lost)
    finally:
        os.close(follower)
    os.close(leader)
    transport.write(b"PROMPT 1 30\r" * 64)
    return path, await asyncio.wait_for(protocol.lost, 5.0)


async def test_a_write_to_an_unplugged_port_is_one_plain_line_and_the_driver_hears_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with serial_errors_reported_plainly(asyncio.get_running_loop()):
        path, error = await _write_to_an_unplugged_pty()
    assert isinstance(error, OSError), "the protocol hears why, so its driver reports the device offline"
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an unplugged device"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "drivers.serial_errors"]
    assert line.startswith(f"{path}: ")
    assert "Input/output error" in line


async def test_without_it_the_unplugged_port_reaches_the_loops_handler_as_a_crash() -> None:
    """The control: asyncio's default handler logs such a context with its traceback (the demo's
    shutdown log in CI, 2026-12-07)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, object]] = []
    before = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        await _write_to_an_unplugged_pty()
    finally:
        loop.set_exception_handler(before)
    assert [c for c in seen if isinstance(c.get("exception"), OSError)], seen
