"""Records as CONTRACTS §1 defines them: a UUIDv7 id, a node-local seq, a kind, a UTC time, data."""

from __future__ import annotations

import enum
import os
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
WINDOW_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


class Kind(enum.StrEnum):
    """Record kinds; telemetry (`device_status`) is the first to be shed when the outbox fills."""

    EVALUATION = "evaluation"
    ALERT = "alert"
    SCAN = "scan"
    CARD = "card"
    PRINT = "print"
    DEVICE_STATUS = "device_status"


class Channel(enum.StrEnum):
    """How a citizen gave a rating."""

    KEYPAD = "keypad"
    TERMINAL = "terminal"
    PAD = "pad"
    QR = "qr"


class _UuidV7Source:
    """UUIDv7 (RFC 9562): 48-bit Unix milliseconds, a 12-bit counter in `rand_a`, 62 random bits.

    Written here rather than calling `uuid6.uuid7()` on the ingest path: that costs an `os.urandom`
    call and a `UUID` object per id (~6 µs, 5 % of the hub's CPU per rating when measured), and it
    pushes its timestamp 1 ms ahead for every id beyond 1,000 a second. Here the counter (restarted
    at a random value each millisecond) keeps ids of one millisecond in order, and the random bits
    come from `os.urandom` in 4 KiB draws.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0
        self._pool = b""
        self._pool_pos = 0

    def _random(self) -> int:
        if self._pool_pos + 8 > len(self._pool):
            self._pool, self._pool_pos = os.urandom(4096), 0
        value = int.from_bytes(self._pool[self._pool_pos : self._pool_pos + 8], "big")
        self._pool_pos += 8
        return value

    def new(self) -> str:
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms > self._last_ms:
                self._last_ms, self._counter = now_ms, self._random() & 0x7FF
            elif self._counter < 0xFFF:
                self._counter += 1
            else:  # 4,096 ids in one millisecond (or the clock went back): borrow the next one
                self._last_ms, self._counter = self._last_ms + 1, 0
            value = (
                (self._last_ms & 0xFFFF_FFFF_FFFF) << 80
                | 0x7 << 76
                | self._counter << 64
                | 0b10 << 62
                | self._random() & 0x3FFF_FFFF_FFFF_FFFF
            )
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_UUID_V7 = _UuidV7Source()


def new_record_id() -> str:
    """A time-ordered UUID version 7, created once at first capture."""
    return _UUID_V7.new()


def format_utc(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2026-11-22T09:30:00.123Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


_second_text: tuple[int, str] = (-1, "")


def utc_now() -> str:
    """The hub's clock as an RFC 3339 UTC string with milliseconds.

    The text of the current second is kept: every record and message takes the time, and formatting
    a datetime each time was ~5 % of the hub's CPU per rating when measured.
    """
    global _second_text
    second, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached_second, text = _second_text
    if second != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_text = (second, text)
    return f"{text}.{nanos // 1_000_000:03d}Z"


_CANONICAL_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def normalized_utc(valid_rfc3339: str) -> str:
    """A valid RFC 3339 timestamp as `format_utc` writes it; one already in that form is kept as is.

    Most devices send that form, and parsing and formatting it again was ~4 % of a rating's CPU.
    """
    if _CANONICAL_UTC.fullmatch(valid_rfc3339):
        return valid_rfc3339
    return format_utc(parse_rfc3339(valid_rfc3339))


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; raise ValueError otherwise."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return moment


@dataclass(slots=True)
class Record:
    """One captured record. `seq` is assigned by the outbox at commit and is 0 until then."""

    kind: Kind
    data: dict[str, Any]
    id: str = field(default_factory=new_record_id)
    created_at: str = field(default_factory=utc_now)
    seq: int = 0
    sealed: str | None = field(default=None, repr=False)  # SM4-sealed identity; never on the wire
    wire_json: str = field(default="", repr=False)  # the committed wire JSON, set by the outbox

    def to_wire(self) -> dict[str, Any]:
        """The record as the contracts carry it (MQTT events, pull API, uplink)."""
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": str(self.kind),
            "created_at": self.created_at,
            "data": self.data,
        }
