"""The hall's parts of the status page: open bad reviews with their next step and countdown (§11),
and satisfaction by window and by staff for today, this week, this month and this quarter (§14).

Rendered on the server like the rest of the page (which refreshes itself, so the countdowns move);
the step buttons are handled by the page's one script, which asks for the control token (§9).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from contract.records import parse_rfc3339

STEP_NAMES: Final = {"callback": "回访 callback", "rectify": "整改 rectify"}
PERIOD_NAMES: Final = {
    "today": "today",
    "week": "this week",
    "month": "this month",
    "quarter": "this quarter",
}


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def countdown(due_at: str, now: datetime) -> str:
    """`due in 42 min` or `overdue by 1 h 5 min`."""
    seconds = (parse_rfc3339(due_at) - now).total_seconds()
    minutes = int(abs(seconds) // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if not days:
        parts.append(f"{mins} min")
    text = " ".join(parts)
    return f"due in {text}" if seconds >= 0 else f"overdue by {text}"


def _buttons(alert_id: str, step: str) -> str:
    choices = (
        (("reached", "reached 已联系"), ("unreachable", "unreachable 未联系上"))
        if step == "callback"
        else (("true", "put right 已整改"), ("false", "not substantiated 不属实"))
    )
    return "".join(
        f'<button type="button" data-step="{step}" data-alert="{_e(alert_id)}" data-value="{value}">'
        f"{_e(label)}</button>"
        for value, label in choices
    )


def followups_section(followups: Sequence[Mapping[str, Any]], now: datetime, zone: ZoneInfo) -> str:
    """Each open bad review: where, its next step, the countdown, and the buttons for that step."""
    items = []
    for item in followups:
        step = str(item.get("step"))
        due_at = item.get("due_at")
        if step not in STEP_NAMES or not isinstance(due_at, str):
            continue
        late = parse_rfc3339(due_at) < now
        where = [f"window {_e(item.get('window') or '-')}"]
        if item.get("case_no"):
            where.append(f"case {_e(item['case_no'])}")
        if item.get("staff_id"):
            where.append(f"staff {_e(item['staff_id'])}")
        raised = parse_rfc3339(str(item.get("raised_at"))).astimezone(zone).strftime("%m-%d %H:%M")
        items.append(
            f'<li class="{"bad" if late else ""}" data-followup="{_e(item.get("alert_id"))}" '
            f'data-next="{step}"><b>{STEP_NAMES[step]}</b> · {" · ".join(where)} · bad review {raised} · '
            f'<span class="due">{_e(countdown(due_at, now))}</span> '
            f"{_buttons(str(item.get('alert_id')), step)}</li>"
        )
    body = f"<ul>{''.join(items)}</ul>" if items else '<p class="ok">every bad review is followed up</p>'
    return (
        f'<section id="followups"{" class=problems" if items else ""}>'
        f"<h2>Bad reviews to follow up ({len(items)})</h2>{body}</section>"
    )


STATE_NAMES: Final = {"open": "open 服务中", "paused": "paused 暂停服务", "closed": "closed 未上岗"}


def windows_section(windows: Sequence[Mapping[str, Any]], zone: ZoneInfo) -> str:
    """Who serves at each window (§12): open, paused or closed, the staff and since when."""
    rows = []
    for item in windows:
        state = str(item.get("state"))
        staff = item.get("staff_name") or item.get("staff_id")
        since = item.get("since")
        when = (
            parse_rfc3339(since).astimezone(zone).strftime("%m-%d %H:%M") if isinstance(since, str) else "-"
        )
        css = {"open": "ok", "paused": "warn"}.get(state, "mute")
        rows.append(
            f'<tr data-window-state="{_e(item.get("window"))}" data-state="{_e(state)}">'
            f'<td>{_e(item.get("window"))}</td><td class="{css}">{_e(STATE_NAMES.get(state, state))}</td>'
            f"<td>{_e(staff or '-')}</td><td>{_e(when)}</td></tr>"
        )
    if not rows:
        return ""
    head = "<tr><th>window</th><th>state</th><th>staff</th><th>since</th></tr>"
    table = f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'
    return f'<section id="windows"><h2>Windows 窗口</h2>{table}</section>'


def _rate(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _table(dimension: str, reports: Mapping[str, Mapping[str, Any]]) -> str:
    keys = sorted({row["key"] or "" for report in reports.values() for row in report["rows"]})
    head = "".join(f'<th class="num">{PERIOD_NAMES[name]}</th>' for name in reports)
    rows = []
    for key in keys:
        cells = []
        for report in reports.values():
            row = next((r for r in report["rows"] if (r["key"] or "") == key), None)
            if row is None or not row["total"]:
                cells.append('<td class="num mute">-</td>')
                continue
            rate = row["good_rate"]
            bad = row["bad"]
            on_time = _rate(row["callbacks_on_time"], bad)
            follow = (
                f"<br><small>callback {_rate(row['callbacks'], bad)} ({on_time} on time) · "
                f"rectified {_rate(row['rectified'], bad)}</small>"
                if bad
                else ""
            )
            cells.append(
                f'<td class="num">{rate * 100:.1f}% <small>of {row["total"]}</small>{follow}</td>'
                if rate is not None
                else '<td class="num mute">-</td>'
            )
        label = _e(key) if key else '<span class="mute">none</span>'
        rows.append(f'<tr data-{dimension}="{_e(key)}"><td>{label}</td>{"".join(cells)}</tr>')
    if not rows:
        return f'<p class="mute">no ratings by {dimension} yet</p>'
    return f'<div class="scroll"><table><tr><th>{dimension}</th>{head}</tr>{"".join(rows)}</table></div>'


def satisfaction_section(
    by_window: Mapping[str, Mapping[str, Any]], by_staff: Mapping[str, Mapping[str, Any]]
) -> str:
    """满意率 (ratings 3–5 of all) by window and by staff, with callback and rectification rates."""
    return (
        '<section id="satisfaction"><h2>Satisfaction 满意率</h2>'
        f"{_table('window', by_window)}{_table('staff', by_staff)}"
        '<p class="mute"><small>callback and rectified: share of bad reviews; suspect and repeat '
        "ratings are not counted</small></p></section>"
    )


__all__ = ["countdown", "followups_section", "satisfaction_section", "windows_section"]
