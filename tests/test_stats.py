"""Satisfaction figures (CONTRACTS §14): exact tallies, pruning, `/v1/stats`, `hallhub stats`, `/board`.

The tallies are written in the outbox's transaction with each rating and follow-up step, so the
figures are checked against a known set of ratings stored through the real write path, then after
the records themselves are pruned. The board is rendered in headless Chromium at 1920×1080.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from typer.testing import CliRunner

from contract.http import CallbackRequest, RectifyRequest
from contract.records import format_utc
from hub.cli import app
from hub.config import HubConfig, parse_config
from hub.hall.deadlines import Deadlines
from hub.hall.followup import FollowupBook, hall_books
from hub.hall.stats import SatisfactionStats, periods
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.ops.broker import MosquittoBroker
from hub.store.outbox import Outbox
from tests.ops.test_status_page import ARTIFACTS, CHROMIUM, chromium, script_errors, wait_js
from tests.support.hub import NODE_ID, node_raw, running_hub, write_toml

ZONE = "Asia/Shanghai"
DAY1 = date(2026, 12, 3)
DAY2 = date(2026, 12, 4)
DEVICES = [
    {"id": "pad-07", "kind": "pad", "transport": "mqtt", "window": "07"},
    {"id": "pad-08", "kind": "pad", "transport": "mqtt", "window": "08"},
]


def at(day: date, hour: int) -> datetime:
    """A local time on `day` (the node's zone), as UTC."""
    rules = Deadlines.from_config(ZONE, 60, 3, ())
    return datetime(day.year, day.month, day.day, hour, tzinfo=rules.timezone).astimezone(UTC)


def config_for(data_dir: Path, broker_port: int = 1883, **sections: Any) -> HubConfig:
    return parse_config(node_raw(data_dir, broker_port, DEVICES, national={"timezone": ZONE}, **sections))


# (day, hour, window, staff, level, flags): the known set of ratings.
RATINGS = [
    (DAY1, 9, "07", "S1", 5, []),
    (DAY1, 10, "07", "S1", 4, []),
    (DAY1, 11, "07", "S2", 1, []),
    (DAY1, 12, "08", "S3", 3, []),
    (DAY1, 13, "08", "S3", 2, ["suspect"]),  # excluded
    (DAY2, 1, "07", "S1", 5, []),  # 01:00 local is still DAY2 although it is DAY1 in UTC
    (DAY2, 9, "08", "S3", 1, []),
    (DAY2, 10, "08", "S3", 5, ["repeat"]),  # excluded
    (DAY2, 11, "08", "S4", 4, []),
]


@pytest.fixture
async def filled(tmp_path: Path) -> AsyncIterator[tuple[Outbox, FollowupBook, HubConfig]]:
    """An outbox with the known ratings and the follow-up of both bad reviews stored through it."""
    config = config_for(tmp_path)
    rules = Deadlines.from_config(ZONE, 60, 3, ())
    outbox = Outbox(tmp_path / "outbox.db", store_hooks=[hall_books(rules).on_store])
    await outbox.open()
    intake = Intake(config, outbox, HubMetrics())
    pads = {d.window: d for d in config.device}
    alerts: list[tuple[str, datetime]] = []
    for n, (day, hour, window, staff, level, flags) in enumerate(RATINGS):
        records = intake.evaluation(
            pads[window],
            level=level,
            reasons=[],
            case_no=f"C{n}",
            staff_id=staff,
            flags=flags,
            item_code="370102-001" if n % 2 else "370102-002",
        )
        for record in records:
            record.created_at = format_utc(at(day, hour))
        await outbox.store(records)
        alerts += [(r.id, at(day, hour)) for r in records if r.kind == "alert"]
    clock_time = [datetime.now(UTC)]
    book = FollowupBook(outbox, rules, node_id=NODE_ID, hall_code="370102", clock=lambda: clock_time[0])
    (first, first_at), (second, second_at) = alerts
    clock_time[0] = first_at + timedelta(minutes=30)  # on time
    await book.callback(first, CallbackRequest(by="李", outcome="reached"))
    clock_time[0] = first_at + timedelta(days=1)  # rectified on time (3 working days)
    await book.rectify(first, RectifyRequest(by="李", substantiated=True))
    clock_time[0] = second_at + timedelta(hours=2)  # late
    await book.callback(second, CallbackRequest(by="王", outcome="unreachable"))
    try:
        yield outbox, book, config
    finally:
        await outbox.close()


def levels(*counts: int) -> dict[str, int]:
    return {str(level): count for level, count in enumerate(counts, start=1)}


async def test_exact_figures_by_window_and_day_with_exclusions(
    filled: tuple[Outbox, FollowupBook, HubConfig],
) -> None:
    outbox, _book, config = filled
    stats = SatisfactionStats(outbox, ZONE, config.evaluation.bad_level)
    report = await stats.report(DAY1, DAY2, "window")
    rows = {row["key"]: row for row in report["rows"]}
    assert rows["07"] == {
        "key": "07",
        "total": 4,
        "levels": levels(1, 0, 0, 1, 2),
        "good_rate": 0.75,
        "bad": 1,
        "callbacks": 1,
        "callbacks_on_time": 1,
        "rectified": 1,
        "rectified_on_time": 1,
        "excluded": 0,
    }
    assert rows["08"] == {
        "key": "08",
        "total": 3,
        "levels": levels(1, 0, 1, 1, 0),
        "good_rate": 0.6667,
        "bad": 1,
        "callbacks": 1,
        "callbacks_on_time": 0,
        "rectified": 0,
        "rectified_on_time": 0,
        "excluded": 2,
    }
    assert report["total"]["total"] == 7
    assert report["total"]["good_rate"] == round(5 / 7, 4)
    assert report["total"]["excluded"] == 2

    by_day = {row["key"]: row for row in (await stats.report(DAY1, DAY2, "day"))["rows"]}
    assert by_day[DAY1.isoformat()]["total"] == 4
    assert by_day[DAY2.isoformat()]["total"] == 3, "01:00 local counts on the local day"
    by_staff = {row["key"]: row["total"] for row in (await stats.report(DAY1, DAY2, "staff"))["rows"]}
    assert by_staff == {"S1": 3, "S2": 1, "S3": 2, "S4": 1}
    one_day = await stats.report(DAY2, DAY2, "window")
    assert {row["key"]: row["total"] for row in one_day["rows"]} == {"07": 1, "08": 2}
    empty = await stats.report(date(2026, 1, 1), date(2026, 1, 2), "window")
    assert empty["rows"] == []
    assert empty["total"]["good_rate"] is None


async def test_figures_outlive_the_records(filled: tuple[Outbox, FollowupBook, HubConfig]) -> None:
    outbox, _book, config = filled
    stats = SatisfactionStats(outbox, ZONE, config.evaluation.bad_level)
    before = await stats.report(DAY1, DAY2, "window")
    await outbox.ack_upto(outbox.last_seq, via="pull")
    records, _dedup = await outbox.prune(-1.0, 0)  # everything delivered before a second from now
    assert records == len(RATINGS) + 2 + 3, "every rating, both bad-review alerts and the three steps"
    assert await stats.report(DAY1, DAY2, "window") == before


def test_periods_start_on_monday_the_first_and_the_quarter() -> None:
    named = {p.name: (p.first, p.last) for p in periods(date(2026, 11, 19))}
    assert named == {
        "today": (date(2026, 11, 19), date(2026, 11, 19)),
        "week": (date(2026, 11, 16), date(2026, 11, 19)),
        "month": (date(2026, 11, 1), date(2026, 11, 19)),
        "quarter": (date(2026, 10, 1), date(2026, 11, 19)),
    }


# -- over HTTP, the CLI and the board ----------------------------------------------------------------


async def get(http: aiohttp.ClientSession, path: str, **params: str) -> tuple[int, Any]:
    async with http.get(path, params=params) as response:
        return response.status, await response.json()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"to": "2026-12-04"}, "from: required, a date YYYY-MM-DD"),
        ({"from": "2026-12-04", "to": "2026-12-4"}, "to: expected a date YYYY-MM-DD, got '2026-12-4'"),
        ({"from": "2026-12-05", "to": "2026-12-04"}, "to: 2026-12-04 is before from 2026-12-05"),
        ({"from": "2025-01-01", "to": "2026-12-04"}, "to: at most 400 days from `from`"),
        (
            {"from": "2026-12-04", "to": "2026-12-04", "by": "citizen"},
            "by: expected one of window, staff, item, channel, day, got 'citizen'",
        ),
        (
            {"from": "2026-12-04", "to": "2026-12-04", "sort": "x"},
            "unknown query parameter: sort (use from, to, by)",
        ),
    ],
)
async def test_bad_stats_requests_name_the_parameter(
    tmp_path: Path, broker: MosquittoBroker, params: dict[str, str], message: str
) -> None:
    async with running_hub(config_for(tmp_path / "data", broker.port)) as hub:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http:
            assert await get(http, "/v1/stats", **params) == (400, {"error": message})


async def test_stats_over_http_and_the_cli_agree(tmp_path: Path, broker: MosquittoBroker) -> None:
    raw = node_raw(tmp_path / "data", broker.port, DEVICES, national={"timezone": ZONE})
    config = parse_config(raw)
    async with running_hub(config) as hub:
        intake = Intake(config, hub.outbox, HubMetrics())
        for level in (5, 4, 1):
            await hub.outbox.store(
                intake.evaluation(config.device[0], level=level, reasons=[], staff_id="S1")
            )
        today = SatisfactionStats(hub.outbox, ZONE, 2).today().isoformat()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http:
            status, report = await get(http, "/v1/stats", **{"from": today, "to": today, "by": "staff"})
        assert status == 200
        assert report["rows"] == [
            {
                "key": "S1",
                "total": 3,
                "levels": levels(1, 0, 0, 1, 1),
                "good_rate": 0.6667,
                "bad": 1,
                "callbacks": 0,
                "callbacks_on_time": 0,
                "rectified": 0,
                "rectified_on_time": 0,
                "excluded": 0,
            }
        ]
    path = write_toml(tmp_path / "node.toml", raw)
    runner = CliRunner()
    # The command runs its own event loop, as it does from a shell: in a thread beside this one.
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        ["stats", "--from", today, "--to", today, "--by", "staff", "--csv", "-c", str(path)],
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["key"], r["total"], r["good_rate"], r["bad"]) for r in rows] == [
        ("S1", "3", "0.6667", "1"),
        ("(total)", "3", "0.6667", "1"),
    ]
    table = await asyncio.to_thread(
        runner.invoke, app, ["stats", "--from", today, "--to", today, "-c", str(path)]
    )
    assert table.exit_code == 0, table.output
    assert "07" in table.output
    bad = await asyncio.to_thread(
        runner.invoke, app, ["stats", "--from", today, "--to", "yesterday", "-c", str(path)]
    )
    assert bad.exit_code == 2
    assert "--to: expected a date YYYY-MM-DD, got 'yesterday'" in bad.output


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install chromium)"
)
async def test_the_board_on_a_hall_screen(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = config_for(
        tmp_path / "data", broker.port, api={"listen": "127.0.0.1:0", "control_token": "c" * 24}
    )
    async with running_hub(config) as hub, chromium(tmp_path / "profile") as tools:
        intake = Intake(config, hub.outbox, HubMetrics())
        for n, (device, level) in enumerate(
            ((config.device[0], 5), (config.device[0], 2), (config.device[1], 4))
        ):
            await hub.outbox.store(
                intake.evaluation(
                    device, level=level, reasons=[], staff_id="S-SECRET", case_no=f"CASE-SECRET-{n}"
                )
            )
        base = f"http://127.0.0.1:{hub.api_port}"
        async with aiohttp.ClientSession() as http, http.get(f"{base}/board") as response:
            assert response.status == 200, "open without a token"
            page = await response.text()
        assert "S-SECRET" not in page
        assert "CASE-SECRET" not in page
        assert '<meta http-equiv="refresh" content="60">' in page
        await tools.call(
            "Emulation.setDeviceMetricsOverride", width=1920, height=1080, deviceScaleFactor=1, mobile=False
        )
        await tools.call("Page.navigate", url=f"{base}/board")
        await wait_js(tools, "document.querySelectorAll('tbody tr').length === 2", 15)
        cells = json.loads(
            await tools.evaluate(
                "JSON.stringify([...document.querySelectorAll('tbody tr')].map(r => r.innerText.split('\\t')))"
            )
        )
        assert cells[0][0].strip() == "07 号窗口"
        assert cells[0][1:3] == ["2", "50.0%"]
        assert cells[1][1:3] == ["1", "100.0%"]
        assert await tools.evaluate("document.documentElement.scrollWidth") <= 1920
        assert await tools.evaluate("document.documentElement.scrollHeight") <= 1080
        assert (
            await tools.evaluate("parseFloat(getComputedStyle(document.querySelector('td')).fontSize)") >= 36
        )
        assert script_errors(tools) == []
        shot = await tools.call("Page.captureScreenshot", format="png")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "board-1920x1080.png").write_bytes(base64.b64decode(shot["data"]))


async def test_tallies_are_kept_400_days_then_forgotten(
    filled: tuple[Outbox, FollowupBook, HubConfig],
) -> None:
    outbox, book, config = filled
    stats = SatisfactionStats(outbox, ZONE, config.evaluation.bad_level)
    before = await stats.report(DAY1, DAY2, "window")
    book.clock = lambda: at(DAY1 + timedelta(days=400), 12)
    assert await book.prune() == 0, "DAY1 is exactly 400 days before: still kept"
    assert await stats.report(DAY1, DAY2, "window") == before
    book.clock = lambda: at(DAY1 + timedelta(days=401), 12)
    assert await book.prune() > 0
    after = await stats.report(DAY1, DAY2, "window")
    assert {row["key"]: row["total"] for row in after["rows"]} == {"07": 1, "08": 2}, (
        "DAY1 forgotten, DAY2 kept"
    )
