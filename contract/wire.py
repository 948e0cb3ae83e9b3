"""The uplink wire format (CONTRACTS §1 records, §6 batches), written once for both ends.

The hub's uplink builds a `Batch`, sends `encode_batch(batch)` to `batch_path(node_id)` with
`batch_headers(...)` and reads the answer with `decode_answer`. The receiver turns a request body
into a `DecodedBatch` with `decode_batch`, which sorts the failures the way §6 needs them:

- `WireError` with status 400: the body or the batch envelope is malformed (not gzip, not JSON,
  a wrong or missing envelope field); 413: too large; 422: a record that cannot even be named
  (not an object, or no valid `id`), so it cannot be rejected on its own. The uplink splits such a
  batch until the bad record is alone.
- `DecodedBatch.rejected`: records that carry a valid `id` but fail record-level validation; the
  rest of the batch is still accepted.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from contract.records import (
    CHANNELS,
    HALL_CODE_REGEX,
    ID_PATTERN,
    ID_REGEX,
    KINDS,
    WINDOW_REGEX,
    format_utc,
    new_record_id,
    parse_timestamp,
)

__all__ = [
    "BATCH_PATH_TEMPLATE",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_RECORDS",
    "Batch",
    "BatchAnswer",
    "DecodedBatch",
    "EvaluationData",
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
    "evaluation_data",
    "format_timestamp",
    "is_node_id",
    "new_batch",
    "parse_timestamp",
    "stored_batch_body",
    "validate_record",
]

BATCH_PATH_TEMPLATE: Final = "/v1/nodes/{node_id}/batches"
"""Where a node posts its batches, relative to `central.url`."""

MAX_BATCH_BYTES: Final = 16 * 1024 * 1024
"""Default limit on a batch's JSON size after decompression (and on the compressed body)."""

MAX_BATCH_RECORDS: Final = 5000
"""At most this many records in one batch (the same bound as the pull API's `limit`)."""

_UUID_PATTERN: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BATCH_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEX_REF_PATTERN: Final = re.compile(r"[0-9a-fA-F]{64}")
_MAX_SEQ: Final = 2**63 - 1


# --- timestamps -------------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """Write an aware datetime as RFC 3339 UTC with milliseconds, the only form on the wire."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a wire timestamp needs an aware datetime, got a naive one")
    return format_utc(moment)


def _check_timestamp(text: str) -> str:
    parse_timestamp(text)
    return text


def _check_device_time(text: str) -> str:
    try:
        parsed = datetime.fromisoformat(text[:-1] + "Z" if text.endswith("z") else text)
    except ValueError:
        raise ValueError("must be an RFC 3339 date and time with an offset") from None
    if parsed.tzinfo is None:
        raise ValueError("must carry a time zone offset (Z or ±hh:mm)")
    return text


# --- field types ------------------------------------------------------------------------------


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value

    return check


_UUID_RULE: Final = "a UUID in lower-case canonical form (8-4-4-4-12 hex)"


def _one_of(values: tuple[str, ...]) -> Callable[[str], str]:
    """A check against names defined once in `contract.records`, worded as pydantic words a Literal."""
    expected = ", ".join(repr(v) for v in values[:-1]) + f" or {values[-1]!r}"

    def check(value: str) -> str:
        if value not in values:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    return check


RecordId = Annotated[StrictStr, AfterValidator(_matching(_UUID_PATTERN, _UUID_RULE))]
RecordKind = Annotated[StrictStr, AfterValidator(_one_of(KINDS))]
ChannelName = Annotated[StrictStr, AfterValidator(_one_of(CHANNELS))]
_ID_RULE: Final = "1-64 of A-Z a-z 0-9 _ -"
_WINDOW_RULE: Final = "1-16 of A-Z a-z 0-9 _ -"
NodeId = Annotated[StrictStr, AfterValidator(_matching(re.compile(ID_REGEX), _ID_RULE))]
BatchId = Annotated[StrictStr, AfterValidator(_matching(_BATCH_ID_PATTERN, "1-128 of A-Z a-z 0-9 . _ : -"))]
WindowId = Annotated[StrictStr, AfterValidator(_matching(re.compile(WINDOW_REGEX), _WINDOW_RULE))]
HallCode = Annotated[StrictStr, AfterValidator(_matching(re.compile(HALL_CODE_REGEX), "6 digits"))]
HexRef = Annotated[StrictStr, AfterValidator(_matching(_HEX_REF_PATTERN, "64 hex digits"))]
Timestamp = Annotated[StrictStr, AfterValidator(_check_timestamp)]
DeviceTime = Annotated[StrictStr, AfterValidator(_check_device_time)]


# --- models -----------------------------------------------------------------------------------


class Record(BaseModel):
    """One record as in CONTRACTS §1. `data` is checked per kind by `validate_record`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: RecordId
    seq: Annotated[StrictInt, Field(ge=1, le=_MAX_SEQ)]
    kind: RecordKind
    created_at: Timestamp
    data: dict[str, Any]


class EvaluationData(BaseModel):
    """The `data` of an evaluation record (§1). Extra keys are kept: §1 grows by optional fields.

    `item_name` is not in the §1 list but may be carried from the window's evaluate request; the
    national mapping uses it for `taskName`. Optional keys that are absent count as null/empty.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    level: Annotated[StrictInt, Field(ge=1, le=5)]
    reasons: list[StrictStr] = Field(default_factory=list)
    comment: Annotated[StrictStr, Field(max_length=500)] | None = None
    channel: ChannelName
    device_id: NodeId
    window: WindowId | None = None
    staff_id: StrictStr | None = None
    case_no: StrictStr | None = None
    item_code: StrictStr | None = None
    item_name: StrictStr | None = None
    session: StrictInt | None = None
    citizen_ref: HexRef | None = None
    citizen_masked: StrictStr | None = None
    device_ts: DeviceTime | None = None
    node_id: NodeId
    hall_code: HallCode
    flags: list[StrictStr] = Field(default_factory=list)


class FollowupData(BaseModel):
    """The `data` of a `followup` record (§11): one step of a bad review's callback and rectification."""

    model_config = ConfigDict(extra="allow", frozen=True)

    alert_id: RecordId
    evaluation_id: RecordId
    step: Literal["callback", "rectify"]
    by: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    outcome: Literal["reached", "unreachable"] | None = None
    substantiated: StrictBool | None = None
    note: Annotated[StrictStr, Field(max_length=500)] | None = None
    late: StrictBool
    window: WindowId | None = None
    staff_id: StrictStr | None = None
    case_no: StrictStr | None = None
    node_id: NodeId
    hall_code: HallCode


class WindowData(BaseModel):
    """The `data` of a `window` record (§12): who serves at a window. Never the staff name."""

    model_config = ConfigDict(extra="allow", frozen=True)

    window: WindowId
    event: Literal["sign_in", "sign_out", "pause", "resume"]
    staff_id: StrictStr | None = None
    reason: Annotated[StrictStr, Field(max_length=100)] | None = None
    node_id: NodeId
    hall_code: HallCode


DATA_MODELS: Final[dict[str, type[BaseModel]]] = {"followup": FollowupData, "window": WindowData}
"""The schema of `data` for the kinds checked beyond the envelope (evaluations: `evaluation_data`)."""


class Batch(BaseModel):
    """The body of one uplink POST (§6). Records go alerts first, then oldest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: NodeId
    batch_id: BatchId
    sent_at: Timestamp
    records: list[Record] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)


class _Envelope(BaseModel):
    """A batch with its records still raw, so that each record is judged on its own."""

    model_config = ConfigDict(extra="forbid")

    node_id: NodeId
    batch_id: BatchId
    sent_at: Timestamp
    records: Annotated[list[Any], Field(min_length=1)]


class Rejection(BaseModel):
    """A record the receiver refused, with the reason (it goes to the hub's dead-letter table)."""

    model_config = ConfigDict(frozen=True)

    id: str
    error: str


class BatchAnswer(BaseModel):
    """The 200 answer (§6): accepted and duplicate ids are delivered, rejected ones dead-lettered.

    Unknown keys are ignored so that a platform may add its own.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    accepted: list[StrictStr] = Field(default_factory=list)
    duplicate: list[StrictStr] = Field(default_factory=list)
    rejected: list[Rejection] = Field(default_factory=list)


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


def _path(prefix: str, loc: Iterable[int | str]) -> str:
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(body)"


def _explain(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """The first failing field's path and one message listing every failure."""
    parts: list[str] = []
    first = ""
    for error in exc.errors(include_url=False):
        field = _path(prefix, error["loc"])
        first = first or field
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        elif error["type"] == "extra_forbidden":
            message = "is not a field of this object"
        else:
            shown = repr(error.get("input"))
            message += f" (got {shown[:60]}{'…' if len(shown) > 60 else ''})"
        parts.append(f"{field}: {message}")
    return first, "; ".join(parts)


# --- records ----------------------------------------------------------------------------------


def validate_record(raw: object) -> Record:
    """Check one record (envelope, then `data` for its kind); raise `RecordError` if wrong."""
    try:
        record = Record.model_validate(raw)
    except ValidationError as exc:
        field, message = _explain(exc)
        raise RecordError(field, message) from None
    if record.kind == "evaluation":
        evaluation_data(record)
    elif record.kind in DATA_MODELS:
        try:
            DATA_MODELS[record.kind].model_validate(record.data)
        except ValidationError as exc:
            field, message = _explain(exc, "data")
            raise RecordError(field, message) from None
    return record


def evaluation_data(record: Record) -> EvaluationData:
    """The typed `data` of an evaluation record; raise `RecordError` (`data.…` paths) if wrong."""
    try:
        return EvaluationData.model_validate(record.data)
    except ValidationError as exc:
        field, message = _explain(exc, "data")
        raise RecordError(field, message) from None


def _record_id(raw: object, index: int) -> str:
    """The id of a raw record, or a 422 when it has none: such a record cannot be rejected alone."""
    field = f"records[{index}]"
    if not isinstance(raw, dict):
        raise WireError(422, f"{field}: a record must be a JSON object", field)
    value = raw.get("id")
    if not isinstance(value, str) or not _UUID_PATTERN.fullmatch(value):
        shown = repr(value)[:60]
        raise WireError(
            422,
            f"{field}.id: must be {_UUID_RULE} (got {shown}); "
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
        raise ValueError(f"node_id {node_id!r} must be 1-64 of A-Z a-z 0-9 _ -")
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
    """Build a batch; a new UUIDv7 batch id unless one is given (a retry must reuse its id)."""
    return Batch.model_validate(
        {
            "node_id": node_id,
            "batch_id": batch_id if batch_id is not None else new_record_id(),
            "sent_at": format_timestamp(sent_at if sent_at is not None else datetime.now(UTC)),
            "records": [r if isinstance(r, Record) else dict(r) for r in records],
        }
    )


def encode_batch(batch: Batch, *, compress: bool = True) -> bytes:
    """The request body: compact UTF-8 JSON, gzip-compressed unless `compress` is false."""
    raw = batch.model_dump_json().encode("utf-8")
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
        raise ValueError(f"batch_id {batch_id!r} must be 1-128 of A-Z a-z 0-9 . _ : -")
    _check_timestamp(sent_at)
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


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """A decoded batch: the records that passed validation and those rejected one by one."""

    node_id: str
    batch_id: str
    sent_at: str
    records: tuple[Record, ...]
    rejected: tuple[Rejection, ...]


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
    if len(body) > max_bytes:
        raise WireError(413, f"body is larger than {max_bytes} bytes")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        body = _gunzip(body, max_bytes)
    elif encoding != "identity":
        raise WireError(
            400, f"Content-Encoding {content_encoding!r} is not supported; send gzip or plain JSON"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(400, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise WireError(
            400, f"body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except ValueError as exc:
        raise WireError(400, f"body is not valid JSON ({exc})") from None
    except RecursionError:
        raise WireError(400, "body is not acceptable JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise WireError(400, "body must be a JSON object with node_id, batch_id, sent_at, records")
    raw_records = document.get("records")
    if isinstance(raw_records, list) and len(raw_records) > max_records:
        raise WireError(
            413, f"batch has {len(raw_records)} records; at most {max_records} per batch", "records"
        )
    try:
        envelope = _Envelope.model_validate(document)
    except ValidationError as exc:
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
        node_id=envelope.node_id,
        batch_id=envelope.batch_id,
        sent_at=envelope.sent_at,
        records=tuple(records),
        rejected=tuple(rejected),
    )


# --- answers ----------------------------------------------------------------------------------


def encode_answer(answer: BatchAnswer) -> bytes:
    """The 200 answer body as UTF-8 JSON."""
    return answer.model_dump_json().encode("utf-8")


def decode_answer(body: bytes | str) -> BatchAnswer:
    """Read a 200 answer; raise `ValueError` naming the field when it is not a valid answer."""
    try:
        return BatchAnswer.model_validate_json(body)
    except ValidationError as exc:
        _, message = _explain(exc)
        raise ValueError(f"not a valid batch answer: {message}") from None
