"""The 256-byte text block of an ID card read (CONTRACTS.md §4): layouts, decoder, test encoder.

The block is UCS-2 little-endian, space-padded; bytes 248–249 hold the card type flag, which picks
the layout. Each layout is a table of byte spans `[start, end)` (data, not code), so a correction is
a one-line change:

- resident identity card (flag blank): the positions given in CONTRACTS.md §4.
- Hong Kong/Macao/Taiwan residence permit (`J`): as the resident card for bytes 0–219 (the nation
  span 32–35 is reserved), then travel-permit number 220–237, issue count 238–241, reserved
  242–247, flag, reserved 250–255.
- foreigner's permanent residence card, old layout (`I`): English name 0–119, sex 120–121, permit
  number 122–151 (15 characters), nationality code 152–157 (ISO 3166 alpha-3), Chinese name
  158–187, valid from 188–203, valid until 204–219, birth 220–235, card version 236–239, issuing
  office code 240–247, flag, reserved 250–255.
- foreigner's permanent residence card, 2023 layout (`Y`): Chinese name 0–29, sex 30–31, renewal
  count 32–35, birth 36–51, English name characters 1–35 at 52–121, ID number 122–157 (18
  characters), reserved 158–187, valid from 188–203, valid until 204–219, English name characters
  36–46 at 220–241, nationality code 242–247, flag, link to the previous permit number 250–255.

Source of the J/I/Y positions: the Ministry of Public Security layouts as published in reader
vendors' SDK headers and sample code (structure definitions and per-field offsets in open-source
reader integrations, two independent ones agreeing); they are not taken from the standard itself,
which we could not consult. Tests build blocks to these tables; a real card of each kind should
be checked against them once on site.

The photo is not part of this block and is never decoded. Decoded values that identify a person
(names, numbers, address, birth date, nation) are hidden from `CardText`'s repr; error messages
never quote them.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from drivers.idcard.codec import TEXT_LEN

__all__ = [
    "LAYOUTS",
    "NO_EXPIRY",
    "CardText",
    "CardType",
    "Layout",
    "Sex",
    "Span",
    "TextBlockError",
    "decode_text_block",
    "encode_text_block",
]

NO_EXPIRY: Final = "长期"
"""`valid_until` of a card that does not expire."""

_ENCODING: Final = "utf-16-le"
_PAD: Final = " "
_FLAG_SPAN_START: Final = 248


class TextBlockError(ValueError):
    """The text block does not decode under its layout (the message never quotes its content)."""


class CardType(enum.StrEnum):
    """The kind of card, as reported in `CardRead.card_type`."""

    RESIDENT = "resident"
    HK_MO_TW_PERMIT = "hk_mo_tw_permit"
    FOREIGN_PERMANENT = "foreign_permanent"


class Sex(enum.StrEnum):
    """Sex as coded on the card (GB/T 2261.1): 0 unknown, 1 male, 2 female, 9 unstated."""

    UNKNOWN = "unknown"
    MALE = "male"
    FEMALE = "female"
    UNSTATED = "unstated"


_SEX_CODES: Final[Mapping[str, Sex]] = MappingProxyType(
    {"0": Sex.UNKNOWN, "1": Sex.MALE, "2": Sex.FEMALE, "9": Sex.UNSTATED}
)


@dataclass(frozen=True, slots=True)
class Span:
    """A field's byte range `[start, end)` in the block (even offsets: 2 bytes a character)."""

    start: int
    end: int

    @property
    def chars(self) -> int:
        """How many UCS-2 characters fit."""
        return (self.end - self.start) // 2


@dataclass(frozen=True, slots=True)
class Layout:
    """One card layout: its type flag, the card type it reports, and its field spans."""

    key: str
    flag: str
    card_type: CardType
    spans: Mapping[str, Span]


def _layout(key: str, flag: str, card_type: CardType, spans: dict[str, tuple[int, int]]) -> Layout:
    """Build a layout table, checking the spans are aligned, inside the block and disjoint."""
    built = {name: Span(start, end) for name, (start, end) in spans.items()}
    built["type_flag"] = Span(_FLAG_SPAN_START, _FLAG_SPAN_START + 2)
    ordered = sorted(built.values(), key=lambda span: span.start)
    for span in ordered:
        if span.start % 2 or span.end % 2 or not 0 <= span.start < span.end <= TEXT_LEN:
            raise ValueError(f"layout {key}: bad span {span}")
    for first, second in itertools.pairwise(ordered):
        if first.end > second.start:
            raise ValueError(f"layout {key}: overlapping spans {first} and {second}")
    return Layout(key, flag, card_type, MappingProxyType(built))


_VALIDITY: Final = {
    "valid_from": (188, 204),
    "valid_until": (204, 220),
}

LAYOUTS: Final[Mapping[str, Layout]] = MappingProxyType(
    {
        layout.flag: layout
        for layout in (
            _layout(
                "resident",
                "",
                CardType.RESIDENT,
                {
                    "name": (0, 30),
                    "sex": (30, 32),
                    "nation": (32, 36),
                    "birth": (36, 52),
                    "address": (52, 122),
                    "id_number": (122, 158),
                    "authority": (158, 188),
                    **_VALIDITY,
                },
            ),
            _layout(
                "J",
                "J",
                CardType.HK_MO_TW_PERMIT,
                {
                    "name": (0, 30),
                    "sex": (30, 32),
                    "birth": (36, 52),
                    "address": (52, 122),
                    "id_number": (122, 158),
                    "authority": (158, 188),
                    **_VALIDITY,
                    "pass_number": (220, 238),
                    "issue_count": (238, 242),
                },
            ),
            _layout(
                "I",
                "I",
                CardType.FOREIGN_PERMANENT,
                {
                    "english_name": (0, 120),
                    "sex": (120, 122),
                    "id_number": (122, 152),
                    "nation": (152, 158),
                    "name": (158, 188),
                    **_VALIDITY,
                    "birth": (220, 236),
                    "card_version": (236, 240),
                    "authority": (240, 248),
                },
            ),
            _layout(
                "Y",
                "Y",
                CardType.FOREIGN_PERMANENT,
                {
                    "name": (0, 30),
                    "sex": (30, 32),
                    "renewal_count": (32, 36),
                    "birth": (36, 52),
                    "english_name": (52, 122),
                    "id_number": (122, 158),
                    **_VALIDITY,
                    "english_name_ext": (220, 242),
                    "nation": (242, 248),
                    "prior_link": (250, 256),
                },
            ),
        )
    }
)


@dataclass(frozen=True, slots=True)
class CardText:
    """The decoded text of a card. Identifying values are excluded from the repr.

    `name` is the Chinese name, or the English name when a foreigner's card has no Chinese one.
    Dates are ISO `YYYY-MM-DD`; `valid_until` may be `长期`.
    """

    layout: str
    card_type: CardType
    sex: Sex
    valid_from: str
    valid_until: str
    id_number: str = field(repr=False)
    name: str = field(repr=False)
    english_name: str = field(repr=False)
    birth: str = field(repr=False)
    nation: str = field(repr=False)
    address: str = field(repr=False)

    @property
    def birth_year(self) -> int:
        """The year of birth (all a `CardRead` keeps of the birth date)."""
        return int(self.birth[:4])


def _raw(block: bytes, span: Span) -> str:
    """The characters of a span, undecodable units replaced (decoding never raises)."""
    return block[span.start : span.end].decode(_ENCODING, errors="replace")


def _clean(text: str) -> str:
    """Drop the padding: spaces and NULs at either end."""
    return text.strip(" \x00")


def _date(value: str, field_name: str) -> str:
    """`YYYYMMDD` to ISO `YYYY-MM-DD`; raise (without quoting the value) if it is not a date."""
    if len(value) != 8 or not value.isascii() or not value.isdigit():
        raise TextBlockError(f"{field_name} is not a YYYYMMDD date")
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:])).isoformat()
    except ValueError:
        raise TextBlockError(f"{field_name} is not a valid calendar date") from None


def _layout_for(block: bytes) -> Layout:
    """Pick the layout by the type flag at bytes 248–249 (blank: resident card)."""
    flag = _clean(_raw(block, Span(_FLAG_SPAN_START, _FLAG_SPAN_START + 2)))
    layout = LAYOUTS.get(flag)
    if layout is None:
        shown = flag.encode("unicode_escape").decode("ascii")
        raise TextBlockError(f"unknown card type flag {shown!r} at bytes 248-249")
    return layout


def decode_text_block(block: bytes) -> CardText:
    """Decode a 256-byte text block by the layout its type flag selects."""
    if len(block) != TEXT_LEN:
        raise TextBlockError(f"a text block is {TEXT_LEN} bytes, got {len(block)}")
    layout = _layout_for(block)
    spans = layout.spans

    def value(name: str) -> str:
        span = spans.get(name)
        return _clean(_raw(block, span)) if span is not None else ""

    sex = _SEX_CODES.get(value("sex"))
    if sex is None:
        raise TextBlockError("sex code is not 0, 1, 2 or 9")
    id_number = value("id_number")
    if not id_number:
        raise TextBlockError("the ID number field is empty")
    valid_until_raw = value("valid_until")
    valid_until = NO_EXPIRY if valid_until_raw == NO_EXPIRY else _date(valid_until_raw, "valid_until")
    english = _raw(block, spans["english_name"]) if "english_name" in spans else ""
    if "english_name_ext" in spans:
        english += _raw(block, spans["english_name_ext"])
    english_name = _clean(english)
    name = value("name") or english_name
    if not name:
        raise TextBlockError("the name fields are empty")
    return CardText(
        layout=layout.key,
        card_type=layout.card_type,
        sex=sex,
        valid_from=_date(value("valid_from"), "valid_from"),
        valid_until=valid_until,
        id_number=id_number,
        name=name,
        english_name=english_name,
        birth=_date(value("birth"), "birth"),
        nation=value("nation"),
        address=value("address"),
    )


def encode_text_block(layout_key: str, values: Mapping[str, str]) -> bytes:
    """Build a text block of one layout from field values (simulator and tests only).

    `layout_key` is `resident`, `J`, `I` or `Y`. Values are placed at their spans, space-padded;
    the type flag is written by the layout. For `Y`, an English name longer than 35 characters
    continues in the extension span, as on the card. Raise `ValueError` for an unknown field or a
    value too long for its span.
    """
    layout = next((item for item in LAYOUTS.values() if item.key == layout_key), None)
    if layout is None:
        raise ValueError(f"unknown layout {layout_key!r}")
    fields = dict(values)
    if "type_flag" in fields:
        raise ValueError("the type flag is set by the layout")
    fields["type_flag"] = layout.flag
    english_span = layout.spans.get("english_name")
    if (
        "english_name_ext" in layout.spans
        and english_span is not None
        and "english_name_ext" not in fields
        and len(fields.get("english_name", "")) > english_span.chars
    ):
        english = fields["english_name"]
        fields["english_name"] = english[: english_span.chars]
        fields["english_name_ext"] = english[english_span.chars :]
    block = bytearray((_PAD * (TEXT_LEN // 2)).encode(_ENCODING))
    for name, text in fields.items():
        span = layout.spans.get(name)
        if span is None:
            raise ValueError(f"layout {layout_key} has no field {name!r}")
        encoded = text.encode(_ENCODING)
        room = span.end - span.start
        if len(encoded) > room:
            raise ValueError(f"{name} is longer than {span.chars} characters")
        padding = _PAD.encode(_ENCODING) * ((room - len(encoded)) // 2)
        block[span.start : span.end] = encoded + padding
    return bytes(block)
