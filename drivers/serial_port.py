"""One way for every driver to open a serial port: a device path, `socket://host:port` or `tcp://host:port`.

As zigpy's `serial.py` does, a TCP address opens like a port, so a driver can be pointed at a
serial-to-Ethernet converter or a loopback fake as easily as at `/dev/serial/by-id/...` or a pty.
The port is 8N1; pyserial's own URLs (`socket://`, `rfc2217://`, `loop://`) pass through as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import serial
import serial_asyncio

__all__ = ["open_serial", "open_serial_streams", "serial_url"]

P = TypeVar("P", bound=asyncio.Protocol)

_STREAM_LIMIT = 2**16
"""asyncio's own default buffer limit for a stream reader."""


def serial_url(port: str) -> str:
    """What pyserial opens for `port`: `tcp://host:port` becomes its `socket://host:port`."""
    if port.startswith("tcp://"):
        return "socket://" + port.removeprefix("tcp://")
    return port


async def open_serial(
    port: str, baud: int, protocol_factory: Callable[[], P], **options: Any
) -> tuple[asyncio.Transport, P]:
    """Open `port` 8N1 at `baud` with an `asyncio.Protocol`; `options` go to pyserial (`exclusive`...).

    Raises `serial.SerialException` (an `OSError`) if the port cannot be opened.
    """
    transport, protocol = await serial_asyncio.create_serial_connection(
        asyncio.get_running_loop(),
        protocol_factory,
        serial_url(port),
        baudrate=baud,
        bytesize=serial.EIGHTBITS,
        parity=serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE,
        **options,
    )
    return transport, protocol


async def open_serial_streams(
    port: str, baud: int, **options: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`open_serial` as a reader and writer, for drivers that read a byte stream (QR scanners)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await open_serial(port, baud, lambda: protocol, **options)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
