"""A serial port's failed read or write reported as one log line, not as a crash of the hub.

Kept apart from `drivers.serial_port`, which imports pyserial: the hub installs this for every
node, and a node with only MQTT devices never loads pyserial.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["serial_errors_reported_plainly"]

log = logging.getLogger(__name__)


def _is_serial_transport(transport: object) -> bool:
    """Whether `transport` is pyserial-asyncio's, without importing it where no port was opened."""
    module = sys.modules.get("serial_asyncio")
    return module is not None and isinstance(transport, module.SerialTransport)


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
        transport: Any = context.get("transport")
        error = context.get("exception")
        if _is_serial_transport(transport) and isinstance(error, OSError):
            port = transport.serial.port or "serial port"
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
