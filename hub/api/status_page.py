"""The technician's status page at `GET /` (CONTRACTS §5), and today's ratings by window.

Plain server-rendered HTML: node identity, broker and central, open alerts, every device with its
online state, last seen and error counts, the outbox, and today's ratings by window as CSS bars.
Every piece of text from the hub or a device is escaped. A few lines of JavaScript fetch the page
again every `refresh` seconds (default 5) and swap its content in, so a phone keeps its scroll
position; without JavaScript a `<meta refresh>` does the same. When the hub stops answering, the
page says so instead of showing stale numbers as if they were live.

`GET /v1/ratings/today` serves the ratings as JSON (used by `hallhub status`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from contract.records import format_utc, parse_rfc3339
from hub.api.hall_sections import followups_section, satisfaction_section, windows_section
from hub.config import DEFAULT_TIMEZONE
from hub.privacy.redact import redact_url
from hub.store.outbox import Outbox, StoreUnavailable

if TYPE_CHECKING:
    from rich.console import Console

    from hub.hall.stats import SatisfactionStats
    from hub.status import NodeStatus

DEFAULT_REFRESH_S: Final = 5
MAX_REFRESH_S: Final = 300
FALLBACK_ALERTS: Final = 200
LEVELS: Final = (5, 4, 3, 2, 1)
LEVEL_NAMES: Final[dict[int, str]] = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}

_SCRIPT: Final = (
    "(()=>{const b=document.body,s=+b.dataset.refresh*1000,K='hallhub-control-token',B='hallhub-by';"
    "async function load(){try{const r=await fetch(location.href,{cache:'no-store'});"
    "if(!r.ok)throw Error(r.status);const d=new DOMParser().parseFromString(await r.text(),'text/html');"
    "document.getElementById('page').replaceWith(d.getElementById('page'));b.classList.remove('stale')}"
    "catch(e){b.classList.add('stale')}}"
    # A change needs the control token (§9) once one is set: asked once, kept for this tab only.
    "async function post(u,v){const h={'Content-Type':'application/json'};"
    "for(let i=0;i<3;i++){const t=sessionStorage.getItem(K);if(t)h.Authorization='Bearer '+t;"
    "const r=await fetch(u,{method:'POST',headers:h,body:JSON.stringify(v)});if(r.status!==401)return r;"
    "sessionStorage.removeItem(K);const n=prompt('控制令牌 control token (api.control_token)');"
    "if(!n)return r;sessionStorage.setItem(K,n.trim())}}"
    "document.addEventListener('click',async e=>{const id=e.target.dataset.ack;if(!id)return;"
    "await post('/v1/alerts/'+encodeURIComponent(id)+'/ack',{});load()});"
    # A follow-up step (§11): who takes it is asked once and kept for this tab, like the token.
    "document.addEventListener('click',async e=>{const d=e.target.dataset;if(!d.step)return;"
    "let by=sessionStorage.getItem(B)||prompt('处理人 who is taking this step');if(!by)return;"
    "sessionStorage.setItem(B,by.trim());const v=d.step==='callback'?{by,outcome:d.value}"
    ":{by,substantiated:d.value==='true'};"
    "await post('/v1/alerts/'+encodeURIComponent(d.alert)+'/'+d.step,v);load()});"
    "setInterval(load,s)})()"
)
_SCRIPT_HASH: Final = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_STYLE: Final = """
:root{--ok:#1b7f3b;--bad:#b3261e;--warn:#9a6700;--mute:#5f6368;--line:#dadce0}
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,sans-serif;color:#202124;background:#f6f7f9}
header{background:#202124;color:#fff;padding:.6rem .9rem;display:flex;flex-wrap:wrap;gap:.3rem 1rem;
align-items:baseline}header h1{font-size:1.05rem;margin:0}header .sub{color:#bdc1c6;font-size:.85rem}
main{padding:.6rem;max-width:60rem;margin:auto}section{background:#fff;border:1px solid var(--line);
border-radius:8px;padding:.6rem .8rem;margin:.6rem 0}h2{font-size:1rem;margin:0 0 .4rem}
.ok{color:var(--ok)}.bad{color:var(--bad)}.warn{color:var(--warn)}.mute{color:var(--mute)}
.badge{display:inline-block;padding:0 .45rem;border-radius:1rem;font-size:.8rem;font-weight:600;color:#fff}
.badge.ok{background:var(--ok);color:#fff}.badge.bad{background:var(--bad);color:#fff}
.problems{background:#fce8e6;border-color:#f4c7c3}.problems li{color:var(--bad)}
ul{margin:0;padding-left:1.1rem}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:.3rem .4rem;border-top:1px solid var(--line);vertical-align:top}
th{font-size:.8rem;color:var(--mute);border-top:0}.num{text-align:right;font-variant-numeric:tabular-nums}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem}
.bar{display:flex;height:1.1rem;border-radius:3px;overflow:hidden;background:#eceff1;min-width:6rem}
.bar span{display:block;height:100%}.l5{background:#137333}.l4{background:#5bb974}.l3{background:#fbbc04}
.l2{background:#f29900}.l1{background:#d93025}
.legend span{display:inline-block;margin-right:.7rem;font-size:.8rem}
.legend i{display:inline-block;width:.8rem;height:.8rem;margin-right:.25rem;vertical-align:-1px}
.stale-note{display:none}.stale .stale-note{display:block;position:sticky;top:0;background:var(--bad);
color:#fff;padding:.4rem .9rem;font-weight:600}button{font:inherit;padding:.1rem .5rem}
@media (max-width:40rem){.wide{display:none}td,th{padding:.25rem}}
.scroll{overflow-x:auto;max-width:100%}
"""


@dataclass(slots=True)
class WindowRatings:
    """One window's ratings today, by level."""

    window: str | None
    levels: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """All ratings at this window today."""
        return sum(self.levels.values())

    def to_json(self) -> dict[str, Any]:
        """The JSON form served by /v1/ratings/today."""
        return {
            "window": self.window,
            "levels": {str(level): self.levels.get(level, 0) for level in LEVELS},
            "total": self.total,
        }


@dataclass(slots=True)
class RatingsToday:
    """Ratings since local midnight in the hall's time zone (`national.timezone`)."""

    date: str
    timezone: str
    since: str
    windows: list[WindowRatings]

    @property
    def total(self) -> int:
        """All ratings today."""
        return sum(w.total for w in self.windows)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of /v1/ratings/today."""
        return {
            "date": self.date,
            "timezone": self.timezone,
            "since": self.since,
            "total": self.total,
            "windows": [w.to_json() for w in self.windows],
        }


def hall_zone(name: str) -> ZoneInfo:
    """The hall's time zone; UTC if the system has no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


async def ratings_today(outbox: Outbox, timezone: str, now: datetime | None = None) -> RatingsToday:
    """Today's ratings by window and level, counted by the outbox beside its writer and reader."""
    zone = hall_zone(timezone)
    local = (now or datetime.now(UTC)).astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    since = format_utc(midnight)
    try:
        counts = await outbox.ratings_since(since)
    except StoreUnavailable:
        counts = []
    by_window: dict[str | None, WindowRatings] = {}
    for count in counts:
        entry = by_window.setdefault(count.window, WindowRatings(count.window))
        entry.levels[count.level] = entry.levels.get(count.level, 0) + count.count
    windows = sorted(by_window.values(), key=lambda w: (w.window is None, w.window or ""))
    return RatingsToday(local.date().isoformat(), zone.key, since, windows)


async def _bad_reviews(outbox: Outbox, status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Open bad-review alerts: the hub's alert book, or (without one) those still pending upload."""
    alerts = status.get("alerts")
    if isinstance(alerts, list):
        return [a for a in alerts if isinstance(a, dict)]
    bodies, _last, _more = await outbox.pending_page(0, FALLBACK_ALERTS, "alert")
    records = [json.loads(body) for body in bodies]
    return [r for r in records if r.get("data", {}).get("type") == "bad_review"]


# -- rendering helpers ---------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape any value for HTML text and attributes."""
    return escape("" if value is None else str(value), quote=True)


def _age(moment: str | None, now: datetime) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`."""
    if not moment:
        return "never"
    try:
        seconds = max(0.0, (now - parse_rfc3339(moment)).total_seconds())
    except ValueError:
        return moment
    return f"{human_duration(seconds)} ago"


def human_duration(seconds: float) -> str:
    """A short duration for people: `42 s`, `5 min`, `3 h 5 min`, `2 d 4 h`."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _local_time(moment: str | None, zone: ZoneInfo) -> str:
    if not moment:
        return "-"
    try:
        return parse_rfc3339(moment).astimezone(zone).strftime("%m-%d %H:%M:%S")
    except ValueError:
        return moment


def _badge(good: bool, yes: str, no: str) -> str:
    return f'<span class="badge ok">{yes}</span>' if good else f'<span class="badge bad">{no}</span>'


def _section(title: str, body: str, css: str = "", ident: str = "") -> str:
    attrs = (f' class="{css}"' if css else "") + (f' id="{ident}"' if ident else "")
    return f"<section{attrs}><h2>{title}</h2>{body}</section>"


def _connections(status: Mapping[str, Any], central_url: str, now: datetime, zone: ZoneInfo) -> str:
    broker = status.get("broker", {})
    sync = status.get("sync", {})
    connected = bool(broker.get("connected"))
    broker_badge = _badge(connected, "connected", "not connected")
    push = f"on, to {redact_url(central_url, mark='')}" if sync.get("push") else "off (central.url is empty)"
    pull = "on" if sync.get("pull") else "off"
    last = sync.get("last_sync")
    rows = [
        ("MQTT broker", f"{_e(broker.get('host'))}:{_e(broker.get('port'))} {broker_badge}"),
        ("central push", _e(push)),
        ("last upload", _e(f"{_age(last, now)} ({_local_time(last, zone)})" if last else "never")),
        ("pull API", _e(pull)),
    ]
    body = "".join(f"<div>{name}</div><div>{value}</div>" for name, value in rows)
    return _section("Connections", f'<div class="kv" id="connections">{body}</div>')


def _alerts(bad_reviews: list[dict[str, Any]], faults: list[dict[str, Any]], zone: ZoneInfo) -> str:
    items: list[str] = []
    for alert in faults:
        where = f" · window {_e(alert['window'])}" if alert.get("window") else ""
        detail = f" <span class='mute'>({_e(alert['detail'])})</span>" if alert.get("detail") else ""
        items.append(
            f'<li class="bad" data-fault="{_e(alert.get("device_id"))}:{_e(alert.get("fault"))}">'
            f"<b>{_e(alert.get('device_id'))}</b>: {_e(alert.get('description') or alert.get('fault'))}"
            f"{where} · since {_e(_local_time(alert.get('raised_at'), zone))}{detail}</li>"
        )
    for alert in bad_reviews:
        data = alert.get("data", {})
        level = data.get("level")
        parts = [
            f"window {_e(data.get('window') or '-')}",
            f"level {_e(level)} {_e(LEVEL_NAMES.get(level, ''))}",
        ]
        if data.get("case_no"):
            parts.append(f"case {_e(data['case_no'])}")
        if data.get("staff_id"):
            parts.append(f"staff {_e(data['staff_id'])}")
        parts.append(_e(_local_time(alert.get("created_at"), zone)))
        items.append(
            f'<li data-alert="{_e(alert.get("id"))}"><b>bad review</b>: {" · ".join(parts)} '
            f'<button type="button" data-ack="{_e(alert.get("id"))}">acknowledge</button></li>'
        )
    count = len(items)
    body = f"<ul>{''.join(items)}</ul>" if items else '<p class="ok">no open alerts</p>'
    return _section(f"Open alerts ({count})", body, "problems" if count else "", "alerts")


def _devices(devices: Iterable[Mapping[str, Any]], now: datetime, zone: ZoneInfo) -> str:
    """One row per device; faults and the offline reason stay visible on a phone, details do not."""
    rows = []
    devices = list(devices)
    online = 0
    for device in devices:
        is_online = bool(device.get("online"))
        online += is_online
        errors = device.get("errors") or {}
        total = sum(int(n) for n in errors.values())
        breakdown = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(errors.items()))
        error_cell = f'<span class="warn" title="{breakdown}">{total}</span>' if total else "0"
        notes = [f'<span class="bad">{_e(f)}</span>' for f in device.get("faults") or ()]
        if device.get("detail"):
            notes.append(f'<span class="mute">{_e(device["detail"])}</span>')
        extra = "".join(f"<br>{note}" for note in notes)
        last_seen = device.get("last_seen")
        rows.append(
            f'<tr data-device="{_e(device.get("id"))}" data-online="{"true" if is_online else "false"}">'
            f"<td><b>{_e(device.get('id'))}</b><br><span class='mute'>{_e(device.get('kind'))}"
            f" · {_e(device.get('transport'))}</span>{extra}</td>"
            f"<td>{_e(device.get('window') or '-')}</td><td>{_badge(is_online, 'online', 'offline')}</td>"
            f'<td title="{_e(_local_time(last_seen, zone))}">{_e(_age(last_seen, now))}</td>'
            f'<td class="num">{error_cell}</td>'
            f'<td class="wide">{_e(device.get("fw") or "")}'
            f'<br><span class="mute">{breakdown}</span></td></tr>'
        )
    head = (
        "<tr><th>device</th><th>window</th><th>state</th><th>last seen</th>"
        '<th class="num">errors</th><th class="wide">firmware · errors by reason</th></tr>'
    )
    body = f"<table>{head}{''.join(rows)}</table>" if rows else '<p class="mute">no devices configured</p>'
    return _section(f"Devices ({online} of {len(devices)} online)", body, ident="devices")


def _outbox(outbox: Mapping[str, Any]) -> str:
    by_kind = outbox.get("pending_by_kind") or {}
    kinds = ", ".join(f"{_e(kind)} {_e(n)}" for kind, n in sorted(by_kind.items())) or "-"
    dead = int(outbox.get("dead_letters") or 0)
    used_mb = int(outbox.get("used_bytes") or 0) / 2**20
    max_mb = int(outbox.get("max_bytes") or 0) / 2**20
    rows = [
        ("pending", f"<b>{_e(outbox.get('pending', 0))}</b> ({kinds})"),
        ("oldest pending", _e(human_duration(float(outbox.get("oldest_pending_age_s") or 0)))),
        ("dead letters", f'<span class="{"bad" if dead else "ok"}">{dead}</span>'),
        ("disk", f"{used_mb:.1f} of {max_mb:.0f} MB"),
    ]
    body = "".join(f"<div>{name}</div><div>{value}</div>" for name, value in rows)
    return _section("Outbox", f'<div class="kv" id="outbox">{body}</div>')


def _ratings(ratings: RatingsToday) -> str:
    legend = "".join(f'<span><i class="l{level}"></i>{level} {LEVEL_NAMES[level]}</span>' for level in LEVELS)
    rows = []
    for window in ratings.windows:
        total = window.total
        segments = "".join(
            f'<span class="l{level}" style="width:{100 * window.levels[level] / total:.2f}%" '
            f'title="{level} {LEVEL_NAMES[level]}: {window.levels[level]}"></span>'
            for level in LEVELS
            if window.levels.get(level)
        )
        satisfied = sum(window.levels.get(level, 0) for level in (5, 4, 3))
        share = f"{100 * satisfied / total:.0f}%" if total else "-"
        label = _e(window.window) if window.window is not None else '<span class="mute">no window</span>'
        rows.append(
            f'<tr data-window="{_e(window.window or "")}"><td>{label}</td><td class="num">{total}</td>'
            f'<td style="width:60%"><div class="bar">{segments}</div></td><td class="num">{share}</td></tr>'
        )
    head = (
        '<tr><th>window</th><th class="num">ratings</th><th>by level</th><th class="num">satisfied</th></tr>'
    )
    table = f"<table>{head}{''.join(rows)}</table>" if rows else '<p class="mute">no ratings yet today</p>'
    title = f"Ratings today ({_e(ratings.date)}, {ratings.total})"
    return _section(title, f'<div class="legend">{legend}</div>{table}', ident="ratings")


def render_page(
    status: Mapping[str, Any],
    problems: list[str],
    bad_reviews: list[dict[str, Any]],
    ratings: RatingsToday,
    *,
    hall: str = "",
    refresh_s: int = DEFAULT_REFRESH_S,
    now: datetime | None = None,
    central_url: str = "",
) -> str:
    """The whole page as HTML text."""
    now = now or datetime.now(UTC)
    zone = hall_zone(ratings.timezone)
    node = status.get("node", {})
    problem_box = (
        _section(
            f"Problems ({len(problems)})",
            "<ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>",
            "problems",
            "problems",
        )
        if problems
        else ""
    )
    updated = now.astimezone(zone).strftime("%H:%M:%S")
    main = (
        f'<main id="page"><p class="mute" id="updated">updated {updated} · refreshes every {refresh_s} s</p>'
        f"{problem_box}{_connections(status, central_url, now, zone)}"
        f"{_alerts(bad_reviews, list(status.get('device_alerts') or []), zone)}"
        f"{followups_section(list(status.get('followups') or []), now, zone)}"
        f"{windows_section(list(status.get('windows') or []), zone)}"
        f"{_devices(status.get('devices') or [], now, zone)}{_outbox(status.get('outbox') or {})}"
        f"{_ratings(ratings)}{hall}</main>"
    )
    title = f"hallhub · {_e(node.get('id'))}"
    return (
        "<!DOCTYPE html>"
        f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<noscript><meta http-equiv="refresh" content="{refresh_s}"></noscript>'
        f"<style>{_STYLE}</style></head>"
        f'<body data-refresh="{refresh_s}"><div class="stale-note">the hub is not answering: '
        "the numbers below are from the last successful refresh</div>"
        f"<header><h1>{title}</h1><span class='sub'>hall {_e(node.get('hall_code'))} · hallhub "
        f"{_e(node.get('version'))} · up since {_e(_local_time(node.get('started_at'), zone))}"
        f" · times in {_e(zone.key)}"
        "</span></header>"
        f"{main}<script>{_SCRIPT}</script></body></html>"
    )


def _refresh_param(request: web.Request) -> int:
    text = request.query.get("refresh", "")
    if text.isdigit() and 1 <= int(text) <= MAX_REFRESH_S:
        return int(text)
    return DEFAULT_REFRESH_S


def status_page_routes(
    status_source: NodeStatus,
    outbox: Outbox,
    stats: SatisfactionStats,
    *,
    timezone: str,
    central_url: str,
) -> list[web.RouteDef]:
    """`GET /` (the page) and `GET /v1/ratings/today` (JSON), from the node's status and outbox."""

    async def page(request: web.Request) -> web.Response:
        status = await status_source.status()
        problems = await status_source.problems()
        bad_reviews = await _bad_reviews(outbox, status)
        ratings = await ratings_today(outbox, timezone)
        try:
            hall = satisfaction_section(await stats.by_periods("window"), await stats.by_periods("staff"))
        except StoreUnavailable:
            hall = ""
        html = render_page(
            status,
            problems,
            bad_reviews,
            ratings,
            hall=hall,
            refresh_s=_refresh_param(request),
            central_url=central_url,
        )
        return web.Response(
            text=html,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": _CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def today(_request: web.Request) -> web.Response:
        ratings = await ratings_today(outbox, timezone)
        return web.json_response(ratings.to_json())

    return [web.get("/", page), web.get("/v1/ratings/today", today)]


def print_status_extras(console: Console, doc: Mapping[str, Any], ratings: Mapping[str, Any] | None) -> None:
    """`hallhub status`: open alerts and today's ratings by window, as on the status page."""
    from rich.markup import escape as rich_escape  # noqa: PLC0415 (the CLI's import only)
    from rich.table import Table  # noqa: PLC0415

    faults = list(doc.get("device_alerts") or [])
    reviews = [a for a in doc.get("alerts") or [] if isinstance(a, dict)]
    zone = hall_zone(str((ratings or {}).get("timezone") or DEFAULT_TIMEZONE))
    if not faults and not reviews:
        console.print("alerts: [green]none open[/]")
    else:
        table = Table(title=f"{len(faults) + len(reviews)} open alerts")
        for column in ("alert", "where", "what", f"since ({zone.key})"):
            table.add_column(column)
        for alert in faults:
            table.add_row(
                "device fault",
                rich_escape(str(alert.get("device_id"))),
                rich_escape(str(alert.get("description") or alert.get("fault"))),
                rich_escape(_local_time(alert.get("raised_at"), zone)),
            )
        for alert in reviews:
            data = alert.get("data", {})
            what = f"level {data.get('level')}" + (f", case {data['case_no']}" if data.get("case_no") else "")
            table.add_row(
                "bad review",
                rich_escape(f"window {data.get('window') or '-'}"),
                rich_escape(what),
                rich_escape(_local_time(alert.get("created_at"), zone)),
            )
        console.print(table)
    if ratings is None:
        return
    table = Table(title=f"ratings today ({ratings.get('date')}, {ratings.get('total', 0)})")
    table.add_column("window")
    for level in LEVELS:
        table.add_column(str(level), justify="right")
    table.add_column("total", justify="right")
    for window in ratings.get("windows") or []:
        levels = window.get("levels") or {}
        table.add_row(
            rich_escape(str(window.get("window") or "-")),
            *(str(levels.get(str(level), 0)) for level in LEVELS),
            str(window.get("total", 0)),
        )
    console.print(table)


__all__ = [
    "RatingsToday",
    "WindowRatings",
    "human_duration",
    "print_status_extras",
    "ratings_today",
    "render_page",
    "status_page_routes",
]
