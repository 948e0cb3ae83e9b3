"""The local HTTP API of CONTRACTS §5: health, metrics, status and the pull API."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from contract import jsonbounds
from contract.http import PULL_LIMIT_DEFAULT, PULL_LIMIT_MAX, ack_answer, pull_page
from contract.records import KINDS
from hub import __version__
from hub.api.access import AccessGuard, AccessPolicy, RequestHook
from hub.metrics import HubMetrics
from hub.store.outbox import Outbox, StoreUnavailable

if TYPE_CHECKING:
    from hub.status import NodeStatus

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """A JSON error body `{"error": message}` with the given status."""
    return web.json_response({"error": message, **extra}, status=status)


class HubApi:
    """The application: §5's own routes (health, metrics, status, pull) and the `routes` of the
    hall's features, behind the §9 access check and JSON errors."""

    def __init__(
        self,
        *,
        status: NodeStatus,
        outbox: Outbox,
        metrics: HubMetrics,
        pull_token: str,
        policy: AccessPolicy,
        routes: Sequence[web.RouteDef] = (),
        body_timeout_s: float = 10.0,
        request_hook: RequestHook | None = None,
    ) -> None:
        self.node_status = status
        self.outbox = outbox
        self.hub_metrics = metrics
        self.pull_token = pull_token
        self.extra_routes = list(routes)
        self.guard = AccessGuard(policy, self._count_refusal, request_hook)
        self.body_timeout_s = body_timeout_s

    def _count_refusal(self, reason: str) -> None:
        self.hub_metrics.rejects.labels(reason=reason).inc()

    def make_app(self) -> web.Application:
        """The aiohttp application: errors as JSON outside, the §9 access check inside."""
        app = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._errors, self.guard.middleware]
        )
        app[BODY_TIMEOUT] = self.body_timeout_s
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
                web.get("/v1/status", self.status),
                web.get("/v1/records", self.records),
                web.post("/v1/records/ack", self.records_ack),
                web.get("/openapi.json", openapi),
                *self.extra_routes,
            ]
        )
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every failure becomes a JSON error; the hub never answers with a traceback."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                return json_error(exc.status, exc.reason)
            raise
        except StoreUnavailable as exc:
            return json_error(503, f"outbox unavailable: {exc}")
        except Exception:
            log.exception("api: %s %s failed", request.method, request.path)
            return json_error(500, "internal error (see the hub's log)")

    def _authorized(self, request: web.Request) -> web.Response | None:
        if not self.pull_token:
            return json_error(404, "the pull API is off (set api.pull_token on the node)")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._refuse(request, "missing bearer token (Authorization: Bearer <api.pull_token>)")
        # A header may carry any bytes; aiohttp hands undecodable ones back as surrogates.
        offered = token.encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(offered, self.pull_token.encode()):
            return self._refuse(request, "wrong token")
        return None

    def _refuse(self, request: web.Request, reason: str) -> web.Response:
        """401, counted and logged once per request (never the token itself)."""
        self.hub_metrics.rejects.labels(reason="http_unauthorized").inc()
        log.warning("api: %s %s from %s refused: %s", request.method, request.path, request.remote, reason)
        return json_error(401, reason)

    async def healthz(self, _request: web.Request) -> web.Response:
        """200 ok, or 503 with the problems found."""
        problems = await self.node_status.problems()
        if problems:
            return web.json_response({"status": "degraded", "problems": problems}, status=503)
        return web.json_response({"status": "ok"})

    async def metrics(self, _request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        await self.node_status.refresh_gauges()
        return web.Response(body=self.hub_metrics.render(), content_type="text/plain", charset="utf-8")

    async def status(self, _request: web.Request) -> web.Response:
        """The node at a glance."""
        return web.json_response(await self.node_status.status(), dumps=_dumps)

    async def records(self, request: web.Request) -> web.Response:
        """Pull: pending records with seq > after, oldest first."""
        denied = self._authorized(request)
        if denied is not None:
            return denied
        query = request.query
        unknown = sorted(set(query) - {"after", "limit", "kind"})
        if unknown:
            return json_error(400, f"unknown query parameter: {', '.join(unknown)} (use after, limit, kind)")
        try:
            after = _int_param(query.get("after", "0"), "after", 0, 2**63 - 1)
            limit = _int_param(query.get("limit", str(PULL_LIMIT_DEFAULT)), "limit", 1, PULL_LIMIT_MAX)
        except ValueError as exc:
            return json_error(400, str(exc))
        kind = query.get("kind")
        if kind is not None and kind not in KINDS:
            return json_error(400, f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        bodies, last, more = await self.outbox.pending_page(after, limit, kind)
        text = pull_page(bodies, last, more)
        return web.Response(text=text, content_type="application/json")

    async def records_ack(self, request: web.Request) -> web.Response:
        """Pull: `{"upto": SEQ}` marks every record up to SEQ delivered."""
        denied = self._authorized(request)
        if denied is not None:
            return denied
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        upto = body.get("upto")
        if isinstance(upto, bool) or not isinstance(upto, int) or upto < 0:
            return json_error(400, f"upto: expected a whole number ≥ 0, got {upto!r}")
        highest = self.outbox.last_seq
        if upto > highest:
            return json_error(
                400, f"upto: {upto} is beyond the highest seq this node has assigned ({highest})"
            )
        acked = await self.outbox.ack_upto(upto, via="pull")
        self.hub_metrics.records_delivered.labels(via="pull").inc(acked)
        return web.json_response(ack_answer(acked, upto))


async def read_json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object body, or a 400/413 response saying what is wrong."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return json_error(413, f"body too large: {request.content_length} bytes (limit {MAX_BODY_BYTES})")
    timeout_s = request.app.get(BODY_TIMEOUT, 10.0)
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"body too large (limit {MAX_BODY_BYTES} bytes)")
    except TimeoutError:
        return json_error(408, f"body not received within {timeout_s:g} s")
    try:
        value = jsonbounds.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return json_error(400, "body is not UTF-8")
    except json.JSONDecodeError as exc:
        return json_error(400, f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except jsonbounds.JsonBoundsError as exc:
        return json_error(400, str(exc))
    if not isinstance(value, dict):
        return json_error(400, f"body must be a JSON object, got {type(value).__name__}")
    return value


def _int_param(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}: expected a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}: expected a value from {low} to {high}, got {value}")
    return value


async def openapi(_request: web.Request) -> web.Response:
    """`GET /openapi.json`: the OpenAPI 3.1 document of this API, generated from the contract's models
    (a view route, §9). Built on the first request: an idle hub never loads the schema generator."""
    from contract.openapi import openapi_document  # noqa: PLC0415 (memory: only when asked for)

    return web.json_response(openapi_document(__version__, ("hub",)), dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


__all__ = ["HubApi", "__version__", "json_error", "read_json_object"]
