"""HkpProtocol: frames out of a transport's bytes, and the silence timer on a real event loop."""

from __future__ import annotations

import asyncio

from drivers.keypad.codec import DroppedFrame, DropReason, Frame, Key, encode_frame, make_frame
from drivers.keypad.protocol import HkpProtocol
from tests.drivers.keypad.helpers import eventually

KEY = make_frame(1, 7, Key(42, 2, ("R1", "R2")))


class WrittenBytes(asyncio.Transport):
    """A transport that keeps what is written, for a protocol under test."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def make_protocol(silence_s: float) -> tuple[HkpProtocol, list[Frame], list[DroppedFrame]]:
    frames: list[Frame] = []
    drops: list[DroppedFrame] = []
    return HkpProtocol(frames.append, drops.append, silence_s=silence_s), frames, drops


async def test_silence_timer_releases_frame_behind_stray_stx() -> None:
    proto, frames, drops = make_protocol(0.05)
    transport = WrittenBytes()
    proto.connection_made(transport)
    proto.data_received(bytes((0x02, 0x01, 0x01, 0x01, 0xF0)) + encode_frame(KEY))
    assert frames == []
    await eventually(lambda: frames, timeout_s=2.0)
    assert frames == [KEY]
    assert drops[0].reason is DropReason.TIMEOUT
    proto.connection_lost(None)
    assert await proto.wait_closed() is None


async def test_send_and_close() -> None:
    proto, frames, _ = make_protocol(0.05)
    assert not proto.send(KEY)
    transport = WrittenBytes()
    proto.connection_made(transport)
    assert proto.is_open
    for byte in encode_frame(KEY):
        proto.data_received(bytes((byte,)))
    assert frames == [KEY]
    assert proto.send(KEY)
    assert bytes(transport.written) == encode_frame(KEY)
    proto.close()
    assert not proto.is_open
    assert not proto.send(KEY)
    error = OSError("gone")
    proto.connection_lost(error)
    assert await proto.wait_closed() is error
