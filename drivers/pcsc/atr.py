"""ATR parsing (ISO/IEC 7816-3) and the rule that decides which cards the driver may talk to.

The rule is default-deny; see `drivers/pcsc/driver.py` for why. `classify` returns:

- `CONTACTLESS` for a PC/SC Part 3 pseudo-ATR (`3B 8n 80 01 <historical bytes> TCK`), which a
  contactless reader builds for the card in its field (PICC). Only `FF CA 00 00 00` is sent to it:
  that command is answered by the reader from its anticollision data and never reaches a card
  application, so a contactless bank card sees nothing either.
- `SOCIAL_SECURITY` for a contact card whose ATR matches one of the 社会保障卡 patterns.
- `OTHER` for everything else, including every bank/EMV card and every ATR that does not parse:
  no APDU at all.

ATR patterns use the notation of pcsc-tools' `smartcard_list.txt`: hex bytes separated by spaces,
`.` for any hex digit (so `..` is any byte).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

__all__ = [
    "DEFAULT_SSC_ATR_PATTERNS",
    "Atr",
    "AtrError",
    "AtrPattern",
    "CardClass",
    "classify",
    "parse_atr",
]

_TS_VALUES: Final = (0x3B, 0x3F)  # direct and inverse convention
_MAX_ATR_LEN: Final = 33
_PSEUDO_ATR_INTERFACE: Final = MappingProxyType({"TD1": 0x80, "TD2": 0x01})

DEFAULT_SSC_ATR_PATTERNS: Final = (
    # 社会保障卡 COS ATR as published for the social-security card COS ("社保系列11《ATR》",
    # shuzhiduo.com/A/pRdBrxeedn): `3B 6D 00 00` (TB1 = TC1 = 00, 13 historical bytes, T=0),
    # then T1-T2 the chip maker's registration id, T3-T5 COS id and version, T6-T7 card maker,
    # T8-T13 date and serial. Chip makers listed there: 00 81 华大, 00 85 华虹, 00 87 大唐, 00 90 复旦微.
    "3B 6D 00 00 00 81 .. .. .. .. .. .. .. .. .. .. ..",
    "3B 6D 00 00 00 85 .. .. .. .. .. .. .. .. .. .. ..",
    "3B 6D 00 00 00 87 .. .. .. .. .. .. .. .. .. .. ..",
    "3B 6D 00 00 00 90 .. .. .. .. .. .. .. .. .. .. ..",
)
"""Contact ATRs of 社会保障卡 that the driver will SELECT the SSSE application on.

Only one COS vendor's description was found; a region whose cards answer another ATR adds its
pattern (from `pcsc_scan`) through `PcscDriver(..., ssc_atr_patterns=...)`."""


class AtrError(ValueError):
    """The bytes are not a well-formed ATR."""


class CardClass(enum.StrEnum):
    """What the driver may do with a card, decided from its ATR alone."""

    CONTACTLESS = "contactless"
    SOCIAL_SECURITY = "social_security"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Atr:
    """A parsed ATR. `interface` maps names such as `TA1`, `TD2` to their byte."""

    raw: bytes
    ts: int
    t0: int
    interface: Mapping[str, int]
    protocols: tuple[int, ...]
    historical: bytes
    tck: int | None

    @property
    def is_contactless_pseudo_atr(self) -> bool:
        """True for the ATR a PC/SC contactless reader makes up for a PICC (PC/SC Part 3)."""
        return (
            self.ts == 0x3B
            and self.t0 >> 4 == 0x8
            and dict(self.interface) == dict(_PSEUDO_ATR_INTERFACE)
            and self.tck is not None
        )


def parse_atr(raw: bytes) -> Atr:
    """Parse an ATR; raise `AtrError` if it is truncated, too long or fails its TCK check."""
    if not 2 <= len(raw) <= _MAX_ATR_LEN:
        raise AtrError(f"an ATR is 2..{_MAX_ATR_LEN} bytes, not {len(raw)}")
    ts, t0 = raw[0], raw[1]
    if ts not in _TS_VALUES:
        raise AtrError(f"TS must be 3B or 3F, not {ts:02X}")
    interface: dict[str, int] = {}
    protocols: list[int] = []
    pos = 2
    level = 1
    present = t0 >> 4
    while True:
        for bit, name in ((0x1, "TA"), (0x2, "TB"), (0x4, "TC"), (0x8, "TD")):
            if present & bit:
                if pos >= len(raw):
                    raise AtrError(f"ATR truncated: {name}{level} missing")
                interface[f"{name}{level}"] = raw[pos]
                pos += 1
        if not present & 0x8:
            break
        td = interface[f"TD{level}"]
        protocols.append(td & 0x0F)
        present = td >> 4
        level += 1
    end_hist = pos + (t0 & 0x0F)
    if end_hist > len(raw):
        raise AtrError("ATR truncated: historical bytes missing")
    historical = bytes(raw[pos:end_hist])
    tck: int | None = None
    if any(protocol != 0 for protocol in protocols):
        if len(raw) != end_hist + 1:
            raise AtrError("ATR must end with exactly one TCK byte")
        tck = raw[end_hist]
        check = 0
        for value in raw[1:]:
            check ^= value
        if check:
            raise AtrError("ATR fails its TCK check")
    elif len(raw) != end_hist:
        raise AtrError(f"ATR has {len(raw) - end_hist} unexpected bytes after its historical bytes")
    return Atr(
        raw=bytes(raw),
        ts=ts,
        t0=t0,
        interface=MappingProxyType(interface),
        protocols=tuple(protocols),
        historical=historical,
        tck=tck,
    )


_PATTERN_TOKEN: Final = re.compile(r"[0-9A-Fa-f.]{2}")


@dataclass(frozen=True, slots=True)
class AtrPattern:
    """An ATR with wildcards: `matches` compares the bytes under `mask` (same length only)."""

    value: bytes
    mask: bytes
    text: str

    @classmethod
    def parse(cls, text: str) -> AtrPattern:
        """Read `3B 6D 00 .. 8.` notation; raise `ValueError` naming the bad token."""
        tokens = text.split()
        if not tokens:
            raise ValueError("an ATR pattern cannot be empty")
        value = bytearray()
        mask = bytearray()
        for token in tokens:
            if not _PATTERN_TOKEN.fullmatch(token):
                raise ValueError(
                    f"ATR pattern {text!r}: {token!r} is not two hex digits or dots (e.g. 3B, .., 8.)"
                )
            value.append(int(token.replace(".", "0"), 16))
            mask.append((0x00 if token[0] == "." else 0xF0) | (0x00 if token[1] == "." else 0x0F))
        return cls(value=bytes(value), mask=bytes(mask), text=" ".join(tokens).upper())

    def matches(self, atr: bytes) -> bool:
        """True if `atr` has the pattern's length and agrees with it on every unmasked bit."""
        return len(atr) == len(self.value) and all(
            byte & mask == want for byte, mask, want in zip(atr, self.mask, self.value, strict=True)
        )


def classify(raw: bytes, ssc_patterns: Iterable[AtrPattern]) -> CardClass:
    """Apply the default-deny rule: see the module docstring."""
    try:
        atr = parse_atr(raw)
    except AtrError:
        return CardClass.OTHER
    if atr.is_contactless_pseudo_atr:
        return CardClass.CONTACTLESS
    if any(pattern.matches(atr.raw) for pattern in ssc_patterns):
        return CardClass.SOCIAL_SECURITY
    return CardClass.OTHER
