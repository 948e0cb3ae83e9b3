"""HTTP routes of the follow-up loop (§11): the callback and rectify steps of a bad review."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ValidationError

from contract.http import CallbackRequest, RectifyRequest
from hub.api.routes import json_error, read_json_object
from hub.hall.followup import FollowupBook, StepAnswer

ALERT_ID_MAX = 64


def _problem(exc: ValidationError) -> str:
    """The first problem of a request body, naming its field."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"{field}: not a field of this request"
    return f"{field}: {error['msg']}"


def followup_routes(book: FollowupBook) -> list[web.RouteDef]:
    """`POST /v1/alerts/{id}/callback` and `POST /v1/alerts/{id}/rectify` (control token, §9)."""

    async def take(request: web.Request, model: type[BaseModel]) -> tuple[str, BaseModel] | web.Response:
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

    def answer(result: StepAnswer) -> web.Response:
        return web.json_response(result.body, status=result.status)

    async def callback(request: web.Request) -> web.Response:
        taken = await take(request, CallbackRequest)
        if isinstance(taken, web.Response):
            return taken
        alert_id, body = taken
        assert isinstance(body, CallbackRequest)
        return answer(await book.callback(alert_id, body))

    async def rectify(request: web.Request) -> web.Response:
        taken = await take(request, RectifyRequest)
        if isinstance(taken, web.Response):
            return taken
        alert_id, body = taken
        assert isinstance(body, RectifyRequest)
        return answer(await book.rectify(alert_id, body))

    return [
        web.post("/v1/alerts/{alert_id}/callback", callback),
        web.post("/v1/alerts/{alert_id}/rectify", rectify),
    ]


__all__ = ["followup_routes"]
