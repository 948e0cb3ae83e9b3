"""asyncio framing for HKP/1: bytes from a transport → frames and drops, frames → bytes.

`HkpProtocol` is an `asyncio.Protocol` that feeds a `FrameDecoder` and runs the line-silence timer,
so that a partial frame followed by silence is dropped without waiting for more bytes. It is used by
the driver over pyserial-asyncio and by the simulator over a pty master alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from drivers import serial_port
from drivers.keypad.codec import (
    DroppedFrame,
    Frame,
    FrameDecoder,
    encode_frame,
    silence_for_baud,
)

__all__ = ["DropHandler", "FrameHandler", "HkpProtocol", "open_serial"]

_LOG = logging.getLogger(__name__)

FrameHandler = Callable[[Frame], None]
DropHandler = Callable[[DroppedFrame], None]


class HkpProtocol(asyncio.Protocol):
    """Turns a byte stream into HKP/1 frames (and drops) and sends frames.

    Callbacks run synchronously in the event loop; they must not block. `wait_closed` returns the
    exception that ended the connection (None for a normal close).
    """

    def __init__(
        self,
        on_frame: FrameHandler,
        on_drop: DropHandler,
        *,
        silence_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_frame = on_frame
        self._on_drop = on_drop
        self._clock = clock
        self._decoder = FrameDecoder(silence_s=silence_s, clock=clock)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    @property
    def is_open(self) -> bool:
        """True between `connection_made` and `connection_lost` while not closing."""
        return self._transport is not None and not self._transport.is_closing() and not self._closed.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport for writing."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        """Decode what arrived and re-arm the silence timer if a partial frame is held."""
        self._dispatch(self._decoder.feed(data, self._clock()))
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the timer, forget partial input and wake `wait_closed`."""
        self._cancel_timer()
        self._decoder.reset()
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(exc)

    def send(self, frame: Frame) -> bool:
        """Write one frame; False if the connection is gone (the bytes are not sent)."""
        if not self.is_open or self._transport is None:
            return False
        self._transport.write(encode_frame(frame))
        return True

    def close(self) -> None:
        """Close the transport (buffered bytes are flushed first)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Close the transport at once, dropping buffered bytes."""
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> Exception | None:
        """Wait until the connection is lost; return its exception (None if closed normally)."""
        return await asyncio.shield(self._closed)

    def _dispatch(self, items: list[Frame | DroppedFrame]) -> None:
        for item in items:
            if isinstance(item, Frame):
                self._on_frame(item)
            else:
                self._on_drop(item)

    def _arm_timer(self) -> None:
        self._cancel_timer()
        deadline = self._decoder.deadline
        if deadline is not None and self._transport is not None:
            delay = max(0.0, deadline - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_silence)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_silence(self) -> None:
        self._timer = None
        self._dispatch(self._decoder.expire(self._clock()))
        self._arm_timer()


async def open_serial(
    port: str,
    baud: int,
    on_frame: FrameHandler,
    on_drop: DropHandler,
    *,
    silence_s: float | None = None,
    **serial_kwargs: Any,
) -> HkpProtocol:
    """Open `port` (a device path, `tcp://` or any pyserial URL) 8N1 at `baud`; return its protocol.

    Raises `serial.SerialException` (an `OSError`) if the port cannot be opened. The silence rule
    defaults to the contract's 50 ms at 9600 baud, scaled by the baud rate.
    """
    silence = silence_for_baud(baud) if silence_s is None else silence_s
    _, protocol = await serial_port.open_serial(
        port, baud, lambda: HkpProtocol(on_frame, on_drop, silence_s=silence), **serial_kwargs
    )
    _LOG.debug("opened %s at %d baud", port, baud)
    return protocol
