"""HTTP routes of the follow-up loop (§11): the callback and rectify steps of a bad review."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from contract.http import CallbackRequest, RectifyRequest
from hub.api.routes import json_error, read_json_object
from hub.hall.followup import FollowupBook, StepAnswer

ALERT_ID_MAX = 64
Request = TypeVar("Request", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _problem(exc: ValidationError) -> str:
    """The first problem of a request body, naming its field."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"{field}: not a field of this request"
    return f"{field}: {error['msg']}"


def followup_routes(book: FollowupBook) -> list[web.RouteDef]:
    """`POST /v1/alerts/{id}/callback` and `POST /v1/alerts/{id}/rectify` (control token, §9)."""

    async def parse(request: web.Request, model: type[Request]) -> tuple[str, Request] | web.Response:
        """The alert id and the step's body, or the error answer naming what is wrong."""
        alert_id = request.match_info["alert_id"]
        if len(alert_id) > ALERT_ID_MAX:
            return json_error(404, "no bad-review alert with such an id")
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            return alert_id, model.model_validate(body)
        except ValidationError as exc:
            return json_error(400, _problem(exc))

    def step(model: type[Request], take: Callable[[str, Request], Awaitable[StepAnswer]]) -> Handler:
        """A route handler for one step: its body's model and the book's method that takes it."""

        async def handle(request: web.Request) -> web.Response:
            taken = await parse(request, model)
            if isinstance(taken, web.Response):
                return taken
            result = await take(*taken)
            return web.json_response(result.body, status=result.status)

        return handle

    callback = step(CallbackRequest, book.callback)
    rectify = step(RectifyRequest, book.rectify)

    return [
        web.post("/v1/alerts/{alert_id}/callback", callback),
        web.post("/v1/alerts/{alert_id}/rectify", rectify),
    ]


__all__ = ["followup_routes"]
