"""The status page at `GET /`: its content over HTTP, and live in headless Chromium.

Chromium is driven over its DevTools protocol with aiohttp's websocket client: the page must show
a device going offline within its own refresh period (5 s), with no script error (the page's
Content-Security-Policy allows only its own script, by hash). A phone-sized screenshot is saved to
artifacts/status-page-phone.png.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from contract.records import Kind, Record
from hub.api.status_page import RatingsToday, human_duration, ratings_today, render_page
from hub.app import Hub
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from hub.store import Outbox
from tests.support.hub import NODE_ID, PULL_TOKEN, node_config, running_hub

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
HOSTILE = '<img src=x onerror="document.title=1">'
DEVICES = [
    {"id": "pad-07", "kind": "pad", "transport": "mqtt", "window": "07"},
    {"id": "pad-08", "kind": "pad", "transport": "mqtt", "window": "08"},
    {"id": "pt-01", "kind": "terminal", "transport": "mqtt"},
]


@contextlib.asynccontextmanager
async def hall(
    broker: MosquittoBroker, tmp_path: Path, control_token: str = ""
) -> AsyncIterator[tuple[Hub, str, SimulatedMqttDevice]]:
    """A hub with two rating pads and a print terminal; pad-07 online, a day's ratings, two alerts."""
    api = {"listen": "127.0.0.1:0", "pull_token": PULL_TOKEN, "control_token": control_token}
    config = node_config(tmp_path / "data", broker.port, DEVICES, alerts={"offline_after_s": 0}, api=api)
    async with (
        running_hub(config) as hub,
        SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-07", kind="pad") as pad,
        SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-08", kind="pad") as pad8,
        SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pt-01") as printer,
    ):
        for level in (5, 5, 4, 3):
            await pad.rate(level)
        await pad.rate(2, case_no=HOSTILE, staff_id="S-0042")
        for level in (5, 1):
            await pad8.rate(level, case_no="B-2024-0001" if level == 1 else None)
        await printer.publish_raw("health", json.dumps({"paper": "out"}))
        async with asyncio.timeout(5):
            while not (await hub.node_status.status())["device_alerts"]:
                await asyncio.sleep(0.02)
        yield hub, f"http://127.0.0.1:{hub.api_port}", pad


async def test_page_and_ratings_over_http(broker: MosquittoBroker, tmp_path: Path) -> None:
    async with hall(broker, tmp_path) as (_hub, base, _pad), aiohttp.ClientSession() as http:
        async with http.get(base + "/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
            assert response.headers["Cache-Control"] == "no-store"
            page = await response.text()
        async with http.get(base + "/v1/ratings/today") as response:
            today = await response.json()
        async with http.get(base + "/?refresh=2") as response:
            assert 'data-refresh="2"' in await response.text()

    assert HOSTILE not in page  # every text is escaped
    assert "&lt;img src=x onerror=&quot;document.title=1&quot;&gt;" in page
    assert "<h2>Open alerts (3)</h2>" in page
    assert 'data-fault="pt-01:paper_out"' in page
    assert "out of paper" in page
    assert "B-2024-0001" in page
    assert 'data-device="pad-07" data-online="true"' in page
    assert 'data-device="pad-08" data-online="true"' in page
    assert "Devices (3 of 3 online)" in page
    assert '<tr data-window="07"><td>07</td><td class="num">5</td>' in page
    assert today["total"] == 7
    assert today["timezone"] == "Asia/Shanghai"
    assert [(w["window"], w["levels"], w["total"]) for w in today["windows"]] == [
        ("07", {"5": 2, "4": 1, "3": 1, "2": 1, "1": 0}, 5),
        ("08", {"5": 1, "4": 0, "3": 0, "2": 0, "1": 1}, 2),
    ]


async def test_hallhub_status_shows_alerts_and_ratings(broker: MosquittoBroker, tmp_path: Path) -> None:
    async with hall(broker, tmp_path) as (_hub, base, _pad):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hub",
            "status",
            "--url",
            base,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "3 open alerts" in text
    assert "out of paper" in text
    assert "bad review" in text
    assert "ratings today" in text
    assert "│ 07     │ 2 │ 1 │ 1 │ 1 │ 0 │     5 │" in text


def test_render_page_hides_url_credentials_and_says_how_old_the_last_upload_is() -> None:
    now = datetime(2026, 11, 23, 2, 0, 0, tzinfo=UTC)
    status = {
        "node": {
            "id": "n1",
            "hall_code": "370102",
            "version": "0.1.0",
            "started_at": "2026-11-23T01:00:00.000Z",
        },
        "broker": {"host": "127.0.0.1", "port": 1883, "connected": False},
        "sync": {"push": True, "pull": False, "last_sync": "2026-11-23T01:55:00.000Z"},
        "devices": [],
        "outbox": {},
    }
    ratings = RatingsToday("2026-11-23", "Asia/Shanghai", "2026-11-22T16:00:00.000Z", [])
    page = render_page(
        status,
        ["outbox writer not answering"],
        [],
        ratings,
        now=now,
        central_url="https://n1:pw@central.example/",
    )
    assert "pw@" not in page
    assert "on, to https://central.example/" in page
    assert "5 min ago (11-23 09:55:00)" in page, "in the hall's time zone, like every other time"
    assert "times in Asia/Shanghai" in page
    shown = re.sub(r"<[^>]+>", " ", page)
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", shown) is None, "no UTC timestamp on the page"
    assert '<span class="badge bad">not connected</span>' in page
    assert "<h2>Problems (1)</h2><ul><li>outbox writer not answering</li></ul>" in page
    assert "no ratings yet today" in page
    assert "no devices configured" in page


async def test_ratings_today_are_counted_by_the_outbox_and_empty_when_it_is_closed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    await outbox.open()
    try:
        records = [Record(kind=Kind.EVALUATION, data={"level": level, "window": "07"}) for level in (5, 5, 2)]
        yesterday = Record(kind=Kind.EVALUATION, data={"level": 1, "window": "07"})
        yesterday.created_at = "2026-11-22T15:59:59.999Z"
        for record in records:
            record.created_at = "2026-11-22T16:00:00.000Z"
        await outbox.store([*records, yesterday])
        now = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
        ratings = await ratings_today(outbox, "Asia/Shanghai", now)
        assert (ratings.date, ratings.since, ratings.total) == ("2026-11-23", "2026-11-22T16:00:00.000Z", 3)
        assert [(w.window, w.levels) for w in ratings.windows] == [("07", {5: 2, 2: 1})]
    finally:
        await outbox.close()
    assert (await ratings_today(outbox, "Asia/Shanghai")).windows == []


def test_human_durations() -> None:
    assert [human_duration(s) for s in (0, 42, 119.6, 300, 3599.4, 3600, 3900, 2 * 86400 + 3600)] == [
        "0 s",
        "42 s",
        "2 min",
        "5 min",
        "1 h",
        "1 h",
        "1 h 5 min",
        "2 d 1 h",
    ]


# -- in a browser --------------------------------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._waiting.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (raise on a protocol error)."""
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 20)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]  # type: ignore[no-any-return]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def close(self) -> None:
        """Close the socket and stop reading."""
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on a loopback DevTools port, one blank page, closed on exit."""
    assert CHROMIUM is not None
    profile.mkdir()
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=390,844",
            "about:blank",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        active = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not active.exists() or not active.read_text().strip():
                assert process.poll() is None, (profile.parent / "chromium.log").read_text()
                await asyncio.sleep(0.05)
        port = int(active.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                        pages = [t for t in await response.json() if t["type"] == "page"]
                    if pages:
                        break
                    await asyncio.sleep(0.05)
            ws = await http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
            tools = DevTools(ws)
            try:
                for domain in ("Page", "Runtime", "Log"):
                    await tools.call(f"{domain}.enable")
                yield tools
            finally:
                await tools.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def script_errors(tools: DevTools) -> list[dict[str, Any]]:
    """Exceptions and error-level console/log entries (a CSP block shows up here)."""
    return [
        e
        for e in tools.events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
    ]


async def wait_js(tools: DevTools, expression: str, timeout_s: float) -> float:
    """Poll until the expression is true in the page; return how long it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not await tools.evaluate(expression):
            await asyncio.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install chromium)"
)
async def test_page_in_chromium_shows_a_device_going_offline(broker: MosquittoBroker, tmp_path: Path) -> None:
    online = "document.querySelector('[data-device=\"pad-07\"]')?.dataset.online"
    async with hall(broker, tmp_path) as (_hub, base, pad), chromium(tmp_path / "profile") as tools:
        await tools.call(
            "Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=2, mobile=True
        )
        await tools.call("Page.navigate", url=base + "/")
        await wait_js(tools, f"{online} === 'true'", 15)
        assert await tools.evaluate("document.body.dataset.refresh") == "5"
        assert HOSTILE in await tools.evaluate("document.getElementById('alerts').innerText")
        assert (
            await tools.evaluate("document.title") == f"hallhub · {NODE_ID}"
        )  # the hostile text ran nothing
        assert await tools.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling

        await pad.publish_raw("state", json.dumps({"online": False}), retain=True)
        went_offline = time.monotonic()
        await wait_js(tools, f"{online} === 'false'", 10)
        seen_after = time.monotonic() - went_offline
        assert seen_after <= 5 + 2, f"the page showed pad-07 offline after {seen_after:.1f} s"
        assert await tools.evaluate("document.body.classList.contains('stale')") is False
        assert script_errors(tools) == []

        # Hall staff acknowledge a bad review from the page: it leaves the open alerts.
        assert await tools.evaluate("document.querySelectorAll('[data-ack]').length") == 2
        await tools.evaluate("document.querySelector('[data-ack]').click()")
        await wait_js(tools, "document.querySelectorAll('[data-ack]').length === 1", 5)
        assert await tools.evaluate("document.querySelector('#alerts h2').innerText") == "Open alerts (2)"
        assert script_errors(tools) == []

        await tools.evaluate("window.scrollTo(0, 0)")
        shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / "status-page-phone.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.stat().st_size > 10_000


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install chromium)"
)
async def test_page_says_when_the_hub_stops_answering(broker: MosquittoBroker, tmp_path: Path) -> None:
    config = node_config(tmp_path / "data", broker.port, DEVICES[:1], alerts={"offline_after_s": 0})
    async with chromium(tmp_path / "profile") as tools:
        async with running_hub(config) as hub:
            await tools.call("Page.navigate", url=f"http://127.0.0.1:{hub.api_port}/?refresh=1")
            await wait_js(tools, "document.getElementById('devices') !== null", 15)
        await wait_js(tools, "document.body.classList.contains('stale')", 5)
        assert "not answering" in await tools.evaluate("document.querySelector('.stale-note').innerText")


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install chromium)"
)
async def test_page_asks_for_the_control_token_once_per_tab(broker: MosquittoBroker, tmp_path: Path) -> None:
    token = "hall-staff-control-token-77"
    async with (
        hall(broker, tmp_path, control_token=token) as (_hub, base, _pad),
        chromium(tmp_path / "profile") as tools,
    ):
        await tools.call("Page.navigate", url=base + "/")
        await wait_js(tools, "document.querySelectorAll('[data-ack]').length === 2", 15)
        # The browser's prompt, answered as a member of staff would type it.
        await tools.evaluate(
            f"window.asked = 0; window.prompt = () => {{ window.asked += 1; return '{token}'; }}"
        )
        await tools.evaluate("document.querySelector('[data-ack]').click()")
        await wait_js(tools, "document.querySelectorAll('[data-ack]').length === 1", 5)
        await tools.evaluate("document.querySelector('[data-ack]').click()")
        await wait_js(tools, "document.querySelectorAll('[data-ack]').length === 0", 5)
        assert await tools.evaluate("window.asked") == 1, "asked once, then kept for the tab"
        assert await tools.evaluate("sessionStorage.getItem('hallhub-control-token')") == token
        assert await tools.evaluate("localStorage.length") == 0, "never kept beyond the tab"
        unexpected = [e for e in script_errors(tools) if "status of 401" not in json.dumps(e)]
        assert unexpected == []
