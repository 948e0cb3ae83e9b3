"""The pages a citizen's phone sees for a rating link (CONTRACTS §13), as plain HTML.

Every answer on `/r/…` is one of these small Chinese pages, never JSON: the phone's browser shows
it as it is. No script at all (the Content-Security-Policy allows none), one inline style sheet
allowed by its hash, a plain form POST; a 360-px-wide phone reads it without zooming. Nothing on
them is about the citizen: the window, the staff member's name as the window prompts it, the item.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

LEVELS: Final = ((5, "非常满意"), (4, "满意"), (3, "基本满意"), (2, "不满意"), (1, "非常不满意"))
"""The five levels of §1, best first as the page shows them."""
LEVEL_NAMES: Final = dict(LEVELS)
REASON_LEVELS: Final = frozenset({1, 2})
"""Levels after which the page offers reasons (§13: "the reason choices after a level of 1 or 2")."""
MAX_COMMENT_CHARS: Final = 500

_STYLE: Final = (
    "*{box-sizing:border-box}"
    "body{margin:0;font:18px/1.5 system-ui,-apple-system,'PingFang SC','Noto Sans CJK SC',sans-serif;"
    "color:#1f2328;background:#f6f8fa}"
    "main{max-width:480px;margin:0 auto;padding:16px}"
    "h1{font-size:22px;margin:8px 0}"
    ".who{color:#57606a;margin:0 0 12px;overflow-wrap:anywhere}"
    ".pick{position:absolute;opacity:0;width:1px;height:1px;margin:0}"
    ".levels label{display:block;min-height:56px;margin:10px 0;padding:12px;border:2px solid #d0d7de;"
    "border-radius:12px;background:#fff;font-size:22px;text-align:center;cursor:pointer}"
    + "".join(
        f"#l{level}:checked~.levels label[for=l{level}]"
        f"{{background:{colour};border-color:{colour};color:#fff}}"
        for level, colour in ((5, "#1a7f37"), (4, "#2da44e"), (3, "#9a6700"), (2, "#bc4c00"), (1, "#cf222e"))
    )
    + "#l1:focus-visible~.levels label[for=l1],#l2:focus-visible~.levels label[for=l2],"
    "#l3:focus-visible~.levels label[for=l3],#l4:focus-visible~.levels label[for=l4],"
    "#l5:focus-visible~.levels label[for=l5]{outline:3px solid #0969da}"
    ".reasons{display:none;margin:12px 0;padding:8px 12px;border:1px solid #d0d7de;border-radius:12px;"
    "background:#fff}"
    "#l1:checked~.reasons,#l2:checked~.reasons{display:block}"
    ".reasons label{display:flex;align-items:center;min-height:44px;gap:10px}"
    ".reasons input{width:24px;height:24px}"
    ".comment{display:block;margin:12px 0 4px}"
    "textarea{width:100%;font:inherit;padding:8px;border:1px solid #d0d7de;border-radius:8px}"
    "button{display:block;width:100%;min-height:56px;margin:16px 0;border:0;border-radius:12px;"
    "background:#0969da;color:#fff;font:inherit;font-size:22px}"
    ".error{padding:10px 12px;border-radius:8px;background:#ffebe9;color:#82071e}"
    ".done{font-size:22px}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
SECURITY_HEADERS: Final = {
    # No script may run, the page loads nothing, posts only to itself and is framed by nobody.
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    # The link is a credential: never cached, never sent on as a referrer.
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class RatingView:
    """What the rating page shows and keeps filled in (after a refused submission)."""

    heading: str
    reasons: Sequence[tuple[str, str]]
    level: int | None = None
    chosen: frozenset[str] = field(default_factory=frozenset)
    comment: str = ""
    error: str | None = None


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def rating_form(view: RatingView) -> str:
    """The rating page: five large level buttons, reasons after 1 or 2, a comment, a submit button."""
    esc = html.escape
    parts = [f"<h1>请您为本次服务评价</h1><p class=who>{esc(view.heading)}</p>"]
    if view.error:
        parts.append(f'<p class=error role="alert">{esc(view.error)}</p>')
    parts.append('<form method="post">')
    for level, _name in LEVELS:
        checked = " checked" if view.level == level else ""
        parts.append(
            f'<input class=pick type="radio" name="level" value="{level}" id="l{level}" required{checked}>'
        )
    parts.append("<div class=levels>")
    parts += [f'<label for="l{level}">{name}</label>' for level, name in LEVELS]
    parts.append("</div>")
    if view.reasons:
        parts.append("<fieldset class=reasons><legend>不满意的原因（可多选）</legend>")
        for code, label in view.reasons:
            checked = " checked" if code in view.chosen else ""
            parts.append(
                f'<label><input type="checkbox" name="reasons" value="{esc(code)}"{checked}>'
                f"{esc(label)}</label>"
            )
        parts.append("</fieldset>")
    parts.append(
        f'<label class=comment for="comment">意见建议（选填，{MAX_COMMENT_CHARS}字以内）</label>'
        f'<textarea id="comment" name="comment" rows="4" maxlength="{MAX_COMMENT_CHARS}">'
        f"{esc(view.comment)}</textarea>"
        '<button type="submit">提交评价</button></form>'
    )
    return _document("服务评价", "".join(parts))


def thanks_page(level: int, bad_review: bool) -> str:
    """After a stored rating."""
    follow = "您的意见已转交大厅，我们将认真核实并改进。" if bad_review else "欢迎您再次监督我们的服务。"
    body = (
        f"<h1>感谢您的评价</h1><p class=done>您的评价：{LEVEL_NAMES[level]}</p><p>{follow}</p>"
        "<p class=who>本页可以关闭。</p>"
    )
    return _document("感谢您的评价", body)


def message_page(title: str, message: str) -> str:
    """Any other answer (already rated, expired, invalid, refused), said in a sentence or two."""
    return _document(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>")


def phone_response(status: int, text: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An HTML answer for a phone, with the page's security headers."""
    return web.Response(
        status=status,
        text=text,
        content_type="text/html",
        charset="utf-8",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def phone_refusal(status: int, message: str) -> web.Response:
    """A refusal on a phone route (§9's checks for `/r/…`), as a page the phone can show."""
    return phone_response(status, message_page("无法打开评价页面", message))


__all__ = [
    "LEVELS",
    "LEVEL_NAMES",
    "MAX_COMMENT_CHARS",
    "REASON_LEVELS",
    "SECURITY_HEADERS",
    "RatingView",
    "message_page",
    "phone_refusal",
    "phone_response",
    "rating_form",
    "thanks_page",
]
