"""HTTP routes of the follow-up loop (§11): the callback and rectify steps of a bad review."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import web

from contract.http import CallbackRequest, RectifyRequest
from contract.validation import Invalid, Problem, convert, lone_surrogate
from hub.api.routes import json_error, read_json_object
from hub.hall.followup import FollowupBook, StepAnswer

ALERT_ID_MAX = 64
Request = TypeVar("Request", bound=msgspec.Struct)
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _problem(problem: Problem) -> str:
    """One problem of a request body, naming its field."""
    field = problem.path or "body"
    if problem.kind == "unknown":
        return f"{field}: not a field of this request"
    return f"{field}: {problem.message}"


def followup_routes(book: FollowupBook) -> list[web.RouteDef]:
    """`POST /v1/alerts/{id}/callback` and `POST /v1/alerts/{id}/rectify` (control token, §9)."""

    async def parse(request: web.Request, model: type[Request]) -> tuple[str, Request] | web.Response:
        """The alert id and the step's body, or the error answer naming what is wrong.

        Text with a lone surrogate escape is refused: it could be neither stored nor published.
        """
        alert_id = request.match_info["alert_id"]
        if len(alert_id) > ALERT_ID_MAX:
            return json_error(404, "no bad-review alert with such an id")
        body = await read_json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            taken = convert(body, model)
        except Invalid as exc:
            return json_error(400, _problem(exc.first))
        surrogate = lone_surrogate(body)
        if surrogate is not None:
            return json_error(400, _problem(surrogate))
        return alert_id, taken

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
