"""Turning pydantic errors into one short sentence per field, for technicians and device makers."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from hub.privacy.id_numbers import mask_id_numbers

PATTERN_TEXT = {
    r"^[A-Za-z0-9_-]{1,64}$": "1 to 64 letters, digits, '_' or '-'",
    r"^[A-Za-z0-9_-]{1,16}$": "1 to 16 letters, digits, '_' or '-'",
    r"^[0-9]{6}$": 'a 6-digit administrative division code such as "370102"',
}


def key_path(loc: Iterable[int | str]) -> str:
    """`('device', 2, 'port')` → `device[2].port`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _shown(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = mask_id_numbers(repr(value)).text  # echoed to the device and logged: never a full ID number
    return text if len(text) <= 40 else text[:37] + "..."


def describe(error: ErrorDetails) -> str:
    """What is wrong with one value, as "expected …, got …"."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _shown(error.get("input"))
    simple = {
        "missing": "is required but missing",
        "int_type": f"expected a whole number, got {got}",
        "int_parsing": f"expected a whole number, got {got}",
        "int_from_float": f"expected a whole number, got {got}",
        "float_type": f"expected a number, got {got}",
        "float_parsing": f"expected a number, got {got}",
        "bool_type": f"expected true or false, got {got}",
        "string_type": f"expected text, got {got}",
        "string_unicode": f"expected text, got {got} (a lone UTF-16 surrogate escape)",
        "list_type": f"expected a list, got {got}",
        "dict_type": f"expected an object, got {got}",
        "model_type": f"expected an object, got {got}",
        "model_attributes_type": f"expected an object, got {got}",
        "string_too_short": "must not be empty",
    }
    if kind in simple:
        return simple[kind]
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern"))
        return f"expected {PATTERN_TEXT.get(pattern, 'text matching ' + pattern)}, got {got}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {got}"
    if kind == "greater_than_equal":
        return f"expected a value of at least {ctx.get('ge')}, got {got}"
    if kind == "greater_than":
        return f"expected a value above {ctx.get('gt')}, got {got}"
    if kind == "less_than_equal":
        return f"expected a value of at most {ctx.get('le')}, got {got}"
    if kind == "less_than":
        return f"expected a value below {ctx.get('lt')}, got {got}"
    if kind == "string_too_long":
        return f"expected at most {ctx.get('max_length')} characters"
    if kind == "too_long":
        return f"expected at most {ctx.get('max_length')} items"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg']} (got {got})"


def summarize(exc: ValidationError, limit: int = 5) -> str:
    """Every failing field as `field: message`, joined by "; " (at most `limit` of them)."""
    parts = [f"{key_path(err['loc']) or 'payload'}: {describe(err)}" for err in exc.errors(include_url=False)]
    if len(parts) > limit:
        parts = [*parts[:limit], f"and {len(parts) - limit} more"]
    return "; ".join(parts)
