"""ISO/IEC 7816-4 command APDUs the PC/SC driver sends, and response APDU parsing. Pure: no I/O.

Only short APDUs are needed (no command sends more than 255 bytes or expects more than 256).
`Response` hides its data in its repr: a record read from a card may hold personal data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "GET_UID",
    "SW_OK",
    "ApduError",
    "Response",
    "command",
    "get_response",
    "read_record",
    "select_aid",
    "select_ef",
]

SW_OK: Final = 0x9000
_MAX_LC: Final = 255
_MAX_LE: Final = 256


class ApduError(ValueError):
    """A command cannot be encoded, or a response is too short to hold a status word."""


def _byte(name: str, value: int) -> int:
    """Check that a header field fits in one byte."""
    if not 0 <= value <= 0xFF:
        raise ApduError(f"{name} must be 0..255, not {value}")
    return value


def command(cla: int, ins: int, p1: int, p2: int, data: bytes = b"", le: int | None = None) -> bytes:
    """Encode a short command APDU (cases 1 to 4). `le` = 256 is sent as `00`, as the standard says."""
    header = bytes((_byte("CLA", cla), _byte("INS", ins), _byte("P1", p1), _byte("P2", p2)))
    if len(data) > _MAX_LC:
        raise ApduError(f"short APDUs carry at most {_MAX_LC} data bytes, not {len(data)}")
    body = bytes((len(data),)) + data if data else b""
    if le is None:
        return header + body
    if not 1 <= le <= _MAX_LE:
        raise ApduError(f"Le must be 1..{_MAX_LE}, not {le}")
    return header + body + bytes((le % _MAX_LE,))


GET_UID: Final = command(0xFF, 0xCA, 0x00, 0x00, le=_MAX_LE)
"""PC/SC Part 3 GET DATA (`FF CA 00 00 00`): the reader answers with the card's UID itself."""


def select_aid(aid: bytes) -> bytes:
    """SELECT by DF name (application identifier): `00 A4 04 00 Lc AID`."""
    if not aid:
        raise ApduError("an AID cannot be empty")
    return command(0x00, 0xA4, 0x04, 0x00, aid)


def select_ef(file_id: int) -> bytes:
    """SELECT an elementary file under the current DF by its 2-byte identifier: `00 A4 02 00 02 FID`."""
    if not 0 <= file_id <= 0xFFFF:
        raise ApduError(f"a file identifier is 2 bytes, not {file_id:#x}")
    return command(0x00, 0xA4, 0x02, 0x00, file_id.to_bytes(2, "big"))


def read_record(record_id: int, length: int) -> bytes:
    """READ RECORD of the current EF by record identifier (P2 = 00): `00 B2 id 00 Le`."""
    return command(0x00, 0xB2, record_id, 0x00, le=length)


def get_response(length: int) -> bytes:
    """GET RESPONSE (`00 C0 00 00 Le`): fetch what a T=0 card announced with `61 xx`."""
    return command(0x00, 0xC0, 0x00, 0x00, le=length)


@dataclass(frozen=True, slots=True)
class Response:
    """A response APDU: data then SW1 SW2. The data never shows in the repr."""

    data: bytes = field(repr=False)
    sw1: int
    sw2: int

    @classmethod
    def parse(cls, raw: bytes) -> Response:
        """Split a raw response into data and status word."""
        if len(raw) < 2:
            raise ApduError(f"a response needs at least SW1 SW2, got {len(raw)} bytes")
        return cls(data=bytes(raw[:-2]), sw1=raw[-2], sw2=raw[-1])

    @property
    def sw(self) -> int:
        """The status word as one number, e.g. 0x9000."""
        return (self.sw1 << 8) | self.sw2

    @property
    def ok(self) -> bool:
        """True for `90 00`."""
        return self.sw == SW_OK

    def __str__(self) -> str:
        """Status word and data length only, for logs."""
        return f"SW {self.sw:04X} ({len(self.data)} data bytes)"
