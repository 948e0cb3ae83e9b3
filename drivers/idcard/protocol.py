"""asyncio framing for the SAM reader: serial bytes in, checked frames out, one request at a time.

`SamProtocol` feeds received bytes through the codec's `FrameDecoder` and queues the frames.
`SamLink` owns one open port: it sends a command and awaits the answer, expiring a half-received
frame after a silence so that a truncated answer cannot block the next one. The SAM protocol has
no sequence numbers, so there is never more than one command outstanding; frames that arrive
while none is (late or unsolicited answers) are dropped as `unexpected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from drivers import serial_port
from drivers.idcard.codec import (
    Command,
    DropReason,
    Frame,
    FrameDecoder,
    Response,
    decode_response,
    encode_command,
)

__all__ = [
    "UNEXPECTED",
    "ReaderLostError",
    "ReaderTimeoutError",
    "SamLink",
    "SamProtocol",
]

logger = logging.getLogger(__name__)

UNEXPECTED: Final = "unexpected"
"""Drop label for a well-formed frame that arrived when no command was waiting for it."""

_QUEUE_LIMIT: Final = 16
_CLOSE_WAIT_S: Final = 2.0


class ReaderLostError(Exception):
    """The port closed or failed (reader unplugged, cable pulled); `reason` is for technicians."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReaderTimeoutError(Exception):
    """The reader did not answer a command in time."""

    def __init__(self, command: Command, timeout_s: float) -> None:
        super().__init__(f"no answer to {command.name} within {timeout_s:.1f} s")
        self.command = command
        self.timeout_s = timeout_s


class SamProtocol(asyncio.Protocol):
    """Turns the byte stream into checked frames; reports every dropped frame by reason."""

    def __init__(self, on_drop: Callable[[str], None]) -> None:
        self._on_drop = on_drop
        self._decoder = FrameDecoder(self._decoder_drop)
        self._frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self._lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def _decoder_drop(self, reason: DropReason) -> None:
        """Forward a decoder drop under its metric label."""
        self._on_drop(reason.value)

    def _queue(self, frames: list[Frame]) -> None:
        """Queue decoded frames; beyond the limit they are dropped as unexpected."""
        for frame in frames:
            try:
                self._frames.put_nowait(frame)
            except asyncio.QueueFull:
                self._on_drop(UNEXPECTED)

    def data_received(self, data: bytes) -> None:
        """Decode what arrived."""
        self._queue(self._decoder.feed(data))

    def connection_lost(self, exc: Exception | None) -> None:
        """Record why the port closed; wakes any waiting request."""
        if not self._lost.done():
            self._lost.set_result(str(exc) if exc is not None else "port closed")

    @property
    def lost(self) -> asyncio.Future[str]:
        """Resolves with the reason once the port has closed."""
        return self._lost

    def expire(self) -> None:
        """After a silence: drop a half-received frame and decode what was held behind it."""
        self._queue(self._decoder.expire())

    def discard_stale(self) -> None:
        """Drop frames nobody asked for (a late answer must not pass for the next one)."""
        while not self._frames.empty():
            self._frames.get_nowait()
            self._on_drop(UNEXPECTED)

    async def next_frame(self, timeout_s: float) -> Frame | None:
        """The next frame, or None after `timeout_s`; raise `ReaderLostError` if the port closes."""
        if not self._frames.empty():
            return self._frames.get_nowait()
        if self._lost.done():
            raise ReaderLostError(self._lost.result())
        getter = asyncio.ensure_future(self._frames.get())
        waiters: set[asyncio.Future[Any]] = {getter, self._lost}
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter
        if getter in done:
            return getter.result()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if self._lost.done():
            raise ReaderLostError(self._lost.result())
        return None


class SamLink:
    """One open connection to a SAM reader. Use `open`, then `request`, then `aclose`."""

    def __init__(self, transport: asyncio.Transport, protocol: SamProtocol, port: str) -> None:
        self._transport = transport
        self._protocol = protocol
        self.port = port

    @classmethod
    async def open(cls, port: str, baud: int, on_drop: Callable[[str], None]) -> SamLink:
        """Open the port (exclusively) at `baud`, 8N1; raise `OSError` if it cannot be opened."""
        transport, protocol = await serial_port.open_serial(
            port, baud, lambda: SamProtocol(on_drop), exclusive=True
        )
        return cls(transport, protocol, port)

    @property
    def lost(self) -> asyncio.Future[str]:
        """Resolves with the reason once the port has closed."""
        return self._protocol.lost

    async def request(self, command: Command, timeout_s: float) -> Response:
        """Send `command` and return the SAM's answer.

        Raises `ReaderTimeoutError` if no answer arrives (a half-received one is expired and
        counted as truncated), `ReaderLostError` if the port fails, and `ProtocolError` for an
        answer too short to hold the status bytes.
        """
        protocol = self._protocol
        protocol.discard_stale()
        if self._transport.is_closing():
            raise ReaderLostError(protocol.lost.result() if protocol.lost.done() else "port closed")
        self._transport.write(encode_command(command))
        frame = await protocol.next_frame(timeout_s)
        if frame is None:
            protocol.expire()
            frame = await protocol.next_frame(0)
        if frame is None:
            raise ReaderTimeoutError(command, timeout_s)
        return decode_response(frame)

    async def aclose(self) -> None:
        """Close the port and wait (briefly) until it is really closed."""
        if not self._transport.is_closing():
            self._transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._protocol.lost), _CLOSE_WAIT_S)
