"""HTTP routes for window PCs and hall staff: ask for an evaluation, report who serves at a window,
acknowledge an alert."""

from __future__ import annotations

import re

from aiohttp import web

from contract.mqtt import EvaluateRequest, PayloadError, parse_device_payload
from hub.api.routes import json_error, read_json_object
from hub.hall.alerts import AlertBook
from hub.hall.sessions import SessionManager
from hub.hall.windows import WindowBook

WINDOW = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


def window_and_alert_routes(sessions: SessionManager, alerts: AlertBook) -> list[web.RouteDef]:
    """`POST /v1/windows/{window}/evaluate` and `POST /v1/alerts/{id}/ack`."""

    async def evaluate(request: web.Request) -> web.Response:
        window = request.match_info["window"]
        if not WINDOW.match(window):
            return json_error(400, f"window: expected 1 to 16 letters, digits, '_' or '-', got {window!r}")
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            evaluate_request = parse_device_payload(EvaluateRequest, body)
        except PayloadError as exc:
            return json_error(400, exc.message)
        update = await sessions.request(window, evaluate_request)
        return web.json_response(update.as_dict(drop_none=True), status=200)

    async def ack_alert(request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        by: str | None = None
        if request.can_read_body:
            body = await read_json_object(request)
            if isinstance(body, web.Response):
                return body
            raw_by = body.get("by")
            if raw_by is not None and (not isinstance(raw_by, str) or len(raw_by) > 64):
                return json_error(400, f"by: expected text of at most 64 characters, got {raw_by!r}")
            by = raw_by
        ack = await alerts.acknowledge(alert_id, by)
        if ack is None:
            return json_error(404, f"no alert with id {alert_id}")
        return web.json_response(ack)

    return [
        web.post("/v1/windows/{window}/evaluate", evaluate),
        web.post("/v1/alerts/{alert_id}/ack", ack_alert),
    ]


def window_staff_routes(windows: WindowBook) -> list[web.RouteDef]:
    """`POST /v1/windows/{window}/staff` (§12): sign in, sign out, pause, resume. A control route
    (§9): the control token, a JSON body and this node's `Host`."""

    async def staff(request: web.Request) -> web.Response:
        window = request.match_info["window"]
        if not WINDOW.match(window):
            answer = windows.invalid(
                "http", window, None, f"window: expected 1 to 16 letters, digits, '_' or '-', got {window!r}"
            )
            return web.json_response(answer.body(), status=answer.status)
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            windows.invalid("http", window, None, body.text or "unreadable body")
            return body
        answer = await windows.handle(window, body, via="http")
        return web.json_response(answer.body(), status=answer.status)

    return [web.post("/v1/windows/{window}/staff", staff)]
