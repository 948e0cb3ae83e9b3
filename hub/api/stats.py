"""`GET /v1/stats` (CONTRACTS §14) and `GET /board`, the hall's public notice board (评价结果公示).

The board is for a TV or LED screen across the hall at 1920×1080: window-level figures only (no
staff, case, comment or citizen data), large type, refreshing itself with a meta refresh (no
script), open on any listen address (§9).
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from hub.api.routes import json_error
from hub.hall.stats import SatisfactionStats, StatsRequestError, parse_range, periods

BOARD_REFRESH_S: Final = 60
PERIOD_LABELS: Final = {"today": "今日", "month": "本月", "quarter": "本季度"}
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _rate(figures: dict[str, Any]) -> str:
    rate = figures.get("good_rate")
    return "—" if rate is None else f"{rate * 100:.1f}%"


def render_board(hall: str, stamp: str, reports: dict[str, dict[str, Any]]) -> str:
    """The board's HTML: one row per window, ratings and satisfaction for today, month, quarter."""
    windows: dict[str, dict[str, dict[str, Any]]] = {}
    for period, report in reports.items():
        for row in report["rows"]:
            if row["key"] is not None:
                windows.setdefault(row["key"], {})[period] = row
    head = "".join(
        f'<th colspan="2">{label}</th>' for period, label in PERIOD_LABELS.items() if period in reports
    )
    sub = "".join("<th>评价数</th><th>满意率</th>" for period in PERIOD_LABELS if period in reports)
    body = []
    for window in sorted(windows):
        cells = []
        for period in PERIOD_LABELS:
            if period not in reports:
                continue
            figures = windows[window].get(period, {"total": 0, "good_rate": None})
            cells.append(f'<td>{figures["total"]}</td><td class="rate">{_rate(figures)}</td>')
        body.append(f"<tr><th>{html.escape(window)} 号窗口</th>{''.join(cells)}</tr>")
    totals = "".join(
        f'<td>{reports[p]["total"]["total"]}</td><td class="rate">{_rate(reports[p]["total"])}</td>'
        for p in PERIOD_LABELS
        if p in reports
    )
    empty = "" if body else '<tr><td colspan="7" class="empty">暂无评价</td></tr>'
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{BOARD_REFRESH_S}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>评价结果公示</title>
<style>
html,body{{margin:0;background:#0b2545;color:#fff}}
body{{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif}}
main{{padding:2.5vh 3vw}}
h1{{font-size:6vh;margin:0 0 1vh;text-align:center;letter-spacing:.2em}}
p.sub{{font-size:2.6vh;margin:0 0 2vh;text-align:center;color:#cfe0ff}}
table{{width:100%;border-collapse:collapse;font-size:4vh}}
th,td{{padding:1vh 1vw;text-align:center;border-bottom:2px solid #24497a}}
thead th{{background:#13315c;font-size:3.4vh}}
td.rate{{color:#ffd166;font-weight:bold}}
tfoot th,tfoot td{{border-top:4px solid #ffd166}}
td.empty{{font-size:4vh;color:#cfe0ff}}
</style></head><body><main>
<h1>评价结果公示</h1>
<p class="sub">{html.escape(hall)} · 更新于 {html.escape(stamp)} · 满意率 = 满意及基本满意评价 ÷ 评价总数</p>
<table><thead><tr><th rowspan="2">窗口</th>{head}</tr><tr>{sub}</tr></thead>
<tbody>{"".join(body)}{empty}</tbody>
<tfoot><tr><th>全厅</th>{totals}</tr></tfoot></table>
</main></body></html>
"""


def stats_routes(stats: SatisfactionStats, *, hall_name: str) -> list[web.RouteDef]:
    """`GET /v1/stats` (a view route) and `GET /board` (open)."""

    async def report(request: web.Request) -> web.Response:
        query = request.query
        unknown = sorted(set(query) - {"from", "to", "by"})
        if unknown:
            return json_error(400, f"unknown query parameter: {', '.join(unknown)} (use from, to, by)")
        try:
            first, last, by = parse_range(query.get("from"), query.get("to"), query.get("by"))
        except StatsRequestError as exc:
            return json_error(400, str(exc))
        return web.json_response(await stats.report(first, last, by))

    async def board(_request: web.Request) -> web.Response:
        today = stats.today()
        reports = {
            period.name: await stats.report(period.first, period.last, "window")
            for period in periods(today)
            if period.name in PERIOD_LABELS
        }
        stamp = datetime.now(stats.timezone).strftime("%Y-%m-%d %H:%M")
        return web.Response(
            text=render_board(hall_name, stamp, reports),
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    return [web.get("/v1/stats", report), web.get("/board", board)]


__all__ = ["render_board", "stats_routes"]
