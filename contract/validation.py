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

import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar

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
    what msgspec expected for a type problem (`int`, `str`, `object`, `array`), and `allowed` what a
    key or value may be, for callers that word their own domain (a config says "a table" where a
    payload says "an object").
    """

    path: str
    kind: str
    message: str
    value: object = None
    want: str = ""
    allowed: tuple[object, ...] = ()
    """For an unknown key, the keys allowed there; for a type or choice problem, a Literal's values."""


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


def strict_convert(obj: object, type_: Any) -> Any:
    """`msgspec.convert(obj, type_, strict=True)`, with text that holds a lone UTF-16 surrogate
    refused like any other wrong value: msgspec raises `UnicodeEncodeError` for it where it compares
    text (a choice of values, a table's keys), which escaped as a crash from a hostile payload."""
    try:
        return msgspec.convert(obj, type_, strict=True)
    except UnicodeEncodeError:
        raise msgspec.ValidationError(LONE_SURROGATE) from None


LONE_SURROGATE: Final = "expected text, got a lone UTF-16 surrogate escape (not Unicode)"


def convert(obj: object, type_: type[_T], *, prefix: str = "") -> _T:
    """`obj` as `type_` (strict: "5" is not 5), or `Invalid` listing every bad field under `prefix`."""
    try:
        converted: _T = strict_convert(obj, type_)
        return converted
    except msgspec.ValidationError as exc:
        raise Invalid(problems(obj, type_, exc, prefix)) from None


def problems(obj: object, type_: Any, exc: msgspec.ValidationError, prefix: str = "") -> list[Problem]:
    """Every problem of `obj` against `type_`: key by key for a struct, else msgspec's one."""
    found = _struct_problems(obj, type_, prefix) if _is_struct(type_) else []
    return found or [explain(str(exc), obj, prefix, type_)]


def _is_struct(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, msgspec.Struct)


Check = Callable[[Any], "str | None"]
"""A rule on one value msgspec cannot express: the problem as a sentence, or None when it is fine."""

RuleProblems = Iterator[tuple[str, str]]
"""(key within a struct, e.g. `ts` or `pf.qr`, and why its value is refused), for each value refused
by a rule msgspec cannot express. A struct with such rules has a `rule_problems(values)` classmethod
taking its field values by name; `checks_problems` makes one from per-field checks."""

REFUSED: Final = object()
"""Stands, among the values handed to `rule_problems`, for a value or entry refused for its type: its
place is kept (`holidays[3]` stays the fourth) but no rule checks it."""


def checks_problems(values: Mapping[str, Any], checks: Mapping[str, Check]) -> RuleProblems:
    """`rule_problems` for per-field checks: each check on its field's value, when set and not refused."""
    for name, check in checks.items():
        value = values.get(name)
        if value is not None and value is not REFUSED and (problem := check(value)) is not None:
            yield name, problem


class Ruled(msgspec.Struct, frozen=True):
    """A struct with per-field rules msgspec cannot express (`_checks`): applied when it is built,
    and by `convert` to the values that passed when another field was refused."""

    _checks: ClassVar[Mapping[str, Check]] = {}

    @classmethod
    def rule_problems(cls, values: Mapping[str, Any]) -> RuleProblems:
        """What the struct's rules refuse among `values` (field name to value)."""
        return checks_problems(values, cls._checks)

    def __post_init__(self) -> None:
        """The rules, the first refusal naming its field."""
        if self._checks:
            run_checks(self, self._checks)


def _struct_problems(obj: object, type_: type[msgspec.Struct], prefix: str) -> list[Problem]:
    """Every problem of one struct's object, key by key in the struct's order: each value converted
    on its own (so one bad value does not hide the next), structs and lists of structs walked into,
    the struct's rules applied to the values that passed; then unknown keys. Only for a refused
    value: msgspec stops at the first problem."""
    if not isinstance(obj, dict):
        try:
            strict_convert(obj, type_)
        except msgspec.ValidationError as exc:
            return [explain(str(exc), obj, prefix, type_)]
        return []
    fields = msgspec.structs.fields(type_)
    by_field: dict[str, list[Problem]] = {info.name: [] for info in fields}
    values: dict[str, Any] = {}
    for info in fields:
        path = _join(prefix, info.encode_name)
        found = by_field[info.name]
        if info.encode_name not in obj:
            if info.required:
                found.append(Problem(path, "missing", "is required but missing"))
            else:
                values[info.name] = (
                    info.default if info.default_factory is msgspec.NODEFAULT else info.default_factory()
                )
            continue
        value = obj[info.encode_name]
        try:
            values[info.name] = strict_convert(value, info.type)
        except msgspec.ValidationError as exc:
            refused, kept = _value_problems(value, info.type, path, exc)
            found += refused
            if kept is not REFUSED:
                values[info.name] = kept
    rule_problems: Callable[[Mapping[str, Any]], RuleProblems] | None = getattr(type_, "rule_problems", None)
    checked: set[str] = set()
    for key, message in rule_problems(values) if rule_problems is not None else ():
        name = key.partition(".")[0].partition("[")[0]
        by_field[name].append(Problem(_join(prefix, key), "rule", message, _at(obj, "." + key)))
        checked.add(name)
    for name in checked:
        by_field[name].sort(key=functools.partial(_entry_order, _join(prefix, name), obj.get(name)))
    found = [problem for problems in by_field.values() for problem in problems]
    if type_.__struct_config__.forbid_unknown_fields:
        names = tuple(info.encode_name for info in fields)
        found += [
            Problem(
                _join(prefix, str(key)), "unknown", "is not a field of this object", obj[key], allowed=names
            )
            for key in obj
            if key not in names
        ]
    return found


def _value_problems(
    value: object, annotation: Any, path: str, exc: msgspec.ValidationError
) -> tuple[list[Problem], object]:
    """The problems of a value refused for its key, and what the struct's rules may still check of
    it. A struct, or a list of structs, is walked into. In a table (`pf`) or list (`holidays`) of
    values each refused entry is named by its own key or index (msgspec names no table key), and the
    others are kept for the rules."""
    bare = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation
    inner = _struct_in(bare)
    each = _struct_in(typing.get_args(bare)[0]) if typing.get_origin(bare) is list else None
    walked: list[Problem] = []
    if inner is not None and isinstance(value, dict):
        walked = _struct_problems(value, inner, path)
    elif each is not None and isinstance(value, list):
        walked = [p for i, item in enumerate(value) for p in _struct_problems(item, each, f"{path}[{i}]")]
    if walked or inner is not None or each is not None:  # a struct is not for the rules to check
        return walked or [explain(str(exc), value, path, annotation)], REFUSED
    entries: list[tuple[str, object]] = []
    entry_type: Any = None
    if isinstance(value, dict) and typing.get_origin(bare) is dict:
        entries, entry_type = [(f"{path}.{key}", e) for key, e in value.items()], typing.get_args(bare)[1]
    elif isinstance(value, list) and typing.get_origin(bare) is list:
        entries, entry_type = [(f"{path}[{i}]", e) for i, e in enumerate(value)], typing.get_args(bare)[0]
    refused: list[Problem] = []
    kept: list[object] = []
    for entry_path, entry in entries:
        try:
            kept.append(strict_convert(entry, entry_type))
        except msgspec.ValidationError as entry_exc:
            refused.append(explain(str(entry_exc), entry, entry_path, entry_type))
            kept.append(REFUSED)
    if not refused:  # not an entry but the whole value (or its number of entries) is refused
        return [explain(str(exc), value, path, annotation)], REFUSED
    return refused, dict(zip(value, kept, strict=True)) if isinstance(value, dict) else kept


def _entry_order(path: str, value: object, problem: Problem) -> int:
    """Where the entry that `problem` names comes in `value`, the table or list at `path` (-1 for the
    value as a whole), so that a key's problems are listed in the order of the document."""
    entry = problem.path.removeprefix(path)
    if isinstance(value, list) and entry.startswith("[") and entry.endswith("]"):
        return int(entry[1:-1])
    if isinstance(value, dict) and entry.startswith("."):
        return list(value).index(entry[1:]) if entry[1:] in value else -1
    return -1


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


def _choices(annotation: Any) -> tuple[object, ...]:
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
    allowed = _choices(annotation) if not sub else ()
    if m := _EXPECTED_TYPE.match(text):
        want = _main_type(m.group("want"))
        sentence = f"expected {_TYPE_TEXT.get(want, want)}, got {got}"
        return Problem(path, "type", sentence, got_value, want, allowed)
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
        listed = listed_choices(allowed) if allowed else "the allowed values"
        return Problem(path, "choice", f"expected one of {listed}, got {got}", got_value, allowed=allowed)
    return Problem(path, "text", text, got_value)


def listed_choices(values: Iterable[object]) -> str:
    """`'a', 'b' or 'c'`: how a message lists the values a key allows."""
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


def run_checks(struct: msgspec.Struct, checks: Mapping[str, Check]) -> None:
    """For `__post_init__`: apply each field's rule to its value when set; raise the first problem."""
    for name, check in checks.items():
        value = getattr(struct, name)
        if value is not None:
            problem = check(value)
            if problem is not None:
                raise field_problem(name, problem)
