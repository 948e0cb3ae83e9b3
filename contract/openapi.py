"""The local HTTP API (CONTRACTS §5, §9), the uplink and the reference receiver (§6, §16) as an
OpenAPI 3.1 document.

Generated, never written by hand: bodies are the JSON Schemas of the msgspec types the hub, the
uplink and the receiver read and write (`contract.mqtt`, `contract.wire`); the few answers that are
built without a model (a pull page, an error) get one here, and the API tests check every real
answer against them. `OPERATIONS` lists the routes with the model of each body. The hub serves its
part at `/openapi.json`, the receiver its own; `python -m contract.docs` writes both parts to
docs/openapi.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from contract.http import PULL_LIMIT_DEFAULT, PULL_LIMIT_MAX, CallbackRequest, RectifyRequest
from contract.mqtt import EvaluateRequest, SessionUpdate, StaffEvent, WindowState
from contract.records import ID_REGEX, KINDS, WINDOW_REGEX
from contract.wire import BATCH_PATH_TEMPLATE, Batch, BatchAnswer, Record

__all__ = ["OPENAPI_VERSION", "OPERATIONS", "Operation", "Service", "openapi_document"]

OPENAPI_VERSION: Final = "3.1.0"
Service = Literal["hub", "receiver"]
Count = Annotated[int, Meta(ge=0)]


class ErrorAnswer(msgspec.Struct):
    """Every 4xx/5xx answer of the hub and the receiver: what is wrong, in a sentence."""

    error: str


class HealthAnswer(msgspec.Struct):
    """`GET /healthz`: `ok`, or `degraded` with the problems found (503)."""

    status: Literal["ok", "degraded"]
    problems: list[str] | None = None


class PullPage(msgspec.Struct):
    """`GET /v1/records`: pending records after `after`, oldest first (`contract.http.pull_page`)."""

    records: list[Record]
    next_after: Count
    more: bool


class AckRequest(msgspec.Struct):
    """`POST /v1/records/ack`: every record up to `upto` was taken by the platform."""

    upto: Count


class AckAnswer(msgspec.Struct):
    """The answer to `POST /v1/records/ack` (`contract.http.ack_answer`)."""

    acked: Count
    upto: Count


class FollowupState(msgspec.Struct):
    """A bad review's follow-up (§11): the answer to a step, and each entry of `/v1/status` `followups`."""

    alert_id: str
    evaluation_id: str
    window: str | None
    staff_id: str | None
    case_no: str | None
    raised_at: str
    step: Literal["callback", "rectify", "closed"]
    due_at: str | None
    callback_due: str
    rectify_due: str
    callback: dict[str, Any] | None
    rectify: dict[str, Any] | None
    overdue: bool


class AlertAck(msgspec.Struct):
    """`POST /v1/alerts/{id}/ack`: who saw the alert, and when."""

    id: str
    acknowledged_at: str
    by: str | None


class AlertAckRequest(msgspec.Struct):
    """The optional body of `POST /v1/alerts/{id}/ack`."""

    by: Annotated[str, Meta(max_length=64)] | None = None


class StatsFigures(msgspec.Struct):
    """One row's (or the total's) figures in a §14 report."""

    total: Count
    levels: dict[str, int]
    good_rate: float | None
    bad: Count
    callbacks: Count
    callbacks_on_time: Count
    rectified: Count
    rectified_on_time: Count
    excluded: Count


class StatsRow(StatsFigures, kw_only=True):
    """A row of a §14 report: its key (a window, staff id, item, channel or date; null for none)."""

    key: str | None


class StatsReport(msgspec.Struct):
    """`GET /v1/stats` (§14)."""

    from_: str = msgspec.field(name="from")
    to: str
    by: Literal["window", "staff", "item", "channel", "day"]
    rows: list[StatsRow]
    total: StatsFigures


class EvaluationsPage(msgspec.Struct):
    """`GET /v1/evaluations` of the receiver: the evaluations that arrived after a cursor."""

    evaluations: list[dict[str, Any]]
    next: str


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter."""

    name: str
    where: Literal["path", "query"]
    schema: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Operation:
    """One route: who serves it, who may call it (§9), the body's model and each answer's."""

    service: Service
    method: Literal["get", "post"]
    path: str
    summary: str
    security: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    body: type[msgspec.Struct] | None = None
    answers: Mapping[int, type[msgspec.Struct] | str] = field(default_factory=dict)
    """Status → a model (JSON) or a media type (a body that is not JSON)."""


_WINDOW = Param("window", "path", {"type": "string", "pattern": f"^{WINDOW_REGEX}$"}, "The window.")
_ALERT = Param("alert_id", "path", {"type": "string", "maxLength": 64}, "A bad-review alert's id.")
_DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
_STEP_ANSWERS: Final[Mapping[int, type[msgspec.Struct] | str]] = {
    200: FollowupState,
    400: ErrorAnswer,
    401: ErrorAnswer,
    404: ErrorAnswer,
    409: ErrorAnswer,
    415: ErrorAnswer,
}
_CONTROL: Final = ("control", "")
"""Control routes need the control token once one is set; on loopback with none set they are open."""
_VIEW: Final = ("view", "")
"""View routes are open on loopback; on another address they need the view or the control token."""

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        "hub",
        "get",
        "/healthz",
        "Health: ok, or degraded with the problems.",
        answers={200: HealthAnswer, 503: HealthAnswer},
    ),
    Operation("hub", "get", "/metrics", "Prometheus metrics.", answers={200: "text/plain"}),
    Operation("hub", "get", "/v1/status", "The node at a glance.", _VIEW, answers={200: "application/json"}),
    Operation("hub", "get", "/", "The status page for technicians.", _VIEW, answers={200: "text/html"}),
    Operation(
        "hub",
        "get",
        "/openapi.json",
        "This document.",
        _VIEW,
        answers={200: "application/json"},
    ),
    Operation(
        "hub",
        "get",
        "/v1/records",
        "Pull: pending records after `after`, oldest first.",
        ("pull",),
        params=(
            Param("after", "query", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}, "A seq."),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": PULL_LIMIT_MAX, "default": PULL_LIMIT_DEFAULT},
            ),
            Param("kind", "query", {"type": "string", "enum": list(KINDS)}),
        ),
        answers={200: PullPage, 400: ErrorAnswer, 401: ErrorAnswer, 404: ErrorAnswer},
    ),
    Operation(
        "hub",
        "post",
        "/v1/records/ack",
        "Pull: mark every record up to `upto` delivered.",
        ("pull",),
        body=AckRequest,
        answers={200: AckAnswer, 400: ErrorAnswer, 401: ErrorAnswer, 404: ErrorAnswer},
    ),
    Operation(
        "hub",
        "post",
        "/v1/windows/{window}/evaluate",
        "Ask the window's device for a rating.",
        _CONTROL,
        params=(_WINDOW,),
        body=EvaluateRequest,
        answers={200: SessionUpdate, 400: ErrorAnswer, 401: ErrorAnswer, 415: ErrorAnswer, 421: ErrorAnswer},
    ),
    Operation(
        "hub",
        "post",
        "/v1/windows/{window}/staff",
        "Sign in, sign out, pause or resume (§12).",
        _CONTROL,
        params=(_WINDOW,),
        body=StaffEvent,
        answers={
            200: WindowState,
            400: ErrorAnswer,
            401: ErrorAnswer,
            404: ErrorAnswer,
            409: ErrorAnswer,
            415: ErrorAnswer,
        },
    ),
    Operation(
        "hub",
        "post",
        "/v1/alerts/{alert_id}/ack",
        "Acknowledge an alert (seen).",
        _CONTROL,
        params=(_ALERT,),
        body=AlertAckRequest,
        answers={200: AlertAck, 400: ErrorAnswer, 401: ErrorAnswer, 404: ErrorAnswer, 415: ErrorAnswer},
    ),
    Operation(
        "hub",
        "post",
        "/v1/alerts/{alert_id}/callback",
        "Follow-up (§11): the citizen was called back.",
        _CONTROL,
        params=(_ALERT,),
        body=CallbackRequest,
        answers=_STEP_ANSWERS,
    ),
    Operation(
        "hub",
        "post",
        "/v1/alerts/{alert_id}/rectify",
        "Follow-up (§11): whether the complaint held, and that it was put right.",
        _CONTROL,
        params=(_ALERT,),
        body=RectifyRequest,
        answers=_STEP_ANSWERS,
    ),
    Operation(
        "hub",
        "get",
        "/v1/stats",
        "Satisfaction figures (§14) from `from` to `to`, by one key.",
        _VIEW,
        params=(
            Param("from", "query", _DATE, "First day, in the node's time zone."),
            Param("to", "query", _DATE, "Last day, inclusive; at most 400 days."),
            Param("by", "query", {"type": "string", "enum": ["window", "staff", "item", "channel", "day"]}),
        ),
        answers={200: StatsReport, 400: ErrorAnswer},
    ),
    Operation(
        "hub", "get", "/board", "The hall's notice board (§14), for a screen.", answers={200: "text/html"}
    ),
    Operation(
        "receiver",
        "post",
        BATCH_PATH_TEMPLATE,
        "Uplink: one batch of a node's records (gzip).",
        ("node",),
        params=(Param("node_id", "path", {"type": "string", "pattern": f"^{ID_REGEX}$"}, "The node."),),
        body=Batch,
        answers={200: BatchAnswer, 400: ErrorAnswer, 401: ErrorAnswer, 413: ErrorAnswer, 415: ErrorAnswer},
    ),
    Operation(
        "receiver",
        "get",
        "/v1/evaluations",
        "The evaluations that arrived after a cursor.",
        ("node",),
        params=(
            Param("after", "query", {"type": "string", "maxLength": 64}, "A cursor from `next`."),
            Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        answers={200: EvaluationsPage, 400: ErrorAnswer, 401: ErrorAnswer},
    ),
    Operation(
        "receiver", "get", "/metrics", "Prometheus metrics of the receiver.", answers={200: "text/plain"}
    ),
    Operation("receiver", "get", "/openapi.json", "This document.", answers={200: "application/json"}),
)
"""Every documented route of the hub's local API and of the reference receiver."""

_SCHEMES: Final[dict[str, dict[str, Any]]] = {
    "pull": {"type": "http", "scheme": "bearer", "description": "api.pull_token (§5)."},
    "control": {"type": "http", "scheme": "bearer", "description": "api.control_token (§9)."},
    "view": {"type": "http", "scheme": "bearer", "description": "api.view_token or the control token (§9)."},
    "node": {"type": "http", "scheme": "bearer", "description": "The node's central token (§6)."},
}


def _schemas(operations: tuple[Operation, ...]) -> dict[str, Any]:
    models = {op.body for op in operations if op.body is not None}
    models |= {answer for op in operations for answer in op.answers.values() if not isinstance(answer, str)}
    ordered = sorted(models, key=lambda model: model.__name__)
    return schema_components(ordered)


def schema_components(types: list[type[msgspec.Struct]]) -> dict[str, Any]:
    """The JSON Schema of each type and of the types they refer to, by name, as `components/schemas`.

    Descriptions come from the types' docstrings; a field's docstring is not part of its schema.
    """
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    return dict(sorted(components.items()))


def _content(answer: type[msgspec.Struct] | str) -> dict[str, Any]:
    if isinstance(answer, str):
        schema: dict[str, Any] = {"type": "object"} if answer == "application/json" else {"type": "string"}
        return {answer: {"schema": schema}}
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{answer.__name__}"}}}


def _slug(path: str) -> str:
    """`/v1/windows/{window}/evaluate` → `v1_windows_window_evaluate` (`/` → `root`)."""
    return path.strip("/").replace("/", "_").replace("{", "").replace("}", "").replace(".", "_") or "root"


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": f"{op.service}_{op.method}_{_slug(op.path)}",
        "summary": op.summary,
        "tags": [op.service],
    }
    if op.params:
        out["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "schema": dict(p.schema),
                **({"description": p.description} if p.description else {}),
            }
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": _content(op.body)}
    if op.security:
        out["security"] = [{name: []} if name else {} for name in op.security]
    out["responses"] = {
        str(status): {"description": f"HTTP {status}", "content": _content(answer)}
        for status, answer in sorted(op.answers.items())
    }
    return out


def openapi_document(version: str, services: tuple[Service, ...] = ("hub", "receiver")) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `services` (the hub's local API, the reference receiver, or both),
    for hallhub `version`. A path both serve (`/metrics`, `/openapi.json`) is described once."""
    chosen = tuple(op for op in OPERATIONS if op.service in services)
    paths: dict[str, dict[str, Any]] = {}
    for op in chosen:
        paths.setdefault(op.path, {}).setdefault(op.method, _operation(op))
    schemes = {name: scheme for name, scheme in _SCHEMES.items() if any(name in op.security for op in chosen)}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "hallhub HTTP API" if len(services) > 1 else f"hallhub {services[0]} API",
            "version": version,
            "description": "The node's local API (CONTRACTS §5, §9) and the uplink's other side, the "
            'reference central receiver (§6, §16). Errors are JSON `{"error": ...}`.',
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": _schemas(chosen), "securitySchemes": schemes},
    }
