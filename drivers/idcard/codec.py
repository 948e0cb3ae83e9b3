"""The SAM ID-card reader wire format (CONTRACTS.md §4): frames, commands, answers. Pure, no I/O.

A frame is `AA AA AA 96 69` · LEN (2 bytes, big-endian, the count of every byte after LEN, CHK
included) · payload · CHK (XOR of the two LEN bytes and every payload byte). A command payload is
CMD PARA; an answer payload is SW1 SW2 SW3 then data. Used by the driver and by the simulator, so
the format is written once.

`FrameDecoder` takes any byte stream: it resynchronises on the preamble, drops (and counts by
reason) frames with a wrong checksum, an impossible or oversized LEN, and frames cut short, and
never raises.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_LEN",
    "MIN_LEN",
    "PHOTO_LEN",
    "PREAMBLE",
    "READ_BASIC_FRAME_LEN",
    "TEXT_LEN",
    "CardData",
    "Command",
    "DropReason",
    "Frame",
    "FrameDecoder",
    "ProtocolError",
    "Response",
    "Status",
    "UnknownCommandError",
    "checksum",
    "decode_card_data",
    "decode_command",
    "decode_response",
    "encode_card_data_response",
    "encode_command",
    "encode_frame",
    "encode_response",
]

PREAMBLE: Final = b"\xaa\xaa\xaa\x96\x69"
_HEADER_LEN: Final = len(PREAMBLE) + 2
MIN_LEN: Final = 3
"""Smallest LEN: a two-byte command payload plus CHK (an answer has at least three SW bytes)."""
TEXT_LEN: Final = 256
PHOTO_LEN: Final = 1024
FINGERPRINT_MAX_LEN: Final = 1024
MAX_LEN: Final = 3 + 6 + TEXT_LEN + PHOTO_LEN + FINGERPRINT_MAX_LEN + 1
"""Largest LEN accepted: the read-with-fingerprint answer (SW, three lengths, text, photo,
fingerprint, CHK). Anything longer is an oversized frame."""
READ_BASIC_FRAME_LEN: Final = _HEADER_LEN + 3 + 4 + TEXT_LEN + PHOTO_LEN + 1
"""The read-basic-information answer is exactly 1295 bytes on the wire."""


class ProtocolError(Exception):
    """A well-framed payload that does not make sense (too short, lengths that do not add up)."""


class UnknownCommandError(ProtocolError):
    """A command frame with a CMD/PARA pair that §4 does not define (the SAM answers SW3 21)."""

    def __init__(self, cmd: int, para: int) -> None:
        super().__init__(f"unknown command {cmd:02X} {para:02X}")
        self.cmd = cmd
        self.para = para


class Command(enum.Enum):
    """Every command of §4, valued by its (CMD, PARA) bytes."""

    RESET_SAM = (0x10, 0xFF)
    SAM_STATUS = (0x11, 0xFF)
    READ_SAM_ID = (0x12, 0xFF)
    FIND_CARD = (0x20, 0x01)
    SELECT_CARD = (0x20, 0x02)
    READ_BASIC = (0x30, 0x01)
    READ_WITH_FINGERPRINT = (0x30, 0x10)
    READ_EXTRA_ADDRESS = (0x30, 0x03)

    @property
    def payload(self) -> bytes:
        """The command payload: CMD, PARA."""
        return bytes(self.value)


_STATUS_TEXT: Final[dict[int, str]] = {
    0x90: "success",
    0x9F: "card found",
    0x80: "find card failed: no card in the field",
    0x81: "select card failed: the card moved or left the field; hold it flat on the reader",
    0x41: "read card failed: the card moved or left the field during the read; place it again",
    0x10: "the SAM received a frame with a wrong checksum: check the cable and the baud rate",
    0x11: "the SAM received a frame with a wrong length: check the cable and the baud rate",
    0x21: "the SAM does not know the command (reader firmware or driver mismatch)",
    0x23: "the SAM refused the command: operation not permitted",
    0x24: "the SAM reported an unknown error: power-cycle the reader",
    0x31: "authentication failed: the card did not accept the SAM (卡认证机具失败)",
    0x32: "authentication failed: the SAM did not accept the card, it may be forged (机具认证卡失败)",
    0x33: "authentication failed: the card information did not verify (信息验证错误)",
    0x40: "unknown card type: not a second-generation ID card or residence permit",
    0x47: "the SAM failed to get a random number: power-cycle the reader",
    0x60: "SAM self-test failed: the reader's security module is faulty; replace the reader",
    0x66: "SAM unauthorised: the security module is not authorised; contact the reader's vendor",
    0x91: "no such content on the card (e.g. no fingerprint or no extra address)",
}


class Status(enum.IntEnum):
    """SW3, the SAM's status byte (§4). `description` is written for technicians."""

    SUCCESS = 0x90
    CARD_FOUND = 0x9F
    FIND_FAILED = 0x80
    SELECT_FAILED = 0x81
    READ_FAILED = 0x41
    CHECKSUM_ERROR = 0x10
    LENGTH_ERROR = 0x11
    COMMAND_ERROR = 0x21
    NOT_PERMITTED = 0x23
    UNKNOWN_ERROR = 0x24
    CARD_AUTH_FAILED = 0x31
    SAM_AUTH_FAILED = 0x32
    INFO_AUTH_FAILED = 0x33
    UNKNOWN_CARD_TYPE = 0x40
    RANDOM_FAILED = 0x47
    SAM_SELF_TEST_FAILED = 0x60
    SAM_UNAUTHORISED = 0x66
    NO_CONTENT = 0x91

    @property
    def description(self) -> str:
        """What the status means and, for faults, what to do about it."""
        return _STATUS_TEXT[self.value]

    @classmethod
    def from_code(cls, code: int) -> Status | None:
        """The status for an SW3 byte, or None for a value §4 does not define."""
        try:
            return cls(code)
        except ValueError:
            return None


class DropReason(enum.StrEnum):
    """Why the decoder dropped bytes; used as the `FrameDropped.reason` metric label."""

    BAD_CHECKSUM = "bad_checksum"
    BAD_LENGTH = "bad_length"
    OVERSIZED = "oversized"
    TRUNCATED = "truncated"
    NOISE = "noise"


def checksum(len_and_payload: bytes) -> int:
    """XOR of every byte given: the two LEN bytes and the payload."""
    value = 0
    for byte in len_and_payload:
        value ^= byte
    return value


def encode_frame(payload: bytes) -> bytes:
    """Frame a payload: preamble, LEN (payload + CHK), payload, CHK."""
    length = len(payload) + 1
    if length > MAX_LEN:
        raise ValueError(f"payload of {len(payload)} bytes is too long for a frame")
    body = length.to_bytes(2, "big") + payload
    return PREAMBLE + body + bytes([checksum(body)])


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame. The repr shows only the length: payloads may carry personal data."""

    payload: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """Payload length in bytes."""
        return len(self.payload)


def encode_command(command: Command) -> bytes:
    """The frame that sends `command` to the SAM."""
    return encode_frame(command.payload)


def decode_command(frame: Frame) -> Command:
    """The command a frame carries (the simulator's side); raise for unknown or short payloads."""
    if frame.size != 2:
        raise ProtocolError(f"a command payload is 2 bytes, got {frame.size}")
    cmd, para = frame.payload
    try:
        return Command((cmd, para))
    except ValueError:
        raise UnknownCommandError(cmd, para) from None


@dataclass(frozen=True, slots=True)
class Response:
    """An answer from the SAM: SW1 SW2 SW3 and data (repr hides data)."""

    sw1: int
    sw2: int
    sw3: int
    data: bytes = field(default=b"", repr=False)

    @property
    def status(self) -> Status | None:
        """SW3 as a `Status`, or None for an undefined value."""
        return Status.from_code(self.sw3)

    @property
    def ok(self) -> bool:
        """True for SW1 SW2 = 00 00 and SW3 success or card found."""
        return self.sw1 == 0 and self.sw2 == 0 and self.sw3 in (Status.SUCCESS, Status.CARD_FOUND)

    def describe(self) -> str:
        """A technician-readable account of the status bytes."""
        status = self.status
        text = status.description if status is not None else "undefined status"
        return f"SW {self.sw1:02X} {self.sw2:02X} {self.sw3:02X}: {text}"


def decode_response(frame: Frame) -> Response:
    """Split an answer frame into SW1 SW2 SW3 and data."""
    payload = frame.payload
    if len(payload) < 3:
        raise ProtocolError(f"an answer has at least 3 status bytes, got {len(payload)}")
    return Response(payload[0], payload[1], payload[2], payload[3:])


def encode_response(status: Status | int, data: bytes = b"", sw1: int = 0, sw2: int = 0) -> bytes:
    """The frame of an answer (the simulator's side)."""
    return encode_frame(bytes([sw1, sw2, int(status)]) + data)


@dataclass(frozen=True, slots=True)
class CardData:
    """The parts of a read answer the driver uses: the text block and the other lengths.

    The photo (and fingerprint) bytes are never copied out of the frame: only their lengths are
    kept, to check the answer adds up. The repr hides the text block.
    """

    text: bytes = field(repr=False)
    photo_len: int
    fingerprint_len: int = 0


def decode_card_data(data: bytes, *, with_fingerprint: bool = False) -> CardData:
    """Decode the data of a read-basic (`30 01`) or read-with-fingerprint (`30 10`) answer.

    Layout: text length, photo length (and fingerprint length), 2 bytes big-endian each, then the
    blocks in that order. The lengths must add up to exactly the data received.
    """
    count = 3 if with_fingerprint else 2
    header = 2 * count
    if len(data) < header:
        raise ProtocolError("card data is shorter than its length fields")
    lengths = [int.from_bytes(data[2 * i : 2 * i + 2], "big") for i in range(count)]
    text_len, photo_len = lengths[0], lengths[1]
    fingerprint_len = lengths[2] if with_fingerprint else 0
    if text_len != TEXT_LEN:
        raise ProtocolError(f"text block length is {text_len}, expected {TEXT_LEN}")
    if header + text_len + photo_len + fingerprint_len != len(data):
        raise ProtocolError("card data lengths do not add up to the answer's size")
    return CardData(
        text=bytes(data[header : header + text_len]),
        photo_len=photo_len,
        fingerprint_len=fingerprint_len,
    )


def encode_card_data_response(text: bytes, photo: bytes, fingerprint: bytes | None = None) -> bytes:
    """The frame of a successful read answer (simulator side): 1295 bytes without fingerprint."""
    lengths = [len(text), len(photo)] + ([] if fingerprint is None else [len(fingerprint)])
    data = b"".join(n.to_bytes(2, "big") for n in lengths) + text + photo + (fingerprint or b"")
    return encode_response(Status.SUCCESS, data)


class FrameDecoder:
    """Incremental frame decoder: feed any bytes, get checked frames; never raises.

    It searches for the preamble, reads LEN and waits for the whole frame. Bytes before a preamble
    are noise; a LEN below `MIN_LEN` is a bad length and above `MAX_LEN` oversized; a wrong CHK is a
    bad checksum, or a truncated frame when another preamble starts inside it (the sender stopped
    and began a new frame). `expire` drops a frame left incomplete (the caller calls it after a
    silence), counting it as truncated. After every drop the search resumes one byte after the
    dropped preamble, so a real frame hidden behind a false start is still found.
    Each drop is counted in `drops` and reported to `on_drop` (called with the decoder already in a
    consistent state; an exception it raises propagates to the caller of `feed`/`expire`).
    """

    def __init__(self, on_drop: Callable[[DropReason], None] | None = None) -> None:
        self._buffer = bytearray()
        self._on_drop = on_drop
        self._in_noise = False
        self.drops: Counter[DropReason] = Counter()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame (or a preamble)."""
        return len(self._buffer)

    def _drop(self, reason: DropReason) -> None:
        """Count a drop and tell the owner (called after the buffer is already consistent)."""
        self.drops[reason] += 1
        if self._on_drop is not None:
            self._on_drop(reason)

    def _skip_noise(self, count: int) -> None:
        """Discard `count` leading bytes that are not a frame; count one drop per noise run."""
        if count <= 0:
            return
        del self._buffer[:count]
        if not self._in_noise:
            self._in_noise = True
            self._drop(DropReason.NOISE)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add received bytes; return every complete, checked frame now available, in order."""
        self._buffer += data
        return self._scan()

    def expire(self) -> list[Frame]:
        """Drop an incomplete frame after a silence (truncated) and rescan what followed it."""
        start = self._buffer.find(PREAMBLE)
        if start < 0:
            if self._buffer:
                self._skip_noise(len(self._buffer))
            self._in_noise = False
            return []
        self._skip_noise(start)
        self._in_noise = False
        del self._buffer[:1]
        self._drop(DropReason.TRUNCATED)
        frames = self._scan()
        self._in_noise = False
        return frames

    def _scan(self) -> list[Frame]:
        """Extract frames from the buffer until it holds only an incomplete frame or nothing."""
        frames: list[Frame] = []
        buffer = self._buffer
        while True:
            start = buffer.find(PREAMBLE)
            if start < 0:
                # Keep a tail that may be the beginning of a preamble split across reads.
                keep = len(PREAMBLE) - 1
                self._skip_noise(len(buffer) - keep)
                return frames
            self._skip_noise(start)
            if len(buffer) < _HEADER_LEN:
                return frames
            length = int.from_bytes(buffer[len(PREAMBLE) : _HEADER_LEN], "big")
            if length < MIN_LEN:
                self._reject(DropReason.BAD_LENGTH)
                continue
            if length > MAX_LEN:
                self._reject(DropReason.OVERSIZED)
                continue
            end = _HEADER_LEN + length
            if len(buffer) < end:
                return frames
            body = bytes(buffer[len(PREAMBLE) : end - 1])
            if checksum(body) != buffer[end - 1]:
                restarted = buffer.find(PREAMBLE, 1, end) >= 0
                self._reject(DropReason.TRUNCATED if restarted else DropReason.BAD_CHECKSUM)
                continue
            frames.append(Frame(body[2:]))
            del buffer[:end]
            self._in_noise = False

    def _reject(self, reason: DropReason) -> None:
        """Drop the frame starting at the buffer's head and resume the search one byte later."""
        self._in_noise = True
        del self._buffer[:1]
        self._drop(reason)
