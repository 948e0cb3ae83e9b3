"""Checking decoded JSON (or TOML) against the contract's msgspec types, one sentence per bad field.

msgspec validates in C, an order of magnitude cheaper than the pydantic models it replaced (and ~10 MB
less resident), but it stops at the first failure and words it for programmers (`Expected `int` <= 5
- at `$.level``). `convert` keeps msgspec's speed on the good path; only when a value is refused does
it check each field on its own, so that a device maker or a technician sees every failing field at
once, as "level: expected a value of at most 5, got 9", with the value that was sent.

A check msgspec cannot express (an RFC 3339 time, a code list) runs in the struct's `__post_init__`
and raises `field_problem(name, message)`, which keeps the field's name in the path.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from hub.privacy.id_numbers import mask_id_numbers

_T = TypeVar("_T")

PATTERN_TEXT = {
    r"^[A-Za-z0-9_-]{1,64}$": "1 to 64 letters, digits, '_' or '-'",
    r"^[A-Za-z0-9_-]{1,16}$": "1 to 16 letters, digits, '_' or '-'",
    r"^[0-9]{6}$": 'a 6-digit administrative division code such as "370102"',
}

_TYPE_TEXT = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "text",
    "array": "a list",
    "object": "an object",
    "null": "null",
}

_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD_MARK = re.compile(r"^field `(?P<field>[^`]+)`: (?P<message>.*)$", re.DOTALL)
_EXPECTED_TYPE = re.compile(r"^Expected `(?P<want>[^`]+)`, got `(?P<got>[^`]+)`$")
_BOUND = re.compile(r"^Expected `(?P<want>[^`]+)` (?P<op>>=|<=|>|<) (?P<limit>\S+)$")
_LENGTH = re.compile(r"^Expected `(?P<want>[^`]+)` of length (?P<op>>=|<=) (?P<limit>\d+)$")
_REGEX = re.compile(r"^Expected `str` matching regex '(?P<pattern>.*)'$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
_END = re.compile(r"(?:\\+Z|\$)$")
_ENUM = re.compile(r"^Invalid enum value (?P<got>.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Problem:
    """One refused value: where (`device[2].port`), what kind of rule, and the sentence.

    `kind` is one of missing, unknown, type, bound, length, pattern, choice, rule, text; `want` is
    what msgspec expected for a type problem (`int`, `str`, `object`, `array`), for callers that word
    their own domain (a config says "a table" where a payload says "an object").
    """

    path: str
    kind: str
    message: str
    value: object = None
    want: str = ""


class FieldProblem(ValueError):
    """Raised from a `__post_init__`: msgspec reports it at the struct; the text keeps the field."""


def field_problem(field: str, message: str) -> FieldProblem:
    """The error a `__post_init__` raises for one field's value."""
    return FieldProblem(f"field `{field}`: {message}")


class Invalid(Exception):
    """A value refused by `convert`, with every problem found (at least one)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.summary())

    @property
    def first(self) -> Problem:
        """The first problem (its path names the field for single-field error bodies)."""
        return self.problems[0]

    def summary(self, limit: int = 5) -> str:
        """Every problem as `field: message`, joined by "; " (at most `limit`, then "and N more")."""
        parts = [f"{p.path or 'payload'}: {p.message}" for p in self.problems]
        if len(parts) > limit:
            parts = [*parts[:limit], f"and {len(parts) - limit} more"]
        return "; ".join(parts)


def convert(obj: object, type_: type[_T], *, prefix: str = "") -> _T:
    """`obj` as `type_` (strict: "5" is not 5), or `Invalid` listing every bad field under `prefix`."""
    try:
        return msgspec.convert(obj, type_, strict=True)
    except msgspec.ValidationError as exc:
        raise Invalid(problems(obj, type_, exc, prefix)) from None


def problems(obj: object, type_: Any, exc: msgspec.ValidationError, prefix: str = "") -> list[Problem]:
    """Every problem of `obj` against `type_`: field by field for a struct, else msgspec's one."""
    found: list[Problem] = []
    if isinstance(obj, dict) and _is_struct(type_):
        found = _struct_problems(obj, type_, prefix)
    return found or [explain(str(exc), obj, prefix, type_)]


def _is_struct(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, msgspec.Struct)


def _struct_problems(obj: dict[Any, Any], type_: type[msgspec.Struct], prefix: str) -> list[Problem]:
    """Each field converted alone, so that one bad field does not hide the next."""
    found: list[Problem] = []
    fields = msgspec.structs.fields(type_)
    names = {f.encode_name for f in fields}
    for info in fields:
        path = _join(prefix, info.encode_name)
        if info.encode_name not in obj:
            if info.required:
                found.append(Problem(path, "missing", "is required but missing"))
            continue
        value = obj[info.encode_name]
        try:
            msgspec.convert(value, info.type, strict=True)
        except msgspec.ValidationError as exc:
            if isinstance(value, dict) and _is_struct(_struct_in(info.type)):
                found += _struct_problems(value, _struct_in(info.type), path)
            else:
                found.append(explain(str(exc), value, path, info.type))
    if type_.__struct_config__.forbid_unknown_fields:
        found += [
            Problem(_join(prefix, str(key)), "unknown", "is not a field of this object", obj[key])
            for key in obj
            if key not in names
        ]
    return found


def _struct_in(annotation: Any) -> Any:
    """The struct type inside `S | None` or `Annotated[S, ...]`, or None."""
    for arg in _flatten(annotation):
        if _is_struct(arg):
            return arg
    return None


def _flatten(annotation: Any) -> Iterable[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _flatten(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _flatten(arg)
    else:
        yield annotation


def choices(annotation: Any) -> tuple[object, ...]:
    """The values a `Literal[...]` inside `annotation` allows (empty if there is none)."""
    found: list[object] = []
    for arg in _flatten(annotation):
        if typing.get_origin(arg) is typing.Literal:
            found += typing.get_args(arg)
    return tuple(found)


def explain(message: str, value: object, prefix: str = "", annotation: Any = None) -> Problem:
    """One msgspec error message (for `value`, converted at `prefix`) as a Problem in our words."""
    match = _AT.match(message)
    text, sub = (match.group("message"), match.group("path") or "") if match else (message, "")
    path = _join_path(prefix, sub)
    got_value = _at(value, sub)
    marked = _FIELD_MARK.match(text)
    if marked:
        field = marked.group("field")
        inner = got_value.get(field) if isinstance(got_value, dict) else None
        return Problem(_join(path, field), "rule", marked.group("message"), inner)
    got = shown(got_value)
    if m := _MISSING.match(text):
        return Problem(_join(path, m.group("field")), "missing", "is required but missing")
    if m := _UNKNOWN.match(text):
        field = m.group("field")
        extra = got_value.get(field) if isinstance(got_value, dict) else None
        return Problem(_join(path, field), "unknown", "is not a field of this object", extra)
    if m := _EXPECTED_TYPE.match(text):
        want = _main_type(m.group("want"))
        return Problem(path, "type", f"expected {_TYPE_TEXT.get(want, want)}, got {got}", got_value, want)
    if m := _BOUND.match(text):
        limit, op = _number(m.group("limit")), m.group("op")
        words = {">=": "at least", "<=": "at most", ">": "above", "<": "below"}[op]
        of = "a value of " if op in (">=", "<=") else "a value "
        return Problem(path, "bound", f"expected {of}{words} {limit}, got {got}", got_value)
    if m := _LENGTH.match(text):
        limit, op = int(m.group("limit")), m.group("op")
        unit = "items" if _main_type(m.group("want")) in ("array", "object") else "characters"
        if op == ">=":
            sentence = "must not be empty" if limit == 1 else f"expected at least {limit} {unit}"
        else:
            sentence = f"expected at most {limit} {unit}"
        return Problem(path, "length", sentence, got_value)
    if m := _REGEX.match(text):
        pattern = _END.sub("$", m.group("pattern"))  # `\Z` (shown escaped by msgspec) or `$`
        return Problem(
            path,
            "pattern",
            f"expected {PATTERN_TEXT.get(pattern, 'text matching ' + pattern)}, got {got}",
            got_value,
        )
    if _ENUM.match(text):
        allowed = choices(annotation) if not sub else ()
        listed = _listed(allowed) if allowed else "the allowed values"
        return Problem(path, "choice", f"expected one of {listed}, got {got}", got_value)
    return Problem(path, "text", text, got_value)


def _listed(values: Sequence[object]) -> str:
    """`'a', 'b' or 'c'`: the wording the contract's docs and earlier messages use."""
    parts = [repr(v) for v in values]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _main_type(want: str) -> str:
    """`int | null` → `int`: the type a field holds when it holds anything."""
    names = [part.strip() for part in want.split("|")]
    return next((n for n in names if n != "null"), names[0])


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else number


_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[([^\]]*)\]")


def _at(value: object, sub: str) -> object:
    """The part of `value` that msgspec's path `.device[2].port` points at (None if absent)."""
    for step in _STEP.finditer(sub):
        name, index, key = step.groups()
        if name is not None and isinstance(value, dict):
            value = value.get(name)
        elif index is not None and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        elif key is not None and isinstance(value, dict):
            value = value.get(key.strip("'\""))
        else:
            return None
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _join_path(prefix: str, sub: str) -> str:
    """`prefix` + msgspec's `.a[1].b`, written the way our messages name fields."""
    sub = sub.removeprefix(".")
    if not prefix:
        return sub
    if not sub:
        return prefix
    return prefix + sub if sub.startswith("[") else f"{prefix}.{sub}"


def shown(value: object) -> str:
    """A value as an error message may echo it: short, and never a full ID number."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = mask_id_numbers(repr(value)).text  # echoed to the device and logged: never a full ID number
    return text if len(text) <= 40 else text[:37] + "..."


def lone_surrogate(value: object, path: str = "") -> Problem | None:
    """The first text in a decoded document holding a lone UTF-16 surrogate (JSON allows `"\\ud800"`):
    such text cannot be encoded again, so it can be neither stored nor echoed back. None if none."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return Problem(
                path,
                "type",
                f"expected text, got {shown(value)} (a lone UTF-16 surrogate escape)",
                value,
                "str",
            )
        return None
    items: Iterable[tuple[str, object]]
    if isinstance(value, dict):
        items = ((_join(path, str(k)), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub, item in items:
        found = lone_surrogate(item, sub)
        if found is not None:
            return found
    return None


def key_path(loc: Iterable[int | str]) -> str:
    """`('device', 2, 'port')` → `device[2].port`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


Check = Callable[[Any], "str | None"]
"""A rule on one value msgspec cannot express: the problem as a sentence, or None when it is fine."""


def run_checks(struct: msgspec.Struct, checks: dict[str, Check]) -> None:
    """For `__post_init__`: apply each field's rule to its value when set; raise the first problem."""
    for name, check in checks.items():
        value = getattr(struct, name)
        if value is not None:
            problem = check(value)
            if problem is not None:
                raise field_problem(name, problem)
