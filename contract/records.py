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

ID_REGEX = r"[A-Za-z0-9_-]{1,64}"
"""`node_id` and `device_id` (§1)."""
WINDOW_REGEX = r"[A-Za-z0-9_-]{1,16}"
"""`window` (§1)."""
HALL_CODE_REGEX = r"[0-9]{6}"
"""`hall_code`: a 6-digit administrative division code (§7)."""
UTC_TIMESTAMP_REGEX = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"
"""`created_at` and every time the hub writes: RFC 3339 UTC with milliseconds."""
UTC_TIMESTAMP_EXAMPLE = "2024-05-01T08:30:00.123Z"

ID_PATTERN = re.compile(f"^{ID_REGEX}$")
WINDOW_PATTERN = re.compile(f"^{WINDOW_REGEX}$")
_UTC_TIMESTAMP = re.compile(UTC_TIMESTAMP_REGEX)


class Kind(enum.StrEnum):
    """Record kinds; telemetry (`device_status`) is the first to be shed when the outbox fills."""

    EVALUATION = "evaluation"
    ALERT = "alert"
    SCAN = "scan"
    CARD = "card"
    PRINT = "print"
    DEVICE_STATUS = "device_status"
    FOLLOWUP = "followup"
    WINDOW = "window"


class Channel(enum.StrEnum):
    """How a citizen gave a rating."""

    KEYPAD = "keypad"
    TERMINAL = "terminal"
    PAD = "pad"
    QR = "qr"


KINDS: tuple[str, ...] = tuple(str(kind) for kind in Kind)
CHANNELS: tuple[str, ...] = tuple(str(channel) for channel in Channel)


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


def parse_timestamp(text: str) -> datetime:
    """Read a timestamp in the one form the hub writes (`2024-05-01T08:30:00.123Z`), strictly."""
    if not _UTC_TIMESTAMP.fullmatch(text):
        raise ValueError(f"must be RFC 3339 UTC with milliseconds, like {UTC_TIMESTAMP_EXAMPLE}")
    try:
        # fromisoformat, not strptime: the pattern is already checked, and it is ~10x faster on
        # the uplink's and the receiver's hot path (every record's `created_at`).
        parsed = datetime.fromisoformat(text[:-1])
    except ValueError as exc:
        raise ValueError(f"is not a real date and time ({exc})") from None
    return parsed.replace(tzinfo=UTC)


def normalized_utc(valid_rfc3339: str) -> str:
    """A valid RFC 3339 timestamp as `format_utc` writes it; one already in that form is kept as is.

    Most devices send that form, and parsing and formatting it again was ~4 % of a rating's CPU.
    """
    if _UTC_TIMESTAMP.fullmatch(valid_rfc3339):
        return valid_rfc3339
    return format_utc(parse_rfc3339(valid_rfc3339))


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; raise ValueError otherwise."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return moment


def evaluation_data(
    *,
    level: int,
    reasons: list[str],
    comment: str | None,
    channel: str,
    device_id: str,
    window: str | None,
    staff_id: str | None,
    case_no: str | None,
    item_code: str | None,
    session: int | None,
    citizen_ref: str | None,
    citizen_masked: str | None,
    device_ts: str | None,
    node_id: str,
    hall_code: str,
    flags: list[str],
) -> dict[str, Any]:
    """The `data` of an evaluation record (§1), every key present, in the order §1 lists them.

    `contract.wire.EvaluationData` checks the same keys on the platform's side (a test holds the
    two together); optional extensions such as `item_name` are added by the caller.
    """
    return {
        "level": level,
        "reasons": reasons,
        "comment": comment,
        "channel": channel,
        "device_id": device_id,
        "window": window,
        "staff_id": staff_id,
        "case_no": case_no,
        "item_code": item_code,
        "session": session,
        "citizen_ref": citizen_ref,
        "citizen_masked": citizen_masked,
        "device_ts": device_ts,
        "node_id": node_id,
        "hall_code": hall_code,
        "flags": flags,
    }


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
