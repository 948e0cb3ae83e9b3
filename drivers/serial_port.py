"""One way for every driver to open a serial port: a device path, `socket://host:port` or `tcp://host:port`.

As zigpy's `serial.py` does, a TCP address opens like a port, so a driver can be pointed at a
serial-to-Ethernet converter or a loopback fake as easily as at `/dev/serial/by-id/...` or a pty.
The port is 8N1; pyserial's own URLs (`socket://`, `rfc2217://`, `loop://`) pass through as they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import serial
import serial_asyncio

__all__ = ["open_serial", "open_serial_streams", "serial_errors_reported_plainly", "serial_url"]

log = logging.getLogger(__name__)

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


@contextmanager
def serial_errors_reported_plainly(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While inside, a serial transport's failed read or write is one log line, not a traceback.

    pyserial-asyncio hands every failed write on an unplugged port (EIO) to the loop's exception
    handler, which logs it with a traceback as if the hub were broken; the port's protocol also
    hears `connection_lost` with the same error, and its driver reports the device offline and
    reopens it. Anything else goes to the handler that was there before.
    """
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        transport = context.get("transport")
        error = context.get("exception")
        if isinstance(transport, serial_asyncio.SerialTransport) and isinstance(error, OSError):
            port = getattr(transport.serial, "port", None) or "serial port"
            log.info("%s: %s: %s", port, context.get("message", "transport error"), error)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
