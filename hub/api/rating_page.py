"""`GET` and `POST /r/{token}`: the rating page on the citizen's own phone (CONTRACTS §13).

The link's token is the only credential (§9). A submission is a plain form POST
(`application/x-www-form-urlencoded`), read with a size bound and judged field by field like any
hostile input; a good one is stored through the hub's intake as an evaluation with channel `qr`,
carrying its session's case, item, window and staff, and ends the session `rated`. Every answer
is a Chinese page. Submissions are limited per client address; the address is only hashed (under a
key made at start-up) to find its bucket, and never logged or stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from aiohttp import web

from contract.records import Record
from hub.api.phone_pages import (
    MAX_COMMENT_CHARS,
    REASON_LEVELS,
    RatingView,
    message_page,
    phone_response,
    rating_form,
    thanks_page,
)
from hub.hall.links import LinkState, phone_device
from hub.hall.sessions import Attribution, SessionContext, SessionManager
from hub.ingest.intake import Intake
from hub.ingest.ratelimit import RateLimiter
from hub.metrics import HubMetrics
from hub.privacy.id_numbers import mask_id_numbers
from hub.store.outbox import DedupKey, StoreResult, StoreUnavailable

log = logging.getLogger(__name__)

MAX_FORM_BYTES: Final = 8 * 1024
"""A full form: 500 characters of comment percent-encoded (up to 9 bytes each in UTF-8) and the
reasons; anything larger is no form of ours."""
MAX_FORM_FIELDS: Final = 24
FORM_TYPE: Final = "application/x-www-form-urlencoded"
RATE_LIMIT_ADDRESSES: Final = 10_000
"""Client addresses whose submission buckets are kept at most (full buckets are dropped first)."""

DEFAULT_REASONS: Final = (
    ("R1", "等候时间长"),
    ("R2", "服务态度不好"),
    ("R3", "办理效率低"),
    ("R4", "告知不清楚、不一次性告知"),
    ("R5", "环境设施不便"),
    ("R8", "其他"),
)
"""The keypad's named reason codes (CONTRACTS §3: R1 long wait, R2 attitude, R3 slow handling, R4
unclear guidance, R5 environment, R8 other), as the page words them for citizens."""
REASON_LABELS: Final = dict(DEFAULT_REASONS)

GONE: Final = {
    LinkState.RATED_ELSEWHERE: ("本次服务已评价", "这次服务已经在窗口的评价器上评价过了，感谢您的参与。"),
    LinkState.EXPIRED: ("评价链接已过期", "这个评价链接已过期。如需评价，请向窗口工作人员重新获取。"),
    LinkState.CANCELLED: ("本次评价已取消", "这个评价链接已失效。如需评价，请向窗口工作人员重新获取。"),
}
USED: Final = ("您已评价", "这次服务您已经评价过了（已评价），感谢您的反馈。")
UNKNOWN: Final = ("评价链接无效", "这个评价链接无效或已失效。如需评价，请向窗口工作人员重新获取。")


def page_reasons(national_reasons: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The reasons the page offers: those `national.reasons` maps to the platform's codes when it
    maps any (labelled by the keypad's wording, or by the code), else the keypad's named ones."""
    if not national_reasons:
        return DEFAULT_REASONS
    return tuple((code, REASON_LABELS.get(code, code)) for code in sorted(national_reasons))


@dataclass(frozen=True, slots=True)
class RatingForm:
    """A submission that passed every check."""

    level: int
    reasons: list[str]
    comment: str | None


class FormProblem(Exception):
    """A submission refused: `message` for the citizen (naming the field), `view` fields to keep."""

    def __init__(
        self, message: str, *, level: int | None = None, chosen: Iterable[str] = (), comment: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.level = level
        self.chosen = frozenset(chosen)
        self.comment = comment


def parse_rating_form(body: bytes, allowed_reasons: frozenset[str]) -> RatingForm:
    """The rating form's fields, checked: `level` 1–5 once, `reasons` only after 1 or 2 and each one
    the page offers, `comment` at most 500 characters of text. FormProblem names what is wrong."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise FormProblem("提交的内容不是 UTF-8 文本，请在页面上重新填写提交。(body)") from None
    except ValueError:
        raise FormProblem(f"提交的字段过多（最多 {MAX_FORM_FIELDS} 个）。(body)") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in ("level", "reasons", "comment"):
            raise FormProblem(f"无法识别的字段 {name[:32]!r}。(level, reasons, comment)")
        fields.setdefault(name, []).append(value)
    comment = _comment(fields.get("comment", []))
    reasons = fields.get("reasons", [])
    levels = fields.get("level", [])
    if not levels:
        raise FormProblem("请选择满意程度。(level)", chosen=reasons, comment=comment or "")
    if len(levels) > 1 or levels[0] not in ("1", "2", "3", "4", "5"):
        raise FormProblem("满意程度无效，请在五个选项中选择一个。(level)", comment=comment or "")
    level = int(levels[0])
    if len(set(reasons)) != len(reasons) or not set(reasons) <= allowed_reasons:
        raise FormProblem("所选原因无效，请重新选择。(reasons)", level=level, comment=comment or "")
    if reasons and level not in REASON_LEVELS:
        raise FormProblem(
            "原因只在“不满意”或“非常不满意”时填写，已为您取消所选原因，请确认后再次提交。(reasons)",
            level=level,
            comment=comment or "",
        )
    return RatingForm(level, reasons, comment)


def _comment(values: list[str]) -> str | None:
    """The comment: one, at most 500 characters (a browser's line breaks count as one), printable."""
    if len(values) > 1:
        raise FormProblem("意见建议只能有一段。(comment)")
    if not values:
        return None
    comment = values[0].replace("\r\n", "\n").strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise FormProblem(
            f"意见建议最多 {MAX_COMMENT_CHARS} 字，现在是 {len(comment)} 字。(comment)",
            comment=comment[:MAX_COMMENT_CHARS],
        )
    if any(unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn") and char not in "\n\t" for char in comment):
        raise FormProblem("意见建议中有无法识别的字符，请删除后重新提交。(comment)")
    return comment or None


class RatingPage:
    """The phone routes of one hub: its sessions' links, its intake, its metrics and limits."""

    def __init__(
        self,
        sessions: SessionManager,
        intake: Intake,
        metrics: HubMetrics,
        *,
        reasons: Sequence[tuple[str, str]] = DEFAULT_REASONS,
        submissions_per_minute: int = 10,
        body_timeout_s: float = 10.0,
    ) -> None:
        self.sessions = sessions
        self.intake = intake
        self.metrics = metrics
        self.reasons = tuple(reasons)
        self.allowed = frozenset(code for code, _label in self.reasons)
        self.body_timeout_s = body_timeout_s
        self.limiter = RateLimiter(
            rate=submissions_per_minute / 60.0, burst=submissions_per_minute, max_keys=RATE_LIMIT_ADDRESSES
        )
        self._address_key = secrets.token_bytes(16)

    def routes(self) -> list[web.RouteDef]:
        """`/r/{token}` for GET, HEAD and POST (any other method: 405); anything else under `/r/`: 404."""
        return [web.route("*", "/r/{token}", self.handle), web.route("*", "/r/{rest:.*}", self.not_found)]

    def _refuse(self, reason: str) -> None:
        self.metrics.inc(self.metrics.rejects, f"qr_{reason}")

    async def not_found(self, _request: web.Request) -> web.Response:
        """A path under `/r/` that is no link."""
        self._refuse("unknown_link")
        return phone_response(404, message_page(*UNKNOWN))

    async def handle(self, request: web.Request) -> web.Response:
        """Show the page (GET, HEAD) or take a rating (POST)."""
        if request.method in ("GET", "HEAD"):
            return self.show(request.match_info["token"])
        if request.method == "POST":
            try:
                return await self.submit(request)
            except StoreUnavailable:
                return phone_response(503, message_page("系统繁忙", "系统繁忙，评价未能保存，请稍后重试。"))
            except Exception:
                log.exception("api: a rating from a phone failed")
                return phone_response(
                    500, message_page("系统繁忙", "系统出现问题，评价未能保存，请稍后重试。")
                )
        self._refuse("method")
        return phone_response(
            405,
            message_page("无法处理该请求", "请用手机浏览器打开评价链接。"),
            headers={"Allow": "GET, HEAD, POST"},
        )

    def _heading(self, window: str, context: SessionContext | None, staff_name: str | None) -> str:
        parts = [f"{window}号窗口"]
        if staff_name:
            parts.append(staff_name)
        if context is not None and context.item_name:
            parts.append(context.item_name)
        return " · ".join(parts)

    def _closed(self, state: LinkState) -> web.Response:
        """The answer for a link that can take no rating: 409 once rated here, 410 otherwise."""
        if state in (LinkState.USED, LinkState.CLAIMED):
            self._refuse("link_used")
            return phone_response(409, message_page(*USED))
        self._refuse("link_gone")
        return phone_response(410, message_page(*GONE[state]))

    def show(self, token: str, problem: FormProblem | None = None) -> web.Response:
        """The rating page of an open link (with a refused submission's message and choices)."""
        found = self.sessions.link_session(token)
        if found is None:
            self._refuse("unknown_link")
            return phone_response(404, message_page(*UNKNOWN))
        link, context, staff_name = found
        if link.state is not LinkState.OPEN:
            return self._closed(link.state)
        view = RatingView(heading=self._heading(link.window, context, staff_name), reasons=self.reasons)
        if problem is not None:
            view = RatingView(
                heading=view.heading,
                reasons=self.reasons,
                level=problem.level,
                chosen=problem.chosen & self.allowed,
                comment=problem.comment,
                error=problem.message,
            )
        return phone_response(400 if problem is not None else 200, rating_form(view))

    def _client_key(self, request: web.Request) -> str:
        """The rate-limit bucket of the client's address: a keyed hash, so no address is kept."""
        address = (request.remote or "").encode("utf-8", "surrogatepass")
        return hashlib.blake2s(address, key=self._address_key, digest_size=16).hexdigest()

    async def submit(self, request: web.Request) -> web.Response:
        """Check the address's rate, the body and the link; store the rating; thank the citizen."""
        token = request.match_info["token"]
        if not self.limiter.allow(self._client_key(request), time.monotonic()):
            self._refuse("rate_limited")
            page = message_page("提交过于频繁", "提交过于频繁，请稍等一分钟后再试。")
            return phone_response(429, page, headers={"Retry-After": "60"})
        if request.content_type != FORM_TYPE:
            self._refuse("content_type")
            return phone_response(
                415, message_page("无法提交", "提交格式不正确，请在评价页面上点击“提交评价”。")
            )
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        if self.sessions.link_session(token) is None:
            self._refuse("unknown_link")
            return phone_response(404, message_page(*UNKNOWN))
        try:
            form = parse_rating_form(body, self.allowed)
        except FormProblem as problem:
            self._refuse("form")
            return self.show(token, problem)
        state, record_id = await self.sessions.rate_by_link(
            token, form.level, lambda attribution: self._store(form, attribution)
        )
        if state is None:
            self._refuse("unknown_link")
            return phone_response(404, message_page(*UNKNOWN))
        if state is LinkState.OPEN:  # the store refused it (never for evaluations: a safeguard)
            return phone_response(503, message_page("系统繁忙", "系统繁忙，评价未能保存，请稍后重试。"))
        if state is not LinkState.USED or record_id is None:
            return self._closed(state)
        bad = form.level <= self.intake.config.evaluation.bad_level
        return phone_response(200, thanks_page(form.level, bad))

    async def _read(self, request: web.Request) -> bytes | web.Response:
        """The body, at most MAX_FORM_BYTES, within the API's body deadline."""
        too_large = phone_response(
            413, message_page("提交内容过长", "提交的内容过长，请精简意见建议后重试。")
        )
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            self._refuse("too_large")
            return too_large
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await request.content.read(MAX_FORM_BYTES + 1)
                while len(body) <= MAX_FORM_BYTES and not request.content.at_eof():
                    chunk = await request.content.read(MAX_FORM_BYTES + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
        except TimeoutError:
            self._refuse("slow_body")
            return phone_response(408, message_page("提交超时", "网络较慢，提交未完成，请重试。"))
        if len(body) > MAX_FORM_BYTES:
            self._refuse("too_large")
            return too_large
        return body

    async def _store(self, form: RatingForm, attribution: Attribution) -> StoreResult:
        """The evaluation (and a bad review's alert) through the intake, as every rating is stored."""
        context = attribution.context
        assert context is not None  # a link's session is open while it is rated
        device = phone_device(context.window)
        comment = mask_id_numbers(form.comment).text if form.comment else None
        records: list[Record] = self.intake.evaluation(
            device,
            level=form.level,
            reasons=form.reasons,
            comment=comment,
            case_no=context.case_no,
            item_code=context.item_code,
            item_name=context.item_name,
            window=attribution.window,
            staff_id=context.staff_id,
            session=context.session,
            citizen=attribution.citizen,
            flags=attribution.flags,
            user_prop=context.user_prop,
        )
        return await self.intake.store(records, DedupKey(device.id, f"link-session-{context.session}", None))


__all__ = ["DEFAULT_REASONS", "FormProblem", "RatingForm", "RatingPage", "page_reasons", "parse_rating_form"]
