"""MQTT payloads of CONTRACTS §2, written once for the hub, the simulators and the tests.

Device payloads are validated strictly (a level of "5" is not 5) and unknown fields are ignored, so
that newer firmware adding optional fields keeps working with an older hub. The types are msgspec
structs: checked in C on the hot path, every bad field named by `contract.validation` when refused.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, NoReturn, Self, TypeVar

import msgspec
from msgspec import Meta

from contract import jsonbounds
from contract.records import WINDOW_REGEX, parse_rfc3339
from contract.topics import Leaf
from contract.validation import Check, Invalid, Problem, Ruled, convert, lone_surrogate, shown

MAX_PAYLOAD_BYTES = 16 * 1024

MsgId = Annotated[str, Meta(min_length=1, max_length=64)]
ShortText = Annotated[str, Meta(min_length=1, max_length=64)]
WindowId = Annotated[str, Meta(extra_json_schema={"pattern": f"^{WINDOW_REGEX}$"})]
"""A window name; checked with `window_problem` (a `fullmatch`: msgspec's `pattern` would let a
final newline through `$`)."""
_WINDOW_FULLMATCH = re.compile(WINDOW_REGEX).fullmatch
Timestamp = Annotated[str, Meta(max_length=40)]
"""An RFC 3339 time; the struct that holds one checks it with `rfc3339_problem` in `__post_init__`."""


def window_problem(value: str) -> str | None:
    """Why `value` is not a window name, or None if it is one."""
    if _WINDOW_FULLMATCH(value) is None:
        return f"expected 1 to 16 letters, digits, '_' or '-', got {shown(value)}"
    return None


def rfc3339_problem(value: str) -> str | None:
    """Why `value` is not an RFC 3339 time with an offset, or None if it is one."""
    try:
        parse_rfc3339(value)
    except ValueError:
        return f'expected an RFC 3339 time such as "2026-11-22T09:30:00+08:00", got {shown(value)}'
    return None


class _Payload(Ruled, frozen=True):
    """Any §2 payload."""

    def as_dict(self, *, drop_none: bool = False) -> dict[str, Any]:
        """The payload as a JSON-ready dict (HTTP answers, reports); without unset fields if `drop_none`."""
        body = msgspec.structs.asdict(self)
        return {k: v for k, v in body.items() if v is not None} if drop_none else body


class _Incoming(_Payload, frozen=True):
    """A payload a device or window PC sends: unknown fields ignored (newer firmware), rules checked."""


class _Outgoing(_Payload, frozen=True, forbid_unknown_fields=True):
    """A payload the hub sends."""

    def encode(self) -> bytes:
        """Compact UTF-8 JSON."""
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, raw: str | bytes) -> Self:
        """A payload as `encode` wrote it (heard by a simulator, or kept in the outbox's kv).

        Raises ValueError naming what is wrong when it is not one.
        """
        try:
            return msgspec.json.decode(raw, type=cls)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a {cls.__name__}: {exc}") from None


_ENCODER = msgspec.json.Encoder()


class RatingPayload(_Incoming, frozen=True):
    """`dev/{device}/rating`."""

    msg_id: MsgId
    level: Annotated[int, Meta(ge=1, le=5)]
    reasons: Annotated[list[Annotated[str, Meta(min_length=1, max_length=32)]], Meta(max_length=16)] = (
        msgspec.field(default_factory=list)
    )
    comment: Annotated[str, Meta(max_length=500)] | None = None
    case_no: ShortText | None = None
    item_code: ShortText | None = None
    item_name: Annotated[str, Meta(max_length=200)] | None = None
    window: WindowId | None = None
    staff_id: ShortText | None = None
    session: Annotated[int, Meta(ge=0, le=2**32 - 1)] | None = None
    ts: Timestamp | None = None

    _checks: ClassVar[Mapping[str, Check]] = {"window": window_problem, "ts": rfc3339_problem}


class ScanPayload(_Incoming, frozen=True):
    """`dev/{device}/scan`."""

    msg_id: MsgId
    data: Annotated[str, Meta(min_length=1, max_length=4096)]
    symbology: Annotated[str, Meta(max_length=32)] | None = None


class PrintPayload(_Incoming, frozen=True):
    """`dev/{device}/print`."""

    msg_id: MsgId
    job_id: ShortText
    state: Literal["started", "done", "failed"]
    pages: Annotated[int, Meta(ge=0, le=100_000)] | None = None
    error: Annotated[str, Meta(max_length=500)] | None = None


Supply = Literal["ok", "low", "out"]


class HealthPayload(_Incoming, frozen=True):
    """`dev/{device}/health` (no msg_id: telemetry, never acked)."""

    paper: Supply | None = None
    toner: Supply | None = None
    jam: bool | None = None
    door_open: bool | None = None
    output_full: bool | None = None
    temp_c: Annotated[float, Meta(ge=-60, le=150)] | None = None


class StatePayload(_Incoming, frozen=True):
    """`dev/{device}/state` (retained; also the device's will)."""

    online: bool
    kind: Annotated[str, Meta(max_length=32)] | None = None
    fw: Annotated[str, Meta(max_length=64)] | None = None


class EvaluateRequest(_Incoming, frozen=True):
    """`window/{window}/evaluate` and `POST /v1/windows/{window}/evaluate`."""

    request_id: ShortText
    case_no: ShortText | None = None
    item_code: ShortText | None = None
    item_name: Annotated[str, Meta(max_length=200)] | None = None
    staff_id: ShortText | None = None
    staff_name: Annotated[str, Meta(max_length=64)] | None = None
    timeout_s: Annotated[int, Meta(ge=1, le=3600)] | None = None
    user_prop: Annotated[int, Meta(ge=1, le=2)] = 1
    """**(ext, §15)** who is rating: 1 a person, 2 a legal person; the national record's `userProp`."""
    channel: Literal["qr"] | None = None
    """**(ext, §13)** `"qr"`: rate on the citizen's own phone only, no keypad or pad is prompted (for
    windows without one); absent, the window's keypad or pad is prompted (with a link too, when enabled)."""


class StaffEvent(_Incoming, frozen=True):
    """`window/{window}/staff` and `POST /v1/windows/{window}/staff` (§12)."""

    request_id: ShortText
    event: Literal["sign_in", "sign_out", "pause", "resume"]
    staff_id: ShortText | None = None
    staff_name: Annotated[str, Meta(max_length=32)] | None = None
    reason: Annotated[str, Meta(max_length=100)] | None = None


class WindowState(_Outgoing, frozen=True):
    """`window/{window}/state`, retained (§12). The staff name is shown here, never stored in records."""

    window: str
    state: Literal["open", "paused", "closed"]
    staff_id: str | None
    staff_name: str | None
    since: str
    request_id: str | None = None
    """The event that brought the window to this state (hallhub extension, optional)."""

    def shown(self) -> dict[str, Any]:
        """The state as the status page and refusals show it (without the event's request id)."""
        body = self.as_dict()
        del body["request_id"]
        return body


class WindowError(_Outgoing, frozen=True):
    """`window/{window}/error`: a staff event refused, with its `request_id` when it had a usable one
    (hallhub extension of §12)."""

    request_id: str | None
    error: str
    topic: str


class AckPayload(_Outgoing, frozen=True):
    """`dev/{device}/ack`, published only after commit (or a found duplicate)."""

    msg_id: str
    id: str | None
    status: Literal["stored", "duplicate", "rejected"]
    error: str | None


class CmdPayload(_Outgoing, frozen=True):
    """`dev/{device}/cmd`."""

    cmd: Literal["prompt", "cancel", "show"]
    session: int | None = None
    timeout_s: int | None = None
    text: str | None = None
    qr_url: str | None = None
    """**(ext, §13)** on a `prompt`: the session's rating link, for the pad to draw as a QR code."""

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; `qr_url` only when there is one (pads that predate §13 see no change)."""
        return _encode_without_empty(self, "qr_url")


class ErrorPayload(_Outgoing, frozen=True):
    """`dev/{device}/error`, for a payload with no usable msg_id."""

    error: str
    topic: str


class SessionUpdate(_Outgoing, frozen=True):
    """`window/{window}/session`."""

    request_id: str
    session: int
    state: Literal["prompted", "rated", "expired", "cancelled", "failed"]
    level: int | None = None
    id: str | None = None
    error: str | None = None
    qr_url: str | None = None
    """**(ext, §13)** on `prompted`: the session's single-use rating link for the citizen's phone."""

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; `qr_url` only when there is one (window PCs that predate §13 see no change)."""
        return _encode_without_empty(self, "qr_url")


def _encode_without_empty(payload: _Outgoing, name: str) -> bytes:
    """A payload's JSON with the optional extension field `name` left out while it is None."""
    if getattr(payload, name) is not None:
        return _ENCODER.encode(payload)
    body = msgspec.structs.asdict(payload)
    del body[name]
    return _ENCODER.encode(body)


class HubState(_Outgoing, frozen=True):
    """`hub/state` (retained; also the hub's will with online false)."""

    online: bool
    version: str
    outbox_pending: int
    last_sync: str | None


DEVICE_PAYLOADS: dict[str, type[_Incoming]] = {
    Leaf.RATING: RatingPayload,
    Leaf.SCAN: ScanPayload,
    Leaf.PRINT: PrintPayload,
    Leaf.HEALTH: HealthPayload,
    Leaf.STATE: StatePayload,
}


_T = TypeVar("_T", bound=_Incoming)


class PayloadError(Exception):
    """A payload that cannot be used. `reason` is a metric label, `msg_id` set if one was readable.

    `document` is the decoded object when the JSON parsed but a value in it was refused (a number no
    field can hold), so that a caller can still read its ids (`request_id`); None otherwise.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        msg_id: str | None = None,
        document: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.msg_id = msg_id
        self.document = document


class _Suspect(Exception):
    """A number or constant the fast decoder leaves to `contract.jsonbounds` to judge."""


def _int_or_defer(text: str) -> int:
    if len(text) > jsonbounds.MAX_NUMBER_DIGITS:
        raise _Suspect
    return int(text)


def _float_or_defer(text: str) -> float:
    value = float(text)
    if len(text) > jsonbounds.MAX_NUMBER_DIGITS or not math.isfinite(value):
        raise _Suspect
    return value


def _defer_constant(_name: str) -> NoReturn:
    raise _Suspect


# Built once: `json.loads(text, **hooks)` would build a decoder per message. It stops at anything that
# `jsonbounds` might refuse (a superset of its rules), which then parses the text again and decides.
_FAST_DECODER = json.JSONDecoder(
    parse_int=_int_or_defer, parse_float=_float_or_defer, parse_constant=_defer_constant
)


def decode_object(payload: bytes) -> dict[str, object]:
    """Bytes → JSON object, with a PayloadError naming what is wrong (size, UTF-8, JSON, a number no
    field can hold, shape). A refused number is `invalid_field`, named by its path (`reasons[2]`)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError("too_large", f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("not_utf8", f"payload is not UTF-8 (bad byte at offset {exc.start})") from None
    try:
        value = _FAST_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _not_json(exc) from None
    except (_Suspect, RecursionError):
        value = _decode_bounded(text)
    if not isinstance(value, dict):
        raise PayloadError("not_object", f"payload must be a JSON object, got {type(value).__name__}")
    return value


def _decode_bounded(text: str) -> Any:
    """`contract.jsonbounds.loads`, its errors as PayloadErrors (the uncommon path: suspect numbers)."""
    try:
        return jsonbounds.loads(text)
    except json.JSONDecodeError as exc:
        raise _not_json(exc) from None
    except jsonbounds.JsonBoundsError as exc:
        if not exc.path:  # NaN, Infinity, nesting: nothing to name
            raise PayloadError("not_json", f"payload is not JSON the hub reads: {exc.message}") from None
        document = exc.document if isinstance(exc.document, dict) else None
        msg_id = usable_msg_id(document) if document is not None else None
        raise PayloadError("invalid_field", str(exc), msg_id, document) from None


def _not_json(exc: json.JSONDecodeError) -> PayloadError:
    return PayloadError("not_json", f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def usable_msg_id(obj: dict[str, object]) -> str | None:
    """The payload's msg_id if it is one we can answer on, else None."""
    msg_id = obj.get("msg_id")
    if isinstance(msg_id, str) and 1 <= len(msg_id) <= 64 and _is_text(msg_id):
        return msg_id
    return None


def _is_text(value: str) -> bool:
    """False for a string with lone surrogates (JSON allows `"\\ud800"`): it cannot be echoed back."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_device_payload(model: type[_T], obj: dict[str, object]) -> _T:
    """Validate a decoded object; a PayloadError lists each failing field.

    Text with a lone surrogate (valid JSON, `"\\ud800"`) is refused too: it could be neither stored
    nor echoed. Only the model's own fields are looked at; ignored extras may hold anything.
    """
    try:
        payload = convert(obj, model)
    except Invalid as exc:
        problems = exc.problems
    else:
        surrogate = _surrogate_in(model, obj)
        if surrogate is None:
            return payload
        problems = [surrogate]
    raise PayloadError("invalid_field", Invalid(problems).summary(), usable_msg_id(obj))


def _surrogate_in(model: type[_Incoming], obj: dict[str, object]) -> Problem | None:
    for name in model.__struct_fields__:
        value = obj.get(name)
        if isinstance(value, str) and value.isascii():
            continue
        if value is not None and (problem := lone_surrogate(value, name)) is not None:
            return problem
    return None
