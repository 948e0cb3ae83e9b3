"""Finding and masking Chinese citizen ID numbers inside free text (scanned codes, echoed values).

A card reader hands the hub a number it knows is one; a scanned code is arbitrary text that may
carry one anywhere (`...?idcard=370102199003071238`, `身份证:...`, a bare barcode). This module
finds what is shaped like one so the hub can keep the text with each number masked.

What counts as an ID number (GB 11643-1999; the 社会保障号码 of a social-security card is the same
number, so it is covered too):

- **18 characters standing alone**: a run of exactly 18 digits, or 17 digits then `X`/`x`, with
  digits (not letters or punctuation) as the boundary, so `idcard=…`, `ID…`, `身份证:…` all match.
  It must start with 1–9 and carry a real date YYYYMMDD in characters 7–14 (years 1900–2099; the
  hub's own clock is not used, since an edge box may boot in 1970). The check character (ISO 7064
  MOD 11-2) is **not** required: a typo or misread digit still identifies a person, so a number
  with a wrong check character is masked as well. The price: an 18-digit case number made of a
  region code, a date and four digits is masked too.
- **15 digits standing alone**: the pre-1999 form, starting with 1–9, with a real date 19YYMMDD in
  characters 7–12. Its reference is taken of the 18-character form it was upgraded to (`19`
  inserted, check character appended), so it matches the same person's card reads.
- **Inside a longer run of digits** (a number glued to other digits): every 18-character window
  that starts with 1–9, carries a real date **and** has a correct check character. The check
  character is required here, or long case, tracking and bank numbers would be masked at random.

Not detected (documented limits): numbers split by spaces or dashes, truncated numbers (17 digits
or fewer), the 9-character 社会保障卡 card number (卡号: issuer-assigned, no published shape or
check character, and indistinguishable from the 6–12-character pickup codes), and the old
15-character foreigners' permanent residence numbers (three letters and twelve digits). Full-width
digits (`０`–`９`, `Ｘ`) are read as their ASCII forms.

Masking keeps the first 6 and last 4 characters (`privacy.mask_id_number`), so masked text has the
same length as the original; overlapping matches are masked as one span.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Final

from hub.privacy.sealing import mask_id_number

__all__ = ["FoundNumber", "MaskedText", "check_character", "find_id_numbers", "mask_id_numbers"]

_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK: Final = "10X98765432"
_LONG: Final = 18
_OLD: Final = 15
_MIN_YEAR: Final = 1900
_MAX_YEAR: Final = 2099
_DIGIT_RUN: Final = re.compile(r"[0-9]+")
# Full-width digits and X read as ASCII; one character for one, so positions stay the same.
_ASCII: Final = str.maketrans("０１２３４５６７８９Ｘｘ", "0123456789Xx")


def check_character(first17: str) -> str:
    """The check character of an 18-character number from its first 17 digits (ISO 7064 MOD 11-2)."""
    if len(first17) != _LONG - 1 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("expected 17 ASCII digits")
    return _CHECK[sum(int(digit) * weight for digit, weight in zip(first17, _WEIGHTS, strict=True)) % 11]


def _real_date(year: int, text: str) -> bool:
    """True if `text` (MMDD) is a day of `year` and the year is one a living person was born in."""
    if not _MIN_YEAR <= year <= _MAX_YEAR:
        return False
    try:
        datetime.date(year, int(text[:2]), int(text[2:4]))
    except ValueError:
        return False
    return True


def _shaped_18(number: str) -> bool:
    """17 digits and a digit or X, starting with 1–9, with a real birth date (check not tested)."""
    return (
        len(number) == _LONG
        and number[0] != "0"
        and number[:17].isdigit()
        and (number[17].isdigit() or number[17] == "X")
        and _real_date(int(number[6:10]), number[10:14])
    )


def _shaped_15(number: str) -> bool:
    """15 digits starting with 1–9 with a real birth date 19YYMMDD."""
    return (
        len(number) == _OLD
        and number[0] != "0"
        and number.isdigit()
        and _real_date(1900 + int(number[6:8]), number[8:12])
    )


def _check_ok(number: str) -> bool:
    """True if the 18th character is the right check character for the first 17."""
    return check_character(number[:17]) == number[17]


@dataclass(frozen=True, slots=True)
class FoundNumber:
    """One ID number found in a text: where (`start`, `end`) and what. The repr hides the number.

    `number` is the ASCII, upper-cased text as found (15 or 18 characters); `check_ok` is None for a
    15-digit number, which has no check character.
    """

    start: int
    end: int
    number: str = field(repr=False)
    check_ok: bool | None

    @property
    def canonical(self) -> str:
        """The 18-character form the reference is taken of (a 15-digit number upgraded)."""
        if len(self.number) == _OLD:
            first17 = self.number[:6] + "19" + self.number[6:]
            return first17 + check_character(first17)
        return self.number

    @property
    def masked(self) -> str:
        """The masked form of the canonical number, as a card record carries it."""
        return mask_id_number(self.canonical)


@dataclass(frozen=True, slots=True)
class MaskedText:
    """A text with every ID number masked, and the numbers found, in text order (repr: text only)."""

    text: str
    numbers: tuple[FoundNumber, ...] = field(repr=False)


def find_id_numbers(text: str) -> list[FoundNumber]:
    """Every ID number in `text`, in order of position (see the module docstring for the rules)."""
    ascii_text = text.translate(_ASCII)
    found: list[FoundNumber] = []
    for run in _DIGIT_RUN.finditer(ascii_text):
        start, end = run.span()
        digits = run.group()
        # The run, with the X that may follow it: 17 digits + X is a whole number, not a glued one.
        full = (digits + "X") if end < len(ascii_text) and ascii_text[end] in "Xx" else digits
        alone = len(digits) == _LONG or (len(digits) == _LONG - 1 and len(full) == _LONG)
        if alone and _shaped_18(full[:_LONG]):
            found.append(FoundNumber(start, start + _LONG, full[:_LONG], _check_ok(full[:_LONG])))
        elif len(digits) == _OLD and _shaped_15(digits):
            found.append(FoundNumber(start, end, digits, None))
        # Glued to other digits: every 18-character window (the one taken alone above excepted).
        for offset in range(1 if alone else 0, len(full) - _LONG + 1):
            number = full[offset : offset + _LONG]
            if _shaped_18(number) and _check_ok(number):
                found.append(FoundNumber(start + offset, start + offset + _LONG, number, True))
    return found


def mask_id_numbers(text: str) -> MaskedText:
    """`text` with each ID number replaced by its masked form (first 6, last 4 kept; same length)."""
    numbers = find_id_numbers(text)
    if not numbers:
        return MaskedText(text, ())
    ascii_text = text.translate(_ASCII)
    spans: list[list[int]] = []
    for number in numbers:
        if spans and number.start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], number.end)
        else:
            spans.append([number.start, number.end])
    parts: list[str] = []
    position = 0
    for start, end in spans:
        parts.append(text[position:start])
        parts.append(mask_id_number(ascii_text[start:end]))
        position = end
    parts.append(text[position:])
    return MaskedText("".join(parts), tuple(numbers))
