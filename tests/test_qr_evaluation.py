"""QR evaluation on the citizen's own phone (CONTRACTS §13), end to end.

A real hub and Mosquitto, a keypad on a real pty, MQTT pads, and a phone played by plain HTTP: it
GETs the page a rating link opens and POSTs the form as a browser without JavaScript does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
import pytest

from contract.mqtt import CmdPayload
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub.app import Hub
from hub.hall.links import TOKEN_BYTES, LinkState, RatingLinks
from hub.ops.broker import MosquittoBroker, free_port
from hub.simulate.mqtt_device import SimulatedMqttDevice
from hub.simulate.qr_art import qr_text
from tests.ops.test_status_page import ARTIFACTS, DevTools, chromium, script_errors, wait_js
from tests.support.clock import FakeClock
from tests.support.hub import NODE_ID, node_config, running_hub
from tests.support.mqtt import Observer, observe

ROOT = f"hall/v1/{NODE_ID}"
FORM = "application/x-www-form-urlencoded"
CASE: dict[str, Any] = {
    "case_no": "SD2026-0815",
    "item_code": "370100-001-01",
    "item_name": "居民身份证换领",
    "staff_id": "S007",
    "staff_name": "张三",
    "user_prop": 2,
}


def devices(pty: Path) -> list[dict[str, Any]]:
    """Window 07 has a keypad on the pty, 08 a rating pad, 09 nothing (phones only)."""
    return [
        {
            "id": "kp-07",
            "kind": "keypad",
            "transport": "serial",
            "port": str(pty),
            "address": 1,
            "window": "07",
        },
        {"id": "pad-08", "kind": "pad", "transport": "mqtt", "window": "08"},
    ]


@contextlib.asynccontextmanager
async def hall(
    tmp_path: Path, broker: MosquittoBroker, *, clock: FakeClock | None = None, **qr: Any
) -> AsyncIterator[tuple[Hub, SimulatedKeypad, SimulatedMqttDevice, Observer]]:
    """A hub with QR evaluation on (base_url: its own loopback address), the keypad and the pad online;
    its sessions and links run on `clock` if given."""
    keypad = SimulatedKeypad(1)
    pty = tmp_path / "ttyKP0"
    async with SimulatedLine(pty, [keypad]):
        port = free_port()
        section = {"enabled": True, "base_url": f"http://127.0.0.1:{port}", **qr}
        config = node_config(
            tmp_path / "data",
            broker.port,
            devices(pty),
            api={"listen": f"127.0.0.1:{port}"},
            qr_evaluation=section,
        )
        async with (
            running_hub(config, clock=clock) as hub,
            SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-08", kind="pad") as pad,
            observe(broker.port, f"{ROOT}/window/+/session") as seen,
        ):
            await until(lambda: all(hub.registry.get(d).online for d in ("kp-07", "pad-08")))  # type: ignore[union-attr]
            yield hub, keypad, pad, seen


async def until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def base(hub: Hub) -> str:
    return f"http://127.0.0.1:{hub.api_port}"


async def evaluate(hub: Hub, window: str, **fields: Any) -> dict[str, Any]:
    """A window PC's HTTP evaluate request; the answer."""
    body = {"request_id": uuid.uuid4().hex[:12], **fields}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base(hub)}/v1/windows/{window}/evaluate", json=body) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def phone_get(url: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as response:
        return response.status, await response.text(), response.headers


async def phone_post(
    url: str,
    data: Any,
    *,
    content_type: str = FORM,
    address: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """POST as a browser posts a form (or anything a hostile client sends), from `address` if given
    (another phone on the hall network: any 127.x address reaches the hub on loopback)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0)) if address else None
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(
            url, data=data, headers={"Content-Type": content_type, **(headers or {})}
        ) as response:
            return response.status, await response.text()


def rows(tmp_path: Path, kind: str = "evaluation") -> list[dict[str, Any]]:
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        found = conn.execute("SELECT body FROM records WHERE kind = ? ORDER BY seq", (kind,)).fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in found]


async def session_states(seen: Observer, window: str, number: int, count: int) -> list[dict[str, Any]]:
    topic = f"{ROOT}/window/{window}/session"
    async with asyncio.timeout(10):
        while True:
            mine = [m for m in seen.messages[topic] if m["session"] == number]
            if len(mine) >= count:
                return mine
            await asyncio.sleep(0.02)


def rejects(hub: Hub, reason: str) -> float:
    return hub.metrics.registry.get_sample_value("hallhub_rejects_total", {"reason": reason}) or 0.0


async def test_phone_rates_a_keypad_session_from_the_link(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hall(tmp_path, broker) as (hub, keypad, _pad, seen):
        answer = await evaluate(hub, "07", **CASE)
        assert answer["state"] == "prompted"
        url = answer["qr_url"]
        token = url.rsplit("/", 1)[1]
        assert url == f"{base(hub)}/r/{token}"
        prompted = (await session_states(seen, "07", answer["session"], 1))[0]
        assert prompted["qr_url"] == url, "the window PC gets the link on its session topic too"
        await until(lambda: keypad.active_prompt is not None)

        status, page, headers = await phone_get(url)
        assert status == 200
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp
        assert "script" not in csp
        assert "form-action 'self'" in csp
        assert headers["Cache-Control"] == "no-store"
        assert "<script" not in page
        assert "07号窗口 · 张三 · 居民身份证换领" in page
        for name in ("非常满意", "满意", "基本满意", "不满意", "非常不满意", "提交评价", "等候时间长"):
            assert name in page
        assert 'method="post"' in page
        assert 'maxlength="500"' in page

        form = [
            ("level", "2"),
            ("reasons", "R1"),
            ("reasons", "R2"),
            ("comment", "等了很久\r\n材料没有一次说清"),
        ]
        status, thanks = await phone_post(url, form)
        assert status == 200, thanks
        assert "感谢您的评价" in thanks
        assert "不满意" in thanks
        rated = (await session_states(seen, "07", answer["session"], 2))[1]
        assert (rated["state"], rated["level"]) == ("rated", 2)
        await until(lambda: answer["session"] in keypad.cancels)  # the keypad is told the session ended

        status, again = await phone_post(url, [("level", "5")])
        assert (status, "已评价" in again) == (409, True), "a second submission stores nothing"
        status, page, _headers = await phone_get(url)
        assert status == 409
        assert "已评价" in page
        assert rejects(hub, "qr_link_used") == 2

    [record] = rows(tmp_path)
    data = record["data"]
    assert record["id"] == rated["id"]
    assert (data["channel"], data["national"]["pf"], data["device_id"]) == ("qr", 3, "phone")
    assert (data["level"], data["reasons"], data["comment"]) == (
        2,
        ["R1", "R2"],
        "等了很久\n材料没有一次说清",
    )
    assert (data["case_no"], data["item_code"], data["item_name"]) == (
        CASE["case_no"],
        CASE["item_code"],
        CASE["item_name"],
    )
    assert (data["window"], data["staff_id"], data["session"], data["user_prop"]) == (
        "07",
        "S007",
        answer["session"],
        2,
    )
    assert data["citizen_ref"] is None
    assert data["citizen_masked"] is None
    [alert] = rows(tmp_path, "alert")
    assert alert["data"]["evaluation_id"] == record["id"], "a bad review from a phone raises its alert too"


async def test_phone_only_session_on_a_window_without_a_keypad(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker) as (hub, keypad, pad, seen):
        answer = await evaluate(hub, "09", channel="qr", case_no="NO-KEYPAD-1", staff_id="S009")
        assert answer["state"] == "prompted"
        assert answer["qr_url"].startswith(base(hub) + "/r/")
        prompted = (await session_states(seen, "09", answer["session"], 1))[0]
        assert prompted["qr_url"] == answer["qr_url"]
        status, page, _headers = await phone_get(answer["qr_url"])
        assert status == 200
        assert "09号窗口" in page
        status, _thanks = await phone_post(answer["qr_url"], {"level": "5", "comment": ""})
        assert status == 200
        rated = (await session_states(seen, "09", answer["session"], 2))[1]
        assert rated["state"] == "rated"
        assert rated["level"] == 5
        # "qr" also on a window with a device: the device is not prompted at all.
        on_pad = await evaluate(hub, "08", channel="qr")
        assert on_pad["state"] == "prompted"
        await asyncio.sleep(0.3)
        assert not [c for c in pad.log.commands if c.cmd == "prompt"]
        assert keypad.active_prompt is None
    [record] = rows(tmp_path)
    assert (record["data"]["channel"], record["data"]["window"], record["data"]["case_no"]) == (
        "qr",
        "09",
        "NO-KEYPAD-1",
    )
    assert record["data"]["comment"] is None
    assert record["data"]["reasons"] == []


async def test_qr_session_when_qr_evaluation_is_off_fails_saying_why(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port, [])
    async with running_hub(config) as hub:
        answer = await evaluate(hub, "09", channel="qr")
        status, _page, _headers = await phone_get(f"{base(hub)}/r/{'a' * 32}")
    assert answer["state"] == "failed"
    assert "qr_evaluation.enabled" in answer["error"]
    assert "qr_url" not in answer
    assert status == 404, "no phone route at all while QR evaluation is off"


async def test_expired_and_cancelled_links_answer_410(tmp_path: Path, broker: MosquittoBroker) -> None:
    clock = FakeClock()
    async with hall(tmp_path, broker, clock=clock) as (hub, keypad, _pad, seen):
        short = await evaluate(hub, "09", channel="qr", timeout_s=1)
        assert short["state"] == "prompted"
        status, _page, _headers = await phone_get(short["qr_url"])
        assert status == 200, "open until the session's timeout"
        clock.advance(1)
        states = await session_states(seen, "09", short["session"], 2)
        assert states[1]["state"] == "expired"
        status, page, _headers = await phone_get(short["qr_url"])
        assert status == 410
        assert "已过期" in page
        status, page = await phone_post(short["qr_url"], {"level": "4"})
        assert status == 410
        assert "已过期" in page

        first = await evaluate(hub, "07", **CASE)
        second = await evaluate(hub, "07", **CASE)  # replaces the first: cancelled
        assert (await session_states(seen, "07", first["session"], 2))[1]["state"] == "cancelled"
        status, page = await phone_post(first["qr_url"], {"level": "4"})
        assert status == 410
        assert "已失效" in page
        assert first["qr_url"] != second["qr_url"]
        status, _page, _headers = await phone_get(second["qr_url"])
        assert status == 200
        await until(
            lambda: keypad.active_prompt is not None and keypad.active_prompt.session == second["session"]
        )
    assert rows(tmp_path) == []


async def test_unknown_links_answer_404_pages(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hall(tmp_path, broker) as (hub, _keypad, _pad, _seen):
        for path in ("/r/" + "A" * 32, "/r/short", "/r/", "/r/a/b", "/r/" + "é" * 40):
            status, page, headers = await phone_get(base(hub) + path)
            assert status == 404, path
            assert "评价链接无效" in page
            assert headers["Content-Type"].startswith("text/html")
        status, page = await phone_post(base(hub) + "/r/" + "B" * 32, {"level": "5"})
        assert status == 404
        assert "评价链接无效" in page
        async with aiohttp.ClientSession() as http, http.put(base(hub) + "/r/" + "C" * 32) as response:
            assert response.status == 405
            assert "text/html" in response.headers["Content-Type"]
    assert rows(tmp_path) == []


async def test_keypad_rates_first_then_the_phone_is_told_410(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hall(tmp_path, broker) as (hub, keypad, _pad, seen):
        answer = await evaluate(hub, "07", **CASE)
        await until(lambda: keypad.active_prompt is not None)
        assert await keypad.press(4).wait()
        assert (await session_states(seen, "07", answer["session"], 2))[1]["state"] == "rated"
        status, page = await phone_post(answer["qr_url"], {"level": "1", "reasons": "R2"})
        assert status == 410
        assert "评价器上评价过" in page
    [record] = rows(tmp_path)
    assert (record["data"]["channel"], record["data"]["level"]) == ("keypad", 4)


async def test_pad_gets_the_link_and_whoever_rates_first_wins(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker) as (hub, _keypad, pad, seen):
        prompts: list[CmdPayload] = []

        async def on_command(command: CmdPayload) -> None:
            prompts.append(command)

        pad.on_command = on_command
        # The pad rates first: the phone's link is gone.
        first = await evaluate(hub, "08", case_no="PAD-1")
        await until(lambda: any(c.cmd == "prompt" and c.session == first["session"] for c in prompts))
        [prompt] = [c for c in prompts if c.cmd == "prompt"]
        assert prompt.qr_url == first["qr_url"], "the pad is prompted with the link to draw"
        assert pad.qr_url == first["qr_url"]
        assert pad.screen is not None
        assert read_qr_art(pad.screen) == first["qr_url"], "the pad's drawing scans back to the link"
        ack = await pad.rate(5, session=first["session"])
        assert ack.status == "stored"
        await session_states(seen, "08", first["session"], 2)
        status, _page = await phone_post(first["qr_url"], {"level": "1"})
        assert status == 410
        # The phone rates first: the pad is told `cancel`.
        second = await evaluate(hub, "08", case_no="PAD-2")
        status, _page = await phone_post(second["qr_url"], {"level": "3"})
        assert status == 200
        await until(lambda: any(c.cmd == "cancel" and c.session == second["session"] for c in prompts))
    assert [(r["data"]["channel"], r["data"]["case_no"]) for r in rows(tmp_path)] == [
        ("pad", "PAD-1"),
        ("qr", "PAD-2"),
    ]


async def test_keypad_and_phone_racing_store_one_evaluation(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hall(tmp_path, broker) as (hub, keypad, _pad, seen):
        for round_no in range(5):
            answer = await evaluate(hub, "07", case_no=f"RACE-{round_no}")
            await until(lambda: keypad.active_prompt is not None)
            press = keypad.press(5)
            status, _page = await phone_post(answer["qr_url"], {"level": "2"})
            assert await press.wait()
            states = await session_states(seen, "07", answer["session"], 2)
            assert [s["state"] for s in states] == ["prompted", "rated"]
            assert status in (200, 410)
    counted = [r for r in rows(tmp_path) if "suspect" not in r["data"]["flags"]]
    assert sorted(r["data"]["case_no"] for r in counted) == [f"RACE-{n}" for n in range(5)], (
        "one counted evaluation per session, whichever came first"
    )


async def test_submissions_are_rate_limited_per_client_address(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker, submissions_per_minute=3) as (hub, _keypad, _pad, _seen):
        answer = await evaluate(hub, "09", channel="qr")
        url = answer["qr_url"]
        for _ in range(3):
            status, _page = await phone_post(url, {"level": "9"})
            assert status == 400
        status, page = await phone_post(url, {"level": "5"})
        assert status == 429
        assert "提交过于频繁" in page
        assert rejects(hub, "qr_rate_limited") == 1
        # Another phone (another address on the hall network) is not held back by the first one.
        status, _page = await phone_post(url, {"level": "5"}, address="127.0.0.2")
        assert status == 200
    assert len(rows(tmp_path)) == 1


async def test_hostile_bodies_get_clear_pages_and_the_link_still_works(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    hostile: list[tuple[Any, str, int, str]] = [
        (b"level=5&comment=" + b"x" * 20_000, FORM, 413, "过长"),
        (b"level=9", FORM, 400, "(level)"),
        (b"level=abc", FORM, 400, "(level)"),
        (b"level=5&level=4", FORM, 400, "(level)"),
        (b"", FORM, 400, "请选择满意程度"),
        (b"level=5&reasons=R1", FORM, 400, "(reasons)"),
        (b"level=1&reasons=R99", FORM, 400, "(reasons)"),
        (b"level=1&reasons=R1&reasons=R1", FORM, 400, "(reasons)"),
        ("level=4&comment=" + "长" * 501, FORM, 400, "(comment)"),
        (b"level=4&comment=%FF%FE", FORM, 400, "UTF-8"),
        (b"level=4&comment=\xff\xfe", FORM, 400, "UTF-8"),
        (b"level=4&comment=a%00b", FORM, 400, "(comment)"),
        (b"level=4&comment=a&comment=b", FORM, 400, "(comment)"),
        (b"level=4&who=me", FORM, 400, "无法识别的字段"),
        ("&".join(["level=4"] + ["x=1"] * 40).encode(), FORM, 400, "字段过多"),
        (b'{"level": 5}', "application/json", 415, "提交格式不正确"),
        (b"level=5", "multipart/form-data; boundary=x", 415, "提交格式不正确"),
    ]
    async with hall(tmp_path, broker, submissions_per_minute=600) as (hub, _keypad, _pad, _seen):
        url = (await evaluate(hub, "09", channel="qr"))["qr_url"]
        for body, content_type, expected, words in hostile:
            status, page = await phone_post(url, body, content_type=content_type)
            assert (status, words in page) == (expected, True), (body[:60], status, page[-400:])
            assert page.startswith("<!doctype html>")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield b"comment=" + b"y" * 1024

        status, page = await phone_post(url, chunks())  # no Content-Length: cut at the bound
        assert status == 413
        # A refused form is shown again, with what can be kept (level 5 kept, reasons dropped).
        status, page = await phone_post(url, b"level=5&reasons=R1&comment=ok")
        assert 'value="5" id="l5" required checked' in page
        assert ">ok</textarea>" in page
        assert 'R1" checked' not in page
        assert rejects(hub, "qr_form") == 15
        assert rejects(hub, "qr_too_large") == 2
        assert rejects(hub, "qr_content_type") == 2
        status, _page = await phone_post(url, {"level": "4", "comment": "办事很快"})
        assert status == 200, "the hub carries on and the link still takes its one rating"
    [record] = rows(tmp_path)
    assert record["data"]["comment"] == "办事很快"


async def test_links_are_long_random_and_single_session(tmp_path: Path, broker: MosquittoBroker) -> None:
    assert TOKEN_BYTES * 8 >= 128
    async with hall(tmp_path, broker) as (hub, _keypad, _pad, _seen):
        urls = [(await evaluate(hub, "09", channel="qr"))["qr_url"] for _ in range(50)]
    tokens = [urlsplit(url).path.removeprefix("/r/") for url in urls]
    assert len(set(tokens)) == 50
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", token) for token in tokens)
    assert len(set("".join(tokens))) > 50, "URL-safe base64 of random bytes uses nearly all 64 symbols"


def test_a_link_expires_after_ttl_even_while_its_session_is_open() -> None:
    now = [1000.0]
    links = RatingLinks("http://10.1.2.3:8780", 1800, clock=lambda: now[0])
    token = links.issue(7, "07")
    link = links.get(token)
    assert link is not None
    assert link.state is LinkState.OPEN
    assert links.url(token) == f"http://10.1.2.3:8780/r/{token}"
    now[0] += 1799.9
    assert links.claim(link)
    links.release(link)
    now[0] += 0.2
    assert links.get(token) is link
    assert link.state.value == "expired"
    assert not links.claim(link)
    links.end(token, LinkState.USED)
    assert link.state.value == "expired", "a final state stays final"
    now[0] += 1800.1
    links.issue(8, "07")
    links.end(links.issue(9, "07"), LinkState.CANCELLED)
    assert links.get(token) is None, "ended links are forgotten after ttl_s"


async def test_nothing_about_the_citizen_is_shown_logged_or_stored(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    id_number = "370102199003071234"
    async with hall(tmp_path, broker) as (hub, _keypad, _pad, _seen):
        answer = await evaluate(hub, "07", **CASE, request_id="REQ-PRIVATE-1")
        status, page, _headers = await phone_get(answer["qr_url"])
        assert status == 200
        for secret in (CASE["case_no"], "REQ-PRIVATE-1", "127.0.0", "S007"):
            assert secret not in page
        status, thanks = await phone_post(
            answer["qr_url"],
            {"level": "1", "reasons": "R2", "comment": f"我的身份证 {id_number} 请回访"},
            address="127.0.0.3",
        )
        assert status == 200
        assert id_number not in thanks
        assert "127.0.0.3" not in thanks
        await phone_post(answer["qr_url"], {"level": "1"}, headers={"Host": "evil.example"})
    [record] = rows(tmp_path)
    assert id_number not in record["data"]["comment"]
    assert "370102********1234" in record["data"]["comment"]
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("outbox.db*"))
    assert b"127.0.0.3" not in stored
    assert id_number.encode() not in stored
    token = urlsplit(answer["qr_url"]).path.removeprefix("/r/")
    assert "127.0.0.3" not in caplog.text
    assert token not in caplog.text


async def test_host_check_and_the_json_rule_for_every_other_post(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hall(tmp_path, broker) as (hub, _keypad, _pad, _seen):
        url = (await evaluate(hub, "09", channel="qr"))["qr_url"]
        status, page = await phone_post(url, {"level": "5"}, headers={"Host": "evil.example"})
        assert status == 421
        assert page.startswith("<!doctype html>")
        status, page, _headers = await phone_get(url, headers={"Host": "rebound.example:80"})
        assert status == 421
        # A form post anywhere else is still refused by §9's JSON-only rule, also through `/r/..`.
        for path in (
            "/v1/windows/07/evaluate",
            "/r/../v1/windows/07/evaluate",
            "/r/%2e%2e/v1/windows/07/evaluate",
        ):
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    base(hub) + path,
                    data=b"request_id=x",
                    headers={"Content-Type": FORM},
                    allow_redirects=False,
                ) as response,
            ):
                assert response.status in (404, 415), path
        status, _page = await phone_post(url, {"level": "5"})
        assert status == 200


async def test_base_url_host_is_accepted_for_phones_only(tmp_path: Path, broker: MosquittoBroker) -> None:
    keypad = SimulatedKeypad(1)
    async with SimulatedLine(tmp_path / "ttyKP0", [keypad]):
        config = node_config(
            tmp_path / "data",
            broker.port,
            devices(tmp_path / "ttyKP0"),
            qr_evaluation={"enabled": True, "base_url": "http://hall-hub.example:8780"},
        )
        async with running_hub(config) as hub:
            answer = await evaluate(hub, "09", channel="qr")
            assert answer["qr_url"].startswith("http://hall-hub.example:8780/r/")
            local = base(hub) + urlsplit(answer["qr_url"]).path
            status, _page, _headers = await phone_get(local, headers={"Host": "hall-hub.example:8780"})
            assert status == 200
            async with (
                aiohttp.ClientSession() as http,
                http.get(base(hub) + "/v1/status", headers={"Host": "hall-hub.example:8780"}) as response,
            ):
                assert response.status == 421, "the phones' host name opens the rating page, nothing else"


async def test_mqtt_window_pc_gets_the_link_and_pads_without_it_see_no_new_field(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(
        tmp_path / "data", broker.port, [{"id": "pad-08", "kind": "pad", "transport": "mqtt", "window": "08"}]
    )
    async with (
        running_hub(config) as hub,
        SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-08", kind="pad"),
        observe(broker.port, f"{ROOT}/window/+/session", f"{ROOT}/dev/pad-08/cmd") as seen,
        aiomqtt.Client("127.0.0.1", broker.port, identifier="pc-08") as pc,
    ):
        await until(lambda: hub.registry.get("pad-08") is not None and hub.registry.get("pad-08").online)  # type: ignore[union-attr]
        await pc.publish(f"{ROOT}/window/08/evaluate", json.dumps({"request_id": "r-1"}), qos=1)
        [prompted] = await seen.wait_for(f"{ROOT}/window/08/session")
        [prompt] = await seen.wait_for(f"{ROOT}/dev/pad-08/cmd")
    assert "qr_url" not in prompted, "QR evaluation off: payloads as before §13"
    assert "qr_url" not in prompt


async def _tap(tools: DevTools, selector: str) -> None:
    """A finger on the middle of an element (mouse events at its centre, as a tap lands)."""
    box = await tools.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
        " const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        await tools.call(
            "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1
        )


async def _lifecycle(tools: DevTools, name: str) -> dict[str, float]:
    """The page's lifecycle events by name (their timestamps in seconds), once `name` has come."""
    async with asyncio.timeout(10):
        while True:
            events = {
                e["params"]["name"]: e["params"]["timestamp"]
                for e in tools.events
                if e["method"] == "Page.lifecycleEvent"
            }
            if name in events:
                return events
            await asyncio.sleep(0.05)


async def _screenshot(tools: DevTools, name: str) -> Path:
    await tools.evaluate("window.scrollTo(0, 0)")
    shot = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.mark.parametrize(("width", "height"), [(360, 740), (390, 844)])
async def test_the_page_on_a_phone_in_chromium(
    tmp_path: Path, broker: MosquittoBroker, width: int, height: int
) -> None:
    """Open the link, tap 不满意, choose a reason, write a comment, submit: stored, no script at all."""
    async with hall(tmp_path, broker) as (hub, _keypad, _pad, seen), chromium(tmp_path / "profile") as tools:
        answer = await evaluate(hub, "07", **CASE)
        _status, form_page, _headers = await phone_get(answer["qr_url"])  # showing it uses nothing up
        await tools.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=2, mobile=True
        )
        await tools.call("Emulation.setScriptExecutionDisabled", value=True)  # a phone with JavaScript off
        await tools.call("Page.setLifecycleEventsEnabled", enabled=True)
        await tools.call("Page.navigate", url=answer["qr_url"])
        await wait_js(tools, "document.readyState === 'complete' && !!document.querySelector('form')", 15)
        assert await tools.evaluate("document.documentElement.scrollWidth") <= width, "no sideways scrolling"
        heights = await tools.evaluate(
            "[...document.querySelectorAll('.levels label, button')].map(e => e.getBoundingClientRect().height)"
        )
        assert len(heights) == 6
        assert min(heights) >= 44, heights
        assert await tools.evaluate("getComputedStyle(document.querySelector('.reasons')).display") == "none"
        lifecycle = await _lifecycle(tools, "firstContentfulPaint")
        loaded_ms = round(
            await tools.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"), 1
        )
        timing = {
            "loaded_ms": loaded_ms,
            "first_contentful_paint_ms": round(
                1000 * (lifecycle["firstContentfulPaint"] - lifecycle["init"]), 1
            ),
        }
        await _screenshot(tools, f"qr-rating-page-{width}.png")

        await _tap(tools, "label[for=l2]")
        await wait_js(tools, "getComputedStyle(document.querySelector('.reasons')).display === 'block'", 5)
        reason_heights = await tools.evaluate(
            "[...document.querySelectorAll('.reasons label')].map(e => e.getBoundingClientRect().height)"
        )
        assert min(reason_heights) >= 44, reason_heights
        await _tap(tools, "input[value=R3]")
        await _tap(tools, "textarea")
        await tools.call("Input.insertText", text="材料要求没有一次说清")
        assert await tools.evaluate("document.documentElement.scrollWidth") <= width
        path = await _screenshot(tools, f"qr-rating-page-{width}-filled.png")
        assert path.stat().st_size > 10_000
        await _tap(tools, "button[type=submit]")
        await wait_js(tools, "document.title === '感谢您的评价'", 10)
        await _screenshot(tools, f"qr-rating-page-{width}-thanks.png")
        assert script_errors(tools) == [], "no CSP violation, no error of any kind"
        rated = (await session_states(seen, "07", answer["session"], 2))[1]
        status, _page, _headers = await phone_get(answer["qr_url"])
    [record] = rows(tmp_path)
    data = record["data"]
    assert (data["level"], data["reasons"], data["comment"], data["channel"]) == (
        2,
        ["R3"],
        "材料要求没有一次说清",
        "qr",
    )
    assert (data["national"]["pf"], data["case_no"], data["staff_id"], record["id"]) == (
        3,
        CASE["case_no"],
        "S007",
        rated["id"],
    )
    assert status == 409
    figures = {"viewport": f"{width}x{height} @2x", **timing, "page_bytes": len(form_page.encode())}
    (ARTIFACTS / f"qr-rating-page-{width}.json").write_text(json.dumps(figures, indent=2) + "\n")


def read_qr_art(art: str) -> str:
    """Scan a text-art QR code as a phone's camera would: draw it as an image, decode it (zxing-cpp)."""
    import numpy as np
    import zxingcpp

    halves = {" ": (True, True), "▀": (False, True), "▄": (True, False), "█": (False, False)}  # dark?
    rows: list[list[bool]] = []
    for line in art.splitlines():
        pairs = [halves[char] for char in line]
        rows += [[top for top, _ in pairs], [bottom for _, bottom in pairs]]
    image = np.where(np.array(rows), 0, 255).astype(np.uint8)
    image = np.kron(np.pad(image, 4, constant_values=255), np.ones((6, 6), dtype=np.uint8))
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1, "one QR code in the drawing"
    return str(found[0].text)


def test_the_qr_art_reads_back_and_needs_segno_only_to_draw() -> None:
    url = "http://10.1.2.3:8780/r/" + "Zz09_-" * 5 + "ab"
    art = qr_text(url)
    assert art is not None
    assert read_qr_art(art) == url
    lines = art.splitlines()
    assert len({len(line) for line in lines}) == 1, "a square of equal lines"
    assert len(lines[0]) <= 45, "fits beside the demo's other panels"
