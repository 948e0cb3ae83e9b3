"""The hall's parts of the status page in headless Chromium, at desktop and phone widths: each open
bad review with its next step, countdown and buttons (§11), and satisfaction by window and staff (§14).

Screenshots are kept in artifacts/ (hall-page-desktop.png, hall-page-phone.png).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import aiohttp
import pytest

from hub.ops.broker import MosquittoBroker
from tests.ops.test_status_page import ARTIFACTS, CHROMIUM, chromium, hall, script_errors, wait_js

TOKEN = "hall-staff-control-token-88"
STEPS = "document.querySelectorAll('#followups [data-step]')"


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium is not installed (apt-get install chromium)"
)
@pytest.mark.parametrize(
    ("name", "width", "height", "mobile"), [("desktop", 1280, 900, False), ("phone", 390, 844, True)]
)
async def test_follow_up_from_the_page(
    broker: MosquittoBroker, tmp_path: Path, name: str, width: int, height: int, mobile: bool
) -> None:
    async with (
        hall(broker, tmp_path, control_token=TOKEN) as (hub, base, _pad),
        chromium(tmp_path / "profile") as tools,
    ):
        await tools.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=mobile,
        )
        await tools.call("Page.navigate", url=base + "/")
        await wait_js(
            tools, "document.querySelectorAll('#followups [data-next=\"callback\"]').length === 2", 15
        )
        first = await tools.evaluate("document.querySelector('#followups [data-followup]').dataset.followup")
        assert "due in" in await tools.evaluate("document.querySelector('#followups .due').innerText")
        assert await tools.evaluate("document.querySelector('#satisfaction [data-window=\"07\"]') !== null")
        assert await tools.evaluate(
            "document.querySelector('#satisfaction [data-staff=\"\"]') !== null"  # pads credit no staff of their own
        )
        assert await tools.evaluate("document.documentElement.scrollWidth") <= width, "no sideways scrolling"

        # The browser's prompts, answered as a member of staff would: the token, then their name.
        await tools.evaluate(
            "window.asked = []; window.prompt = m => { window.asked.push(m);"
            f" return m.includes('token') ? '{TOKEN}' : '王主任'; }}"
        )
        await tools.evaluate(
            f'document.querySelector(\'[data-alert="{first}"][data-step="callback"][data-value="reached"]\').click()'
        )
        await wait_js(
            tools, f"document.querySelector('[data-followup=\"{first}\"]')?.dataset.next === 'rectify'", 10
        )
        await tools.evaluate(
            f'document.querySelector(\'[data-alert="{first}"][data-step="rectify"][data-value="true"]\').click()'
        )
        await wait_js(tools, f"document.querySelector('[data-followup=\"{first}\"]') === null", 10)
        asked = await tools.evaluate("window.asked")
        assert len(asked) == 2, f"the token and the name, each asked once per tab: {asked}"
        state = await hub.followups.state(first)
        assert state is not None
        assert state["step"] == "closed"
        assert state["callback"]["by"] == "王主任"
        assert state["rectify"]["substantiated"] is True
        assert await tools.evaluate(STEPS + ".length") == 2, (
            "the other bad review still waits for its callback"
        )
        unexpected = [e for e in script_errors(tools) if "status of 401" not in json.dumps(e)]
        assert unexpected == []

        shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"hall-page-{name}.png").write_bytes(base64.b64decode(shot["data"]))


async def test_the_page_shows_who_serves_at_each_window(broker: MosquittoBroker, tmp_path: Path) -> None:
    async with (
        hall(broker, tmp_path, control_token=TOKEN) as (_hub, base, _pad),
        aiohttp.ClientSession(base) as http,
    ):
        row = re.compile(r'<tr data-window-state="07" data-state="(\w+)">(.*?)</tr>')

        async def window_07() -> tuple[str, str]:
            async with http.get("/") as response:
                found = row.search(await response.text())
            assert found is not None
            return found.group(1), found.group(2)

        assert (await window_07())[0] == "closed"
        sign_in = {"request_id": "r1", "event": "sign_in", "staff_id": "S-0007", "staff_name": "张三"}
        async with http.post(
            "/v1/windows/07/staff", json=sign_in, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 200
        state, cells = await window_07()
        assert state == "open"
        assert "张三" in cells
