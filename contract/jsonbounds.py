"""JSON with bounded numbers and nesting, for everything that arrives from outside (§9, guarantee 5).

`json.loads` turns a 5,000-digit integer into a ValueError (Python's 4,300-digit limit) and
`1e999` into infinity; a client must instead get an error that names the field. A number longer
than `MAX_NUMBER_DIGITS` digits, or one that overflows to infinity, becomes `JsonBoundsError`
with the field's path (`level`, `reasons[2]`). The common case pays one regular-expression scan:
only text that contains a long digit run or a large exponent is parsed with the checking hooks.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

MAX_NUMBER_DIGITS: Final = 30
_SUSPECT: Final = re.compile(rf"[0-9]{{{MAX_NUMBER_DIGITS + 1}}}|[eE][+-]?[0-9]{{3}}")


class JsonBoundsError(ValueError):
    """A JSON document that is well-formed but holds a value beyond what any field can take.

    `document` is the parsed document when the error is a refused number (the refused values left
    as placeholders), so that a caller can still answer by its id fields; None otherwise.
    """

    def __init__(self, path: str, message: str, document: Any = None) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
        self.document = document


class _Oversized:
    """Stands in for a number the hub refuses, so that the walk can name the field it was in."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _Oversized:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        return _Oversized(text)
    return int(text)


def _parse_float(text: str) -> float | _Oversized:
    value = float(text)
    if not math.isfinite(value) or len(text) > 2 * MAX_NUMBER_DIGITS:
        return _Oversized(text)
    return value


def _reject_constant(name: str) -> None:
    raise JsonBoundsError("", f"{name} is not a JSON number")


def loads(text: str) -> Any:
    """Parse JSON text. Raises `json.JSONDecodeError` for text that is not JSON and
    `JsonBoundsError` (naming the field) for a refused number, `NaN`/`Infinity`, or deep nesting."""
    try:
        if _SUSPECT.search(text) is None:
            return json.loads(text, parse_constant=_reject_constant)
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant
        )
    except RecursionError:
        raise JsonBoundsError("", "nested too deeply") from None
    path = _find_oversized(value, "")
    if path is not None:
        where, number = path
        shown = number if len(number) <= 12 else f"{number[:6]}…({len(number)} characters)"
        raise JsonBoundsError(
            where,
            f"number {shown} is out of range (at most {MAX_NUMBER_DIGITS} digits, finite)",
            document=value,
        )
    return value


def _find_oversized(value: Any, path: str) -> tuple[str, str] | None:
    """The path and text of the first refused number in a parsed document, or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _Oversized):
            return where, item.text
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


__all__ = ["MAX_NUMBER_DIGITS", "JsonBoundsError", "loads"]
