"""HKP/1, the serial keypad protocol of CONTRACTS §3: frames, payloads and an incremental decoder.

Pure bytes in, typed values out: no I/O, no clock of its own (time is passed in or injected), so the
driver, the simulator and the tests all share this one implementation of the wire format.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol, TypeAlias

from crc import Calculator, Crc16

__all__ = [
    "BAUD_DEFAULT",
    "BROADCAST",
    "ETX",
    "MAX_PAYLOAD",
    "PROMPT_TEXT_MAX",
    "REASON_CODES",
    "SESSION_MAX",
    "SHOW_TEXT_MAX",
    "SILENCE_AT_9600_S",
    "SILENCE_MIN_S",
    "STX",
    "Ack",
    "AnyPayload",
    "Cancel",
    "CodecError",
    "Command",
    "DecodeItem",
    "DropReason",
    "DroppedFrame",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "Key",
    "Nak",
    "NakCode",
    "Payload",
    "PayloadError",
    "Ping",
    "Pong",
    "Prompt",
    "Show",
    "Status",
    "StatusFlag",
    "crc16",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "fit_text",
    "make_frame",
    "mask_to_reasons",
    "reasons_to_mask",
    "silence_for_baud",
]

STX: Final = 0x02
ETX: Final = 0x03
BROADCAST: Final = 0xFF
MAX_PAYLOAD: Final = 240
HEADER_SIZE: Final = 5  # STX ADDR SEQ CMD LEN
TRAILER_SIZE: Final = 3  # CRC_LO CRC_HI ETX
MAX_FRAME: Final = HEADER_SIZE + MAX_PAYLOAD + TRAILER_SIZE
SESSION_MAX: Final = 0xFFFF_FFFF
PROMPT_TEXT_MAX: Final = MAX_PAYLOAD - 5  # session (4) and timeout (1) come first
SHOW_TEXT_MAX: Final = MAX_PAYLOAD
REASON_CODES: Final = tuple(f"R{bit + 1}" for bit in range(8))
BAUD_DEFAULT: Final = 9600
SILENCE_AT_9600_S: Final = 0.050
# Floor for the silence rule at high baud rates: USB-serial adapters deliver bytes in latency-timer
# chunks (FTDI: 16 ms by default), so a shorter gap would split frames a sender wrote back to back.
SILENCE_MIN_S: Final = 0.020

# CRC-16/MODBUS (poly 0x8005 reflected = 0xA001, init 0xFFFF) from the `crc` package's
# table-driven implementation, not a hand-written bit loop (DESIGN: use a library where one fits).
_CRC16_MODBUS: Final = Calculator(Crc16.MODBUS.value, optimized=True)


class CodecError(ValueError):
    """A value cannot be put on, or taken from, the wire as HKP/1 defines it."""


class FrameError(CodecError):
    """A byte string is not exactly one valid frame; `reason` is the drop label."""

    def __init__(self, reason: DropReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PayloadError(CodecError):
    """A frame's payload does not match its command's layout (NAK code 3, bad payload)."""


class Command(enum.IntEnum):
    """HKP/1 command bytes."""

    PING = 0x01
    ACK = 0x06
    PROMPT = 0x10
    CANCEL = 0x11
    SHOW = 0x12
    NAK = 0x15
    PONG = 0x81
    KEY = 0x90
    STATUS = 0x91


class NakCode(enum.IntEnum):
    """Error codes carried by a NAK."""

    BAD_CRC = 1
    UNKNOWN_COMMAND = 2
    BAD_PAYLOAD = 3
    BUSY = 4

    @property
    def label(self) -> str:
        """A lower-case label for logs and error messages, e.g. `unknown command`."""
        return self.name.lower().replace("_", " ")


class StatusFlag(enum.IntFlag):
    """STATUS flag bits; unnamed bits are reported as `bit<n>` by `Status.faults`."""

    DISPLAY_FAULT = 0x01
    KEY_FAULT = 0x02
    TAMPER = 0x04


class DropReason(enum.StrEnum):
    """Why the decoder dropped bytes; the values are metric labels."""

    NOISE = "noise"
    BAD_LEN = "bad_len"
    BAD_ETX = "bad_etx"
    BAD_CRC = "bad_crc"
    TIMEOUT = "timeout"


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of `data` (the check value over b"123456789" is 0x4B37)."""
    return int(_CRC16_MODBUS.checksum(data))


def silence_for_baud(baud: int) -> float:
    """Line silence that turns a partial frame into noise: 50 ms at 9600 baud, scaled, floored."""
    if baud <= 0:
        raise CodecError(f"baud rate must be positive, got {baud}")
    return max(SILENCE_AT_9600_S * BAUD_DEFAULT / baud, SILENCE_MIN_S)


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise CodecError(f"{name} must be 0..255, got {value}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One HKP/1 frame: `cmd` is an int so that unknown commands can be carried and NAKed."""

    addr: int
    seq: int
    cmd: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        _check_byte("ADDR", self.addr)
        _check_byte("SEQ", self.seq)
        _check_byte("CMD", self.cmd)
        if len(self.payload) > MAX_PAYLOAD:
            raise CodecError(f"payload is {len(self.payload)} bytes, HKP/1 allows {MAX_PAYLOAD}")

    @property
    def command(self) -> Command | None:
        """The known command, or None for a command byte HKP/1 does not define."""
        try:
            return Command(self.cmd)
        except ValueError:
            return None

    @property
    def command_name(self) -> str:
        """The command's name for messages, e.g. `PROMPT` or `0x42`."""
        known = self.command
        return known.name if known is not None else f"0x{self.cmd:02X}"


def encode_frame(frame: Frame) -> bytes:
    """The bytes of `frame` on the wire, CRC low byte first."""
    body = bytes((frame.addr, frame.seq, frame.cmd, len(frame.payload))) + frame.payload
    return bytes((STX,)) + body + crc16(body).to_bytes(2, "little") + bytes((ETX,))


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one frame, raising `FrameError` with the reason the decoder would drop it."""
    if len(data) < HEADER_SIZE + TRAILER_SIZE or data[0] != STX:
        raise FrameError(DropReason.NOISE, "not an HKP/1 frame (no STX or too short)")
    length = data[4]
    if length > MAX_PAYLOAD:
        raise FrameError(DropReason.BAD_LEN, f"LEN {length} exceeds {MAX_PAYLOAD}")
    if len(data) != HEADER_SIZE + length + TRAILER_SIZE:
        raise FrameError(DropReason.BAD_LEN, f"LEN {length} does not match {len(data)} bytes")
    if data[-1] != ETX:
        raise FrameError(DropReason.BAD_ETX, f"expected ETX, got 0x{data[-1]:02X}")
    body = data[1 : HEADER_SIZE + length]
    if crc16(body) != int.from_bytes(data[-3:-1], "little"):
        raise FrameError(DropReason.BAD_CRC, "CRC mismatch")
    return Frame(addr=data[1], seq=data[2], cmd=data[3], payload=bytes(data[5 : 5 + length]))


def fit_text(text: str, max_bytes: int) -> str:
    """`text` cut at a character boundary so that its UTF-8 form fits in `max_bytes`."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")


def _uint32(data: bytes, what: str) -> int:
    if len(data) < 4:
        raise PayloadError(f"{what}: payload too short for a uint32 session")
    return int.from_bytes(data[:4], "big")


def _check_session(session: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= session <= SESSION_MAX:
        raise PayloadError(f"session must be {low}..{SESSION_MAX}, got {session}")


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what}: text is not valid UTF-8") from exc


def _expect_len(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise PayloadError(f"{what}: payload must be {size} bytes, got {len(data)}")


class Payload(Protocol):
    """A typed payload: knows its command, encodes itself, decodes from bytes."""

    COMMAND: ClassVar[Command]

    def encode(self) -> bytes:
        """The payload bytes."""
        ...


@dataclass(frozen=True, slots=True)
class Ping:
    """PING (hub → keypad): no payload; the keypad answers ACK and PONG."""

    COMMAND: ClassVar[Command] = Command.PING

    def encode(self) -> bytes:
        """The (empty) payload."""
        return b""

    @classmethod
    def decode(cls, data: bytes) -> Ping:
        """Parse a PING payload (must be empty)."""
        _expect_len(data, 0, "PING")
        return cls()


@dataclass(frozen=True, slots=True)
class Pong:
    """PONG (keypad → hub): the firmware version in ASCII."""

    COMMAND: ClassVar[Command] = Command.PONG
    firmware: str

    def encode(self) -> bytes:
        """The firmware string as ASCII."""
        try:
            raw = self.firmware.encode("ascii")
        except UnicodeEncodeError as exc:
            raise PayloadError("PONG: firmware version must be ASCII") from exc
        if len(raw) > MAX_PAYLOAD:
            raise PayloadError(f"PONG: firmware version longer than {MAX_PAYLOAD} bytes")
        return raw

    @classmethod
    def decode(cls, data: bytes) -> Pong:
        """Parse a PONG; non-ASCII bytes are replaced rather than rejected (it is only shown)."""
        return cls(data.decode("ascii", errors="replace"))


@dataclass(frozen=True, slots=True)
class Prompt:
    """PROMPT (hub → keypad): ask for a rating in `session`, shown for `timeout_s` seconds."""

    COMMAND: ClassVar[Command] = Command.PROMPT
    session: int
    timeout_s: int
    text: str

    def encode(self) -> bytes:
        """session uint32 BE, timeout uint8, UTF-8 text."""
        _check_session(self.session, allow_zero=False)
        if not 0 <= self.timeout_s <= 0xFF:
            raise PayloadError(f"PROMPT: timeout_s must be 0..255, got {self.timeout_s}")
        text = self.text.encode("utf-8")
        if len(text) > PROMPT_TEXT_MAX:
            raise PayloadError(f"PROMPT: text is {len(text)} bytes UTF-8, max {PROMPT_TEXT_MAX}")
        return self.session.to_bytes(4, "big") + bytes((self.timeout_s,)) + text

    @classmethod
    def decode(cls, data: bytes) -> Prompt:
        """Parse a PROMPT payload."""
        if len(data) < 5:
            raise PayloadError(f"PROMPT: payload must be at least 5 bytes, got {len(data)}")
        session = _uint32(data, "PROMPT")
        if session == 0:
            raise PayloadError("PROMPT: session 0 is reserved for free ratings")
        return cls(session, data[4], _utf8(data[5:], "PROMPT"))


@dataclass(frozen=True, slots=True)
class Cancel:
    """CANCEL (hub → keypad): end the prompt of `session`."""

    COMMAND: ClassVar[Command] = Command.CANCEL
    session: int

    def encode(self) -> bytes:
        """session uint32 BE."""
        _check_session(self.session, allow_zero=False)
        return self.session.to_bytes(4, "big")

    @classmethod
    def decode(cls, data: bytes) -> Cancel:
        """Parse a CANCEL payload."""
        _expect_len(data, 4, "CANCEL")
        session = _uint32(data, "CANCEL")
        if session == 0:
            raise PayloadError("CANCEL: session 0 is reserved for free ratings")
        return cls(session)


@dataclass(frozen=True, slots=True)
class Show:
    """SHOW (hub → keypad): a message shown for a few seconds."""

    COMMAND: ClassVar[Command] = Command.SHOW
    text: str

    def encode(self) -> bytes:
        """UTF-8 text."""
        raw = self.text.encode("utf-8")
        if len(raw) > SHOW_TEXT_MAX:
            raise PayloadError(f"SHOW: text is {len(raw)} bytes UTF-8, max {SHOW_TEXT_MAX}")
        return raw

    @classmethod
    def decode(cls, data: bytes) -> Show:
        """Parse a SHOW payload."""
        return cls(_utf8(data, "SHOW"))


@dataclass(frozen=True, slots=True)
class Key:
    """KEY (keypad → hub): a rating `level` 1–5 with reason codes, in `session` (0: free rating)."""

    COMMAND: ClassVar[Command] = Command.KEY
    session: int
    level: int
    reasons: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """session uint32 BE, level uint8, reasons bitmask uint8."""
        _check_session(self.session, allow_zero=True)
        if not 1 <= self.level <= 5:
            raise PayloadError(f"KEY: level must be 1..5, got {self.level}")
        return self.session.to_bytes(4, "big") + bytes((self.level, reasons_to_mask(self.reasons)))

    @classmethod
    def decode(cls, data: bytes) -> Key:
        """Parse a KEY payload; reasons come out in code order (`R1` first)."""
        _expect_len(data, 6, "KEY")
        level = data[4]
        if not 1 <= level <= 5:
            raise PayloadError(f"KEY: level must be 1..5, got {level}")
        return cls(_uint32(data, "KEY"), level, mask_to_reasons(data[5]))


def reasons_to_mask(reasons: Iterable[str]) -> int:
    """Reason codes (`R1`..`R8`) to the KEY bitmask (bit n = `R{n+1}`)."""
    mask = 0
    for code in reasons:
        if code not in REASON_CODES:
            raise PayloadError(f"KEY: unknown reason code {code!r}, expected R1..R8")
        mask |= 1 << REASON_CODES.index(code)
    return mask


def mask_to_reasons(mask: int) -> tuple[str, ...]:
    """The KEY bitmask to reason codes, lowest bit first."""
    return tuple(code for bit, code in enumerate(REASON_CODES) if mask & (1 << bit))


@dataclass(frozen=True, slots=True)
class Status:
    """STATUS (keypad → hub): the heartbeat with fault flags."""

    COMMAND: ClassVar[Command] = Command.STATUS
    flags: int = 0

    def encode(self) -> bytes:
        """flags uint8."""
        _check_byte("STATUS flags", int(self.flags))
        return bytes((int(self.flags),))

    @classmethod
    def decode(cls, data: bytes) -> Status:
        """Parse a STATUS payload."""
        _expect_len(data, 1, "STATUS")
        return cls(data[0])

    @property
    def faults(self) -> tuple[str, ...]:
        """Names of the set flags, e.g. ("display_fault", "tamper"); unnamed bits as `bit<n>`."""
        return tuple(_FLAG_NAMES.get(bit, f"bit{bit}") for bit in range(8) if self.flags & (1 << bit))


_FLAG_NAMES: Final = {
    StatusFlag.DISPLAY_FAULT.bit_length() - 1: "display_fault",
    StatusFlag.KEY_FAULT.bit_length() - 1: "key_fault",
    StatusFlag.TAMPER.bit_length() - 1: "tamper",
}


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (both ways): the SEQ and CMD of the frame acknowledged."""

    COMMAND: ClassVar[Command] = Command.ACK
    seq: int
    cmd: int

    def encode(self) -> bytes:
        """seq uint8, cmd uint8."""
        _check_byte("ACK seq", self.seq)
        _check_byte("ACK cmd", self.cmd)
        return bytes((self.seq, self.cmd))

    @classmethod
    def decode(cls, data: bytes) -> Ack:
        """Parse an ACK payload."""
        _expect_len(data, 2, "ACK")
        return cls(data[0], data[1])


@dataclass(frozen=True, slots=True)
class Nak:
    """NAK (both ways): the SEQ and CMD of the frame refused, and why (a `NakCode` when known)."""

    COMMAND: ClassVar[Command] = Command.NAK
    seq: int
    cmd: int
    code: int

    def encode(self) -> bytes:
        """seq uint8, cmd uint8, code uint8."""
        _check_byte("NAK seq", self.seq)
        _check_byte("NAK cmd", self.cmd)
        _check_byte("NAK code", self.code)
        return bytes((self.seq, self.cmd, self.code))

    @classmethod
    def decode(cls, data: bytes) -> Nak:
        """Parse a NAK payload; an unknown code is kept as a plain int."""
        _expect_len(data, 3, "NAK")
        code: int
        try:
            code = NakCode(data[2])
        except ValueError:
            code = data[2]
        return cls(data[0], data[1], code)

    @property
    def reason(self) -> str:
        """The code as words, e.g. `busy` or `error code 9`."""
        try:
            return NakCode(self.code).label
        except ValueError:
            return f"error code {self.code}"


AnyPayload: TypeAlias = Ping | Pong | Prompt | Cancel | Show | Key | Status | Ack | Nak

_DECODERS: Final[dict[int, Callable[[bytes], AnyPayload]]] = {
    Command.PING: Ping.decode,
    Command.PONG: Pong.decode,
    Command.PROMPT: Prompt.decode,
    Command.CANCEL: Cancel.decode,
    Command.SHOW: Show.decode,
    Command.KEY: Key.decode,
    Command.STATUS: Status.decode,
    Command.ACK: Ack.decode,
    Command.NAK: Nak.decode,
}


def make_frame(addr: int, seq: int, payload: Payload) -> Frame:
    """A frame carrying `payload` under its own command byte."""
    return Frame(addr=addr, seq=seq, cmd=payload.COMMAND, payload=payload.encode())


def decode_payload(frame: Frame) -> AnyPayload:
    """The typed payload of `frame`; `PayloadError` for an unknown command or a wrong layout."""
    decoder = _DECODERS.get(frame.cmd)
    if decoder is None:
        raise PayloadError(f"unknown command 0x{frame.cmd:02X}")
    return decoder(frame.payload)


@dataclass(frozen=True, slots=True)
class DroppedFrame:
    """Bytes the decoder discarded: why, how many, the first of them, and the ADDR byte if any."""

    reason: DropReason
    size: int
    data: bytes
    addr: int | None = None


DecodeItem: TypeAlias = Frame | DroppedFrame


class FrameDecoder:
    """Incremental HKP/1 frame finder with resynchronisation and the line-silence rule.

    Feed it bytes as they arrive; it returns frames and drops in wire order. A frame failing a
    check is dropped and the search resumes at the byte after its STX. A partial frame followed by
    `silence_s` of silence is dropped as noise (by `expire`, or by the next `feed`).
    """

    def __init__(
        self,
        silence_s: float = SILENCE_AT_9600_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if silence_s <= 0:
            raise CodecError(f"silence_s must be positive, got {silence_s}")
        self.silence_s = silence_s
        self._clock = clock
        self._buf = bytearray()
        # Bytes at the head of the buffer that belong to a drop already reported (the rest of a
        # failed frame after its STX): skipping them is not counted as noise a second time.
        self._covered = 0
        self._noise = bytearray()
        self._noise_size = 0
        self._last_rx: float | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: a partial frame, plus noise not reported yet."""
        return len(self._buf) + self._noise_size

    @property
    def deadline(self) -> float | None:
        """When held bytes turn into noise if nothing more arrives (None if nothing is held)."""
        if self._last_rx is None or not self.buffered:
            return None
        return self._last_rx + self.silence_s

    def reset(self) -> None:
        """Forget everything held (e.g. when the port is closed)."""
        self._buf.clear()
        self._covered = 0
        self._noise.clear()
        self._noise_size = 0
        self._last_rx = None

    def feed(self, data: bytes, now: float | None = None) -> list[DecodeItem]:
        """Add bytes received at `now` (default: the clock); return the frames and drops made."""
        if now is None:
            now = self._clock()
        out = self.expire(now)
        self._buf += data
        self._last_rx = now
        self._scan(out, final=False)
        return out

    def expire(self, now: float | None = None) -> list[DecodeItem]:
        """Apply the silence rule at `now`: bytes held past `silence_s` of quiet are noise."""
        if now is None:
            now = self._clock()
        deadline = self.deadline
        out: list[DecodeItem] = []
        if deadline is not None and now >= deadline:
            self._scan(out, final=True)
        return out

    def _consume(self, count: int) -> None:
        del self._buf[:count]
        self._covered = max(0, self._covered - count)

    def _skip(self, count: int) -> None:
        """Skip bytes before an STX: noise, unless already reported as part of a dropped frame."""
        fresh = count - min(count, self._covered)
        if fresh:
            room = MAX_FRAME - len(self._noise)
            if room > 0:
                self._noise += self._buf[count - fresh : count - fresh + min(fresh, room)]
            self._noise_size += fresh
        self._consume(count)

    def _flush_noise(self, out: list[DecodeItem]) -> None:
        if self._noise_size:
            out.append(DroppedFrame(DropReason.NOISE, self._noise_size, bytes(self._noise)))
            self._noise.clear()
            self._noise_size = 0

    def _drop_at_stx(self, out: list[DecodeItem], reason: DropReason, size: int) -> None:
        """Drop a failed frame starting at buf[0]; the search resumes at the byte after its STX."""
        self._flush_noise(out)
        addr = self._buf[1] if len(self._buf) > 1 else None
        out.append(DroppedFrame(reason, size, bytes(self._buf[:size]), addr))
        self._consume(1)
        self._covered = max(self._covered, size - 1)

    def _scan(self, out: list[DecodeItem], *, final: bool) -> None:
        """Take frames off the buffer; with `final`, whatever cannot complete is dropped too."""
        while self._buf:
            start = self._buf.find(STX)
            if start < 0:
                self._skip(len(self._buf))
                break
            if start:
                self._skip(start)
            if len(self._buf) < HEADER_SIZE:
                if final:
                    self._drop_at_stx(out, DropReason.TIMEOUT, len(self._buf))
                    continue
                break
            length = self._buf[4]
            if length > MAX_PAYLOAD:
                self._drop_at_stx(out, DropReason.BAD_LEN, HEADER_SIZE)
                continue
            total = HEADER_SIZE + length + TRAILER_SIZE
            if len(self._buf) < total:
                if final:
                    self._drop_at_stx(out, DropReason.TIMEOUT, len(self._buf))
                    continue
                break
            if self._buf[total - 1] != ETX:
                self._drop_at_stx(out, DropReason.BAD_ETX, total)
                continue
            body = bytes(self._buf[1 : HEADER_SIZE + length])
            if crc16(body) != int.from_bytes(self._buf[total - 3 : total - 1], "little"):
                self._drop_at_stx(out, DropReason.BAD_CRC, total)
                continue
            self._flush_noise(out)
            out.append(Frame(addr=body[0], seq=body[1], cmd=body[2], payload=body[4:]))
            self._consume(total)
        if final or self._buf:
            self._flush_noise(out)
