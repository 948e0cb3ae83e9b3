"""The uplink wire format (CONTRACTS §1 records, §6 batches), written once for both ends.

The hub's uplink builds a `Batch`, sends `encode_batch(batch)` to `batch_path(node_id)` with
`batch_headers(...)` and reads the answer with `decode_answer`. The receiver turns a request body
into a `ReceivedBatch` with `receive_batch` (each record's `data` kept as the JSON text the node
sent, checked for its kind but never rebuilt), or into a `DecodedBatch` of `Record`s with
`decode_batch`; both sort the failures the way §6 needs them:

- `WireError` with status 400: the body or the batch envelope is malformed (not gzip, not JSON,
  a wrong or missing envelope field); 413: too large; 422: a record that cannot even be named
  (not an object, or no valid `id`), so it cannot be rejected on its own. The uplink splits such a
  batch until the bad record is alone.
- `rejected`: records that carry a valid `id` but fail record-level validation; the
  rest of the batch is still accepted.

The models are msgspec structs, checked in C on the receiver's per-record path; only a refused
record is looked at again field by field (`contract.validation.convert`) to word every problem.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta, Struct

from contract.records import (
    CHANNELS,
    HALL_CODE_REGEX,
    ID_PATTERN,
    ID_REGEX,
    KINDS,
    UTC_TIMESTAMP_EXAMPLE,
    UTC_TIMESTAMP_REGEX,
    WINDOW_REGEX,
    format_utc,
    new_record_id,
    parse_timestamp,
)
from contract.validation import Check, Invalid, Problem, Ruled, convert, run_checks, shown, strict_convert

__all__ = [
    "BATCH_PATH_TEMPLATE",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "Batch",
    "BatchAnswer",
    "DecodedBatch",
    "EvaluationData",
    "ReceivedBatch",
    "ReceivedRecord",
    "Record",
    "RecordError",
    "Rejection",
    "WireError",
    "batch_headers",
    "batch_path",
    "decode_answer",
    "decode_batch",
    "encode_answer",
    "encode_batch",
    "encode_record_data",
    "evaluation_data",
    "format_timestamp",
    "is_node_id",
    "new_batch",
    "parse_timestamp",
    "receive_batch",
    "stored_batch_body",
    "validate_record",
]

BATCH_PATH_TEMPLATE: Final = "/v1/nodes/{node_id}/batches"
"""Where a node posts its batches, relative to `central.url`."""

MAX_BATCH_BYTES: Final = 16 * 1024 * 1024
"""Default limit on a batch's JSON size after decompression (and on the compressed body)."""

MAX_BATCH_RECORDS: Final = 5000
"""At most this many records in one batch (the same bound as the pull API's `limit`)."""

_UUID_REGEX: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_BATCH_ID_REGEX: Final = r"[A-Za-z0-9._:-]{1,128}"
_HEX_REF_REGEX: Final = r"[0-9a-fA-F]{64}"
_UUID_PATTERN: Final = re.compile(_UUID_REGEX)
_BATCH_ID_PATTERN: Final = re.compile(_BATCH_ID_REGEX)
_UTC_TIMESTAMP: Final = re.compile(UTC_TIMESTAMP_REGEX)
_MAX_SEQ: Final = 2**63 - 1

_UUID_RULE: Final = "a UUID in lower-case canonical form (8-4-4-4-12 hex)"
_ID_RULE: Final = "1-64 of A-Z a-z 0-9 _ -"
_BATCH_ID_RULE: Final = "1-128 of A-Z a-z 0-9 . _ : -"


# --- timestamps -------------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """Write an aware datetime as RFC 3339 UTC with milliseconds, the only form on the wire."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a wire timestamp needs an aware datetime, got a naive one")
    return format_utc(moment)


def _wire_time(text: str) -> str | None:
    """Why `text` is not a wire timestamp, or None: `parse_timestamp`'s rule without building the
    aware datetime (its `replace(tzinfo=…)` alone took 0.7 µs a record on the receiver's path)."""
    if _UTC_TIMESTAMP.fullmatch(text) is None:
        return f"must be RFC 3339 UTC with milliseconds, like {UTC_TIMESTAMP_EXAMPLE}"
    try:
        datetime.fromisoformat(text[:-1])
    except ValueError as exc:
        return f"is not a real date and time ({exc})"
    return None


def _device_time(text: str) -> str | None:
    """Why a device's own time is not RFC 3339 with an offset, or None."""
    try:
        parsed = datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
    except ValueError:
        return "must be an RFC 3339 date and time with an offset"
    if parsed.tzinfo is None:
        return "must carry a time zone offset (Z or ±hh:mm)"
    return None


# --- field types ------------------------------------------------------------------------------
# Identifier rules are checked in `__post_init__`: a compiled `fullmatch` costs a third of msgspec's
# `pattern`, and the receiver checks six per record. `extra_json_schema` documents each pattern.

_REMEMBERED_MAX: Final = 4096


def _matching(regex: str, rule: str, *, remember: bool = False) -> Check:
    """A check that the whole text matches `regex`, refused as "must be `rule`".

    `remember`: values already found good are kept (up to `_REMEMBERED_MAX`) and not matched again;
    for the ids that repeat in every record of a hall (node, device, window, hall code).
    """
    fullmatch = re.compile(regex).fullmatch
    good: set[str] = set()

    def check(value: str) -> str | None:
        if fullmatch(value) is None:
            return f"must be {rule}"
        return None

    def check_remembering(value: str) -> str | None:
        if value in good:
            return None
        if fullmatch(value) is None:
            return f"must be {rule}"
        if len(good) >= _REMEMBERED_MAX:
            good.clear()
        good.add(value)
        return None

    return check_remembering if remember else check


def _pattern(regex: str) -> Meta:
    return Meta(extra_json_schema={"pattern": f"^{regex}$"})


if TYPE_CHECKING:
    RecordKind = str
    ChannelName = str
else:
    RecordKind = Literal[KINDS]
    ChannelName = Literal[CHANNELS]

RecordId = Annotated[str, _pattern(_UUID_REGEX)]
NodeId = Annotated[str, _pattern(ID_REGEX)]
BatchId = Annotated[str, _pattern(_BATCH_ID_REGEX)]
WindowId = Annotated[str, _pattern(WINDOW_REGEX)]
HallCode = Annotated[str, _pattern(HALL_CODE_REGEX)]
HexRef = Annotated[str, _pattern(_HEX_REF_REGEX)]
Timestamp = Annotated[str, _pattern(UTC_TIMESTAMP_REGEX)]
Comment = Annotated[str, Meta(max_length=500)]

_record_id_rule = _matching(_UUID_REGEX, _UUID_RULE)
_node_id_rule = _matching(ID_REGEX, _ID_RULE, remember=True)
_window_rule = _matching(WINDOW_REGEX, "1-16 of A-Z a-z 0-9 _ -", remember=True)
_hall_code_rule = _matching(HALL_CODE_REGEX, "6 digits", remember=True)
_hex_ref_rule = _matching(_HEX_REF_REGEX, "64 hex digits")
_ENVELOPE_CHECKS: Final[dict[str, Check]] = {
    "node_id": _node_id_rule,
    "batch_id": _matching(_BATCH_ID_REGEX, _BATCH_ID_RULE),
    "sent_at": _wire_time,
}

_RECORD_CHECKS: Final[dict[str, Check]] = {"id": _record_id_rule, "created_at": _wire_time}
_EVALUATION_CHECKS: Final[dict[str, Check]] = {
    "device_id": _node_id_rule,
    "window": _window_rule,
    "citizen_ref": _hex_ref_rule,
    "device_ts": _device_time,
    "node_id": _node_id_rule,
    "hall_code": _hall_code_rule,
}
_FOLLOWUP_CHECKS: Final[dict[str, Check]] = {
    "alert_id": _record_id_rule,
    "evaluation_id": _record_id_rule,
    "window": _window_rule,
    "node_id": _node_id_rule,
    "hall_code": _hall_code_rule,
}
_WINDOW_CHECKS: Final[dict[str, Check]] = {
    "window": _window_rule,
    "node_id": _node_id_rule,
    "hall_code": _hall_code_rule,
}


# --- models -----------------------------------------------------------------------------------


class _RecordHead(Ruled, frozen=True, forbid_unknown_fields=True):
    """What every form of a record shares: the fields beside `data` and their rules."""

    id: RecordId
    seq: Annotated[int, Meta(ge=1, le=_MAX_SEQ)]
    kind: RecordKind
    created_at: Timestamp

    _checks: ClassVar[Mapping[str, Check]] = _RECORD_CHECKS

    def __post_init__(self) -> None:
        """The id's and the time's form. Checked inline (the receiver's per-record path); only a
        failure goes through `run_checks`, which names the field."""
        if _record_id_rule(self.id) or _wire_time(self.created_at):
            run_checks(self, self._checks)


class Record(_RecordHead, frozen=True, forbid_unknown_fields=True):
    """One record as in CONTRACTS §1. `data` is checked per kind by `validate_record`."""

    data: dict[str, Any]


class EvaluationData(Ruled, frozen=True, kw_only=True):
    """The `data` of an evaluation record (§1). Unknown keys are allowed: §1 grows by optional fields.

    This checks `data`; the record's `data` dict keeps every key, extras included. `item_name` is
    not in the §1 list but may be carried from the window's evaluate request; the national mapping
    uses it for `taskName`. Optional keys that are absent count as null/empty.
    """

    level: Annotated[int, Meta(ge=1, le=5)]
    reasons: list[str] = msgspec.field(default_factory=list)
    comment: Comment | None = None
    channel: ChannelName
    device_id: NodeId
    window: WindowId | None = None
    staff_id: str | None = None
    case_no: str | None = None
    item_code: str | None = None
    item_name: str | None = None
    session: int | None = None
    citizen_ref: HexRef | None = None
    citizen_masked: str | None = None
    device_ts: str | None = None
    """The device's own clock: any RFC 3339 time with an offset."""
    node_id: NodeId
    hall_code: HallCode
    flags: list[str] = msgspec.field(default_factory=list)

    _checks: ClassVar[Mapping[str, Check]] = _EVALUATION_CHECKS

    def __post_init__(self) -> None:
        """Identifier forms and the device's time, as `_EVALUATION_CHECKS` lists them. Checked inline
        (the receiver's per-record path); only a failure goes through `run_checks` to name the field."""
        if (
            _node_id_rule(self.device_id)
            or (self.window is not None and _window_rule(self.window))
            or (self.citizen_ref is not None and _hex_ref_rule(self.citizen_ref))
            or (self.device_ts is not None and _device_time(self.device_ts))
            or _node_id_rule(self.node_id)
            or _hall_code_rule(self.hall_code)
        ):
            run_checks(self, self._checks)


class FollowupData(Ruled, frozen=True, kw_only=True):
    """The `data` of a `followup` record (§11): one step of a bad review's callback and rectification."""

    alert_id: RecordId
    evaluation_id: RecordId
    step: Literal["callback", "rectify"]
    by: Annotated[str, Meta(min_length=1, max_length=64)]
    outcome: Literal["reached", "unreachable"] | None = None
    substantiated: bool | None = None
    note: Comment | None = None
    late: bool
    window: WindowId | None = None
    staff_id: str | None = None
    case_no: str | None = None
    node_id: NodeId
    hall_code: HallCode

    _checks: ClassVar[Mapping[str, Check]] = _FOLLOWUP_CHECKS


class WindowData(Ruled, frozen=True, kw_only=True):
    """The `data` of a `window` record (§12): who serves at a window. Never the staff name."""

    window: WindowId
    event: Literal["sign_in", "sign_out", "pause", "resume"]
    staff_id: str | None = None
    reason: Annotated[str, Meta(max_length=100)] | None = None
    node_id: NodeId
    hall_code: HallCode

    _checks: ClassVar[Mapping[str, Check]] = _WINDOW_CHECKS


DATA_MODELS: Final[dict[str, type[Struct]]] = {"followup": FollowupData, "window": WindowData}
"""The schema of `data` for the kinds checked beyond the envelope (evaluations: `evaluation_data`)."""

_DATA_CHECKS: Final[dict[str, type[Struct]]] = {"evaluation": EvaluationData, **DATA_MODELS}


class _BatchHead(Ruled, frozen=True, forbid_unknown_fields=True):
    """What every form of a batch shares: the envelope beside `records` and its rules."""

    node_id: NodeId
    batch_id: BatchId
    sent_at: Timestamp

    _checks: ClassVar[Mapping[str, Check]] = _ENVELOPE_CHECKS


class Batch(_BatchHead, frozen=True, forbid_unknown_fields=True):
    """The body of one uplink POST (§6). Records go alerts first, then oldest first."""

    records: Annotated[list[Record], Meta(min_length=1, max_length=MAX_BATCH_RECORDS)]


class _TextRecord(_RecordHead, frozen=True, forbid_unknown_fields=True):
    """A `Record` whose `data` is left as the JSON text it came as (`receive_batch`)."""

    data: msgspec.Raw


class _TextBatch(_BatchHead, frozen=True, forbid_unknown_fields=True):
    """A `Batch` of `_TextRecord`s."""

    records: Annotated[list[_TextRecord], Meta(min_length=1, max_length=MAX_BATCH_RECORDS)]


class _Envelope(_BatchHead, frozen=True, forbid_unknown_fields=True):
    """A batch with its records still raw, so that each record is judged on its own."""

    records: Annotated[list[Any], Meta(min_length=1)]


class Rejection(Struct, frozen=True):
    """A record the receiver refused, with the reason (it goes to the hub's dead-letter table)."""

    id: str
    error: str


class BatchAnswer(Struct, frozen=True):
    """The 200 answer (§6): accepted and duplicate ids are delivered, rejected ones dead-lettered.

    Unknown keys are ignored so that a platform may add its own.
    """

    accepted: list[str] = []
    duplicate: list[str] = []
    rejected: list[Rejection] = []


# --- errors -----------------------------------------------------------------------------------


class WireError(Exception):
    """A whole batch cannot be taken: `status` is the HTTP status, `field` the offending path."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON error body the receiver answers with."""
        return {"error": self.message, "field": self.field}


class RecordError(ValueError):
    """One record fails validation; `field` is its path inside the record (e.g. `data.level`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _sentence(problem: Problem) -> str:
    """One problem in this contract's words: "is required", "must be … (got …)", msgspec's otherwise."""
    if problem.kind == "missing":
        return "is required"
    if problem.kind == "unknown":
        return "is not a field of this object"
    if problem.kind == "rule":
        return f"{problem.message} (got {shown(problem.value)})"
    return problem.message


def _explain(exc: Invalid) -> tuple[str, str]:
    """The first failing field's path and one message listing every failure."""
    parts = [f"{p.path or '(body)'}: {_sentence(p)}" for p in exc.problems]
    return exc.first.path or "(body)", "; ".join(parts)


# --- records ----------------------------------------------------------------------------------


def validate_record(raw: object) -> Record:
    """Check one record (envelope, then `data` for its kind); raise `RecordError` if wrong.

    The good path is msgspec alone; a refused record is converted again to word every problem.
    """
    try:
        record: Record = strict_convert(raw, Record)
        model = _DATA_CHECKS.get(record.kind)
        if model is not None:
            strict_convert(record.data, model)
    except msgspec.ValidationError:
        raise _record_error(raw) from None
    return record


def _record_error(raw: object) -> RecordError:
    """The `RecordError` naming every problem of a record msgspec refused."""
    try:
        record = convert(raw, Record)
        model = _DATA_CHECKS.get(record.kind)
        if model is not None:
            convert(record.data, model, prefix="data")
    except Invalid as exc:
        return RecordError(*_explain(exc))
    return RecordError("(body)", "(body): is not a valid record")


def evaluation_data(record: Record) -> EvaluationData:
    """The typed `data` of an evaluation record; raise `RecordError` (`data.…` paths) if wrong.

    Keys that are not §1 fields are not in the result; `record.data` keeps them.
    """
    try:
        return convert(record.data, EvaluationData, prefix="data")
    except Invalid as exc:
        raise RecordError(*_explain(exc)) from None


def _record_id(raw: object, index: int) -> str:
    """The id of a raw record, or a 422 when it has none: such a record cannot be rejected alone."""
    field = f"records[{index}]"
    if not isinstance(raw, dict):
        raise WireError(422, f"{field}: a record must be a JSON object", field)
    value = raw.get("id")
    if not isinstance(value, str) or not _UUID_PATTERN.fullmatch(value):
        text = repr(value)[:60]
        raise WireError(
            422,
            f"{field}.id: must be {_UUID_RULE} (got {text}); "
            "a record without a usable id cannot be accepted or rejected on its own",
            f"{field}.id",
        )
    return value


# --- batches ----------------------------------------------------------------------------------


def is_node_id(text: str) -> bool:
    """Whether `text` is a valid node (or device) id: 1-64 of A-Z a-z 0-9 _ -."""
    return ID_PATTERN.fullmatch(text) is not None


def batch_path(node_id: str) -> str:
    """The URL path a node posts its batches to."""
    if not is_node_id(node_id):
        raise ValueError(f"node_id {node_id!r} must be {_ID_RULE}")
    return BATCH_PATH_TEMPLATE.format(node_id=node_id)


def batch_headers(token: str, batch_id: str) -> dict[str, str]:
    """The request headers of one batch POST (§6)."""
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Idempotency-Key": batch_id,
    }


def new_batch(
    node_id: str,
    records: Iterable[Record | Mapping[str, Any]],
    *,
    batch_id: str | None = None,
    sent_at: datetime | None = None,
) -> Batch:
    """Build a batch; a new UUIDv7 batch id unless one is given (a retry must reuse its id).

    Raises `contract.validation.Invalid` naming every problem when the envelope or a record is wrong.
    """
    return convert(
        {
            "node_id": node_id,
            "batch_id": batch_id if batch_id is not None else new_record_id(),
            "sent_at": format_timestamp(sent_at if sent_at is not None else datetime.now(UTC)),
            "records": [r if isinstance(r, Record) else dict(r) for r in records],
        },
        Batch,
    )


def encode_batch(batch: Batch, *, compress: bool = True) -> bytes:
    """The request body: compact UTF-8 JSON, gzip-compressed unless `compress` is false."""
    raw = msgspec.json.encode(batch)
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


def stored_batch_body(
    node_id: str,
    batch_id: str,
    sent_at: str,
    record_texts: Sequence[str],
    *,
    compress: bool = True,
    compresslevel: int = 6,
) -> bytes:
    """The §6 request body from records kept as §1 JSON text (the outbox's `records.body`).

    Each text goes in as it is, the way `contract.http.pull_page` builds a pull page: decoding,
    validating and encoding again a record the hub wrote and validated itself was most of the
    uplink's cost. The envelope is checked here; the result is the same document as
    `encode_batch(new_batch(...))` of those records.
    """
    if not is_node_id(node_id):
        raise ValueError(f"node_id {node_id!r} must be {_ID_RULE}")
    if _BATCH_ID_PATTERN.fullmatch(batch_id) is None:
        raise ValueError(f"batch_id {batch_id!r} must be {_BATCH_ID_RULE}")
    parse_timestamp(sent_at)
    if not 1 <= len(record_texts) <= MAX_BATCH_RECORDS:
        raise ValueError(f"a batch holds 1-{MAX_BATCH_RECORDS} records, got {len(record_texts)}")
    head = f'{{"node_id":"{node_id}","batch_id":"{batch_id}","sent_at":"{sent_at}","records":['
    raw = (head + ",".join(record_texts) + "]}").encode("utf-8")
    return gzip.compress(raw, compresslevel=compresslevel, mtime=0) if compress else raw


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise WireError(400, f"body is not valid gzip ({exc})") from None
    if len(raw) > limit or inflater.unconsumed_tail:
        raise WireError(413, f"batch is larger than {limit} bytes once decompressed")
    if not inflater.eof:
        raise WireError(400, "body is not valid gzip (the stream is truncated)")
    if inflater.unused_data:
        raise WireError(400, "body is not valid gzip (bytes follow the end of the stream)")
    return raw


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _document(body: bytes) -> Any:
    """The body's JSON document: msgspec first, the standard library to word a refusal.

    msgspec refuses what is not UTF-8 or not JSON, NaN and Infinity, numbers out of range and lone
    surrogate escapes (`"\\ud800"`). Then `json` decodes again: it says where the JSON is wrong, and
    it takes lone surrogates, as the receiver always did (a store that cannot keep one rejects that
    record alone).
    """
    try:
        with contextlib.suppress(msgspec.DecodeError):  # `json` below says what is wrong
            return msgspec.json.decode(body)
    except RecursionError:
        raise WireError(400, "body is not acceptable JSON (nested too deeply)") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(400, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise WireError(
            400, f"body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise WireError(400, f"body is not valid JSON ({exc})") from None
    except RecursionError:
        raise WireError(400, "body is not acceptable JSON (nested too deeply)") from None


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A decoded batch: the records that passed validation and those rejected one by one."""

    node_id: str
    batch_id: str
    sent_at: str
    records: tuple[Record, ...]
    rejected: tuple[Rejection, ...]


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A valid record as a receiver stores it: `data_json` is the JSON text of its `data` object."""

    id: str
    seq: int
    kind: str
    created_at: str
    data_json: str

    @classmethod
    def of(cls, record: Record) -> ReceivedRecord:
        """A decoded record, its `data` written as JSON text (`encode_record_data`)."""
        return cls(record.id, record.seq, record.kind, record.created_at, encode_record_data(record.data))

    def to_json(self) -> str:
        """The record as §1 JSON text."""
        document = {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind,
            "created_at": self.created_at,
            "data": msgspec.Raw(self.data_json.encode("utf-8")),
        }
        return msgspec.json.encode(document).decode("utf-8")


@dataclass(frozen=True, slots=True)
class ReceivedBatch:
    """`receive_batch`'s result: the records to store and those rejected one by one."""

    node_id: str
    batch_id: str
    sent_at: str
    records: tuple[ReceivedRecord, ...]
    rejected: tuple[Rejection, ...]


def encode_record_data(data: Mapping[str, Any]) -> str:
    """A record's `data` as compact JSON text (UTF-8, not `\\u` escapes).

    msgspec's encoder, not `json.dumps` (a fifth of a receiver's CPU when it was); a string msgspec
    cannot write as UTF-8 (a lone surrogate) goes through `json.dumps`, escaped: the same value.
    """
    try:
        return msgspec.json.encode(data).decode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data)


_DATA_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    kind: msgspec.json.Decoder(model, strict=True) for kind, model in _DATA_CHECKS.items()
}


def receive_batch(
    body: bytes,
    *,
    content_encoding: str | None = "gzip",
    max_bytes: int = MAX_BATCH_BYTES,
    max_records: int = MAX_BATCH_RECORDS,
) -> ReceivedBatch:
    """`decode_batch` for a receiver that stores each record's `data` as JSON text.

    The batch is decoded with every `data` left as the text the node sent (`msgspec.Raw`, still
    checked to be JSON), each `data` is checked against its kind's model straight from that text,
    and the text is what is stored. Building a dict of every `data`, checking the dict and writing
    it as JSON again cost 12.0 µs a record to decode (7.2 now, `bench/wire_decode.py`) and 1.1 µs
    more to store. A batch that does not decode this way is judged and worded by `decode_batch`'s
    own path, so every refusal reads the same.
    """
    plain = _plain_body(body, content_encoding, max_bytes)
    try:
        batch = msgspec.json.decode(plain, type=_TextBatch, strict=True)
    except (msgspec.DecodeError, RecursionError):
        return _received(_decode_refused(plain, max_records))
    if len(batch.records) > max_records:
        raise WireError(
            413, f"batch has {len(batch.records)} records; at most {max_records} per batch", "records"
        )
    records: list[ReceivedRecord] = []
    rejected: list[Rejection] = []
    decoders = _DATA_DECODERS
    for record in batch.records:
        text = bytes(record.data)
        try:
            # msgspec checks that skipped text is JSON, not that it is UTF-8: this does.
            data_json = text.decode("utf-8")
        except UnicodeDecodeError:
            return _received(_decode_refused(plain, max_records))
        decoder = decoders.get(record.kind)
        try:
            if not text.startswith(b"{"):
                raise msgspec.ValidationError("data is not an object")
            if decoder is not None:
                decoder.decode(text)
        except (msgspec.ValidationError, msgspec.DecodeError):
            problem = _record_error({**msgspec.structs.asdict(record), "data": msgspec.json.decode(text)})
            rejected.append(Rejection(id=record.id, error=problem.message))
            continue
        records.append(ReceivedRecord(record.id, record.seq, record.kind, record.created_at, data_json))
    return ReceivedBatch(batch.node_id, batch.batch_id, batch.sent_at, tuple(records), tuple(rejected))


def _received(batch: DecodedBatch) -> ReceivedBatch:
    return ReceivedBatch(
        batch.node_id,
        batch.batch_id,
        batch.sent_at,
        tuple(ReceivedRecord.of(record) for record in batch.records),
        batch.rejected,
    )


def _plain_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The request body as JSON bytes: size checked, gunzipped when `content_encoding` says gzip."""
    if len(body) > max_bytes:
        raise WireError(413, f"body is larger than {max_bytes} bytes")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        return _gunzip(body, max_bytes)
    if encoding != "identity":
        raise WireError(
            400, f"Content-Encoding {content_encoding!r} is not supported; send gzip or plain JSON"
        )
    return body


def decode_batch(
    body: bytes,
    *,
    content_encoding: str | None = "gzip",
    max_bytes: int = MAX_BATCH_BYTES,
    max_records: int = MAX_BATCH_RECORDS,
) -> DecodedBatch:
    """Decode and validate a request body; raise `WireError` when the whole batch must be refused.

    `content_encoding` is the request's header value: `gzip`, or `None`/`identity` for plain JSON.
    """
    body = _plain_body(body, content_encoding, max_bytes)
    try:
        batch = msgspec.json.decode(body, type=Batch, strict=True)
    except (msgspec.DecodeError, RecursionError):
        return _decode_refused(body, max_records)
    if len(batch.records) > max_records:
        raise WireError(
            413, f"batch has {len(batch.records)} records; at most {max_records} per batch", "records"
        )
    records: list[Record] = []
    rejected: list[Rejection] = []
    checks = _DATA_CHECKS
    for record in batch.records:
        model = checks.get(record.kind)
        if model is not None:
            try:
                strict_convert(record.data, model)
            except msgspec.ValidationError:
                problem = _record_error(msgspec.structs.asdict(record))
                rejected.append(Rejection(id=record.id, error=problem.message))
                continue
        records.append(record)
    return DecodedBatch(batch.node_id, batch.batch_id, batch.sent_at, tuple(records), tuple(rejected))


def _decode_refused(body: bytes, max_records: int) -> DecodedBatch:
    """`decode_batch` of a body msgspec refused as a `Batch`: the refusal sorted and worded.

    One wrong record makes the whole typed decode fail, so here each record is judged on its own:
    the envelope (400), the count (413), every record's id (422), then each record (rejected).
    """
    document = _document(body)
    if not isinstance(document, dict):
        raise WireError(400, "body must be a JSON object with node_id, batch_id, sent_at, records")
    raw_records = document.get("records")
    if isinstance(raw_records, list) and len(raw_records) > max_records:
        raise WireError(
            413, f"batch has {len(raw_records)} records; at most {max_records} per batch", "records"
        )
    try:
        envelope = convert(document, _Envelope)
    except Invalid as exc:
        field, message = _explain(exc)
        raise WireError(400, message, field) from None
    ids = [_record_id(raw, index) for index, raw in enumerate(envelope.records)]
    records: list[Record] = []
    rejected: list[Rejection] = []
    for record_id, raw in zip(ids, envelope.records, strict=True):
        try:
            records.append(validate_record(raw))
        except RecordError as exc:
            rejected.append(Rejection(id=record_id, error=exc.message))
    return DecodedBatch(
        envelope.node_id, envelope.batch_id, envelope.sent_at, tuple(records), tuple(rejected)
    )


# --- answers ----------------------------------------------------------------------------------


def encode_answer(answer: BatchAnswer) -> bytes:
    """The 200 answer body as UTF-8 JSON."""
    return msgspec.json.encode(answer)


def decode_answer(body: bytes | str) -> BatchAnswer:
    """Read a 200 answer; raise `ValueError` naming the field when it is not a valid answer.

    Text with a lone surrogate escape is refused as JSON: such an id or reason could not be stored.
    """
    try:
        with contextlib.suppress(msgspec.ValidationError):  # the field-by-field check below names it
            return msgspec.json.decode(body, type=BatchAnswer, strict=True)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a valid batch answer: Invalid JSON ({exc})") from None
    try:
        convert(msgspec.json.decode(body), BatchAnswer)
    except Invalid as exc:
        raise ValueError(f"not a valid batch answer: {_explain(exc)[1]}") from None
    raise ValueError("not a valid batch answer")
