"""Records as CONTRACTS §1 defines them: a UUIDv7 id, a node-local seq, a kind, a UTC time, data."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uuid6

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


def new_record_id() -> str:
    """A time-ordered UUID version 7, created once at first capture."""
    return str(uuid6.uuid7())


def format_utc(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. `2026-11-22T09:30:00.123Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now() -> str:
    """The hub's clock as an RFC 3339 UTC string with milliseconds."""
    return format_utc(datetime.now(UTC))


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
