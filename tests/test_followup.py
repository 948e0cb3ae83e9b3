"""The bad-review follow-up loop (CONTRACTS §11): steps over HTTP, deadlines, restarts, the receiver.

Deadlines are tested two ways: in process with a clock the test moves (the follow-up book takes its
clock in its constructor), and as a hub process whose wall clock libfaketime moves while it is
stopped, so that a deadline passes while the hub is down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from contract.http import CallbackRequest, RectifyRequest
from contract.records import Record, format_utc
from hub.config import ConfigError, parse_config
from hub.hall.deadlines import Deadlines
from hub.hall.followup import FollowupBook, hall_books
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from hub.store.outbox import Outbox
from sync.receiver import start_receiver
from tests.support.clock import faketime_env
from tests.support.hub import NODE_ID, PULL_TOKEN, HubProcess, node_raw, process_config, running_hub
from tests.support.mqtt import observe

CONTROL = "control-token-for-followups-01"
AUTH = {"Authorization": f"Bearer {CONTROL}"}
SHANGHAI = "Asia/Shanghai"
CENTRAL_TOKEN = "central-token-followups"


# -- working days ---------------------------------------------------------------------------------


def deadlines(holidays: tuple[str, ...] = ()) -> Deadlines:
    return Deadlines.from_config(SHANGHAI, 60, 3, holidays)


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=deadlines().timezone)


@pytest.mark.parametrize(
    ("raised", "holidays", "due"),
    [
        ("2026-12-01 10:00", (), "2026-12-04 10:00"),  # Tuesday → Friday
        ("2026-12-03 16:30", (), "2026-12-08 16:30"),  # Thursday → over the weekend → Tuesday
        ("2026-12-04 10:00", ("2026-12-09",), "2026-12-10 10:00"),  # Friday, a holiday on Wednesday
        ("2026-12-05 11:00", (), "2026-12-10 00:00"),  # Saturday: counts from Monday 00:00
        ("2026-09-30 09:00", tuple(f"2026-10-0{d}" for d in range(1, 9)), "2026-10-13 09:00"),  # 国庆
    ],
)
def test_rectification_is_due_in_working_days(raised: str, holidays: tuple[str, ...], due: str) -> None:
    rules = deadlines(holidays)
    assert rules.rectify_due(local(raised)) == local(due).astimezone(UTC)


def test_the_callback_is_due_an_hour_later_whatever_the_day() -> None:
    saturday = local("2026-12-05 23:30")
    assert deadlines().callback_due(saturday) == (saturday + timedelta(hours=1)).astimezone(UTC)


def test_followup_config_is_checked_naming_the_key(tmp_path: Path) -> None:
    raw = node_raw(tmp_path, 1883, [], followup={"callback_within_min": 0, "holidays": ["2026-13-01"]})
    with pytest.raises(ConfigError, match=r"followup\.callback_within_min") as caught:
        parse_config(raw)
    assert "followup.holidays[0]: expected a date YYYY-MM-DD" in str(caught.value)


# -- deadlines on a clock the test moves -----------------------------------------------------------


class Clock:
    """A wall clock that moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def bad_review(intake: Intake, config: Any, at: datetime, case_no: str) -> list[Record]:
    records = intake.evaluation(config.device[0], level=1, reasons=["R1"], case_no=case_no, window="07")
    for record in records:
        record.created_at = format_utc(at)
    return records


@pytest.fixture
async def book_and_outbox(tmp_path: Path) -> AsyncIterator[tuple[FollowupBook, Outbox, Clock, Any]]:
    config = parse_config(
        node_raw(
            tmp_path,
            1883,
            [{"id": "pad-07", "kind": "pad", "transport": "mqtt", "window": "07"}],
            national={"timezone": SHANGHAI},
        )
    )
    rules = deadlines()
    clock = Clock(local("2026-12-04 10:00").astimezone(UTC))  # a Friday
    outbox = Outbox(tmp_path / "outbox.db", store_hooks=[hall_books(rules).on_store])
    await outbox.open()
    book = FollowupBook(outbox, rules, node_id=NODE_ID, hall_code="370102", clock=clock)
    try:
        yield book, outbox, clock, config
    finally:
        await outbox.close()


async def alerts_of(outbox: Outbox, kind: str) -> list[dict[str, Any]]:
    bodies, _last, _more = await outbox.pending_page(0, 1000, "alert")
    return [json.loads(b)["data"] for b in bodies if json.loads(b)["data"]["type"] == kind]


async def test_overdue_alerts_are_raised_at_the_deadline_once_each(
    book_and_outbox: tuple[FollowupBook, Outbox, Clock, Any],
) -> None:
    book, outbox, clock, config = book_and_outbox
    intake = Intake(config, outbox, HubMetrics())
    records = bad_review(intake, config, clock.now, "CASE-1")
    await outbox.store(records)
    alert_id = records[1].id

    clock.now += timedelta(minutes=59)
    assert await book.raise_overdue() == 0, "not yet due"
    clock.now += timedelta(minutes=2)
    assert await book.raise_overdue() == 1
    assert await book.raise_overdue() == 0, "once per alert"
    (overdue,) = await alerts_of(outbox, "callback_overdue")
    assert overdue["alert_id"] == alert_id
    assert overdue["due_at"] == format_utc(local("2026-12-04 11:00"))
    assert overdue["window"] == "07"
    assert overdue["case_no"] == "CASE-1"

    answer = await book.callback(alert_id, CallbackRequest(by="王主任", outcome="reached"))
    assert answer.status == 200
    assert answer.body["step"] == "rectify"
    assert answer.body["callback"]["late"] is True, "called back after the hour"

    clock.now = local("2026-12-09 09:59").astimezone(UTC)  # Wednesday: rectify due 10:00
    assert await book.raise_overdue() == 0
    clock.now += timedelta(minutes=2)
    assert await book.raise_overdue() == 1
    (late,) = await alerts_of(outbox, "rectify_overdue")
    assert late["due_at"] == format_utc(local("2026-12-09 10:00"))
    answer = await book.rectify(alert_id, RectifyRequest(by="王主任", substantiated=True, note="已整改"))
    assert answer.body["step"] == "closed"
    assert answer.body["rectify"]["late"] is True
    assert await book.open_states() == []


async def test_a_deadline_that_passed_while_stopped_is_raised_at_start(
    tmp_path: Path, book_and_outbox: tuple[FollowupBook, Outbox, Clock, Any]
) -> None:
    _book, outbox, clock, config = book_and_outbox
    intake = Intake(config, outbox, HubMetrics())
    await outbox.store(bad_review(intake, config, clock.now, "CASE-2"))
    await outbox.close()
    clock.now += timedelta(days=6)  # both deadlines passed while "the hub was down"

    reopened = Outbox(tmp_path / "outbox.db", store_hooks=[hall_books(deadlines()).on_store])
    await reopened.open()
    try:
        later = FollowupBook(reopened, deadlines(), node_id=NODE_ID, hall_code="370102", clock=clock)
        watcher = asyncio.create_task(later.run())
        try:
            async with asyncio.timeout(10):
                while (
                    len(await alerts_of(reopened, "callback_overdue"))
                    + len(await alerts_of(reopened, "rectify_overdue"))
                    < 2
                ):
                    await asyncio.sleep(0.02)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        assert await later.raise_overdue() == 0, "not raised again"
    finally:
        await reopened.close()


# -- the loop over HTTP, on a running hub ----------------------------------------------------------


async def rate_bad(broker: MosquittoBroker, msg_id: str) -> None:
    async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as terminal:
        assert (await terminal.rate(1, msg_id=msg_id, reasons=["R1"])).status == "stored"


async def post(http: aiohttp.ClientSession, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(path, json=body, **kwargs) as response:
        return response.status, await response.json()


async def test_the_whole_loop_over_http(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = parse_config(
        node_raw(
            tmp_path / "data",
            broker.port,
            api={
                "listen": "127.0.0.1:0",
                "pull_token": PULL_TOKEN,
                "control_token": CONTROL,
            },
        )
    )
    async with (
        running_hub(config) as hub,
        aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http,
        observe(broker.port, f"hall/v1/{NODE_ID}/events/followup") as seen,
    ):
        await rate_bad(broker, "bad-1")
        async with asyncio.timeout(10):
            while not (await hub.node_status.status())["followups"]:
                await asyncio.sleep(0.02)
        (open_one,) = (await hub.node_status.status())["followups"]
        alert_id = open_one["alert_id"]
        assert open_one["step"] == "callback"
        assert open_one["due_at"] == open_one["callback_due"]

        steps = f"/v1/alerts/{alert_id}"
        status, body = await post(http, f"{steps}/callback", {"by": "李", "outcome": "reached"})
        assert (status, body["error"]) == (
            401,
            "missing bearer token (Authorization: Bearer <api.control_token>)",
        )
        status, body = await post(http, f"{steps}/rectify", {"by": "李", "substantiated": True}, headers=AUTH)
        assert (status, body["missing"]) == (409, "callback")
        assert "callback" in body["error"]
        status, body = await post(http, f"{steps}/callback", {"by": "李", "outcome": "maybe"}, headers=AUTH)
        assert status == 400
        assert body["error"].startswith("outcome:")
        status, body = await post(
            http, f"{steps}/callback", {"by": "李", "outcome": "reached", "x": 1}, headers=AUTH
        )
        assert (status, body["error"]) == (400, "x: not a field of this request")
        status, body = await post(http, f"{steps}/callback", {"by": "", "outcome": "reached"}, headers=AUTH)
        assert status == 400
        assert body["error"].startswith("by:")
        status, body = await post(
            http, f"{steps}/callback", {"by": "李", "outcome": "reached", "note": "x" * 501}, headers=AUTH
        )
        assert status == 400
        assert body["error"].startswith("note:")
        status, body = await post(
            http,
            "/v1/alerts/0190f0f0-0000-7000-8000-000000000000/callback",
            {"by": "李", "outcome": "reached"},
            headers=AUTH,
        )
        assert status == 404

        status, first = await post(
            http, f"{steps}/callback", {"by": "李", "outcome": "reached", "note": "已回访"}, headers=AUTH
        )
        assert status == 200
        assert first["step"] == "rectify"
        assert first["callback"]["late"] is False
        status, again = await post(
            http, f"{steps}/callback", {"by": "张", "outcome": "unreachable"}, headers=AUTH
        )
        assert (status, again) == (200, first), "a repeat answers the same state"
        status, closed = await post(
            http, f"{steps}/rectify", {"by": "李", "substantiated": False}, headers=AUTH
        )
        assert status == 200
        assert closed["step"] == "closed"
        assert (await hub.node_status.status())["followups"] == []

        bodies, _last, _more = await hub.outbox.pending_page(0, 100, "followup")
        stored = [json.loads(b)["data"] for b in bodies]
        assert [(s["step"], s["by"]) for s in stored] == [("callback", "李"), ("rectify", "李")]
        assert stored[0]["outcome"] == "reached"
        assert stored[1]["substantiated"] is False
        assert {s["alert_id"] for s in stored} == {alert_id}
        assert all(s["node_id"] == NODE_ID and s["hall_code"] == "370102" for s in stored)
        await seen.wait_for(f"hall/v1/{NODE_ID}/events/followup", 2)


# -- kill -9, and a deadline that passes while the hub is stopped ----------------------------------


async def open_alert_id(http: aiohttp.ClientSession) -> str:
    async with asyncio.timeout(15):
        while True:
            async with http.get("/v1/status") as response:
                followups = (await response.json())["followups"]
            if followups:
                return str(followups[0]["alert_id"])
            await asyncio.sleep(0.05)


async def pulled(http: aiohttp.ClientSession, kind: str) -> list[dict[str, Any]]:
    async with http.get(
        "/v1/records", params={"kind": kind, "limit": 1000}, headers={"Authorization": f"Bearer {PULL_TOKEN}"}
    ) as response:
        return [r["data"] for r in (await response.json())["records"]]


async def test_kill9_around_a_step_stores_it_exactly_once(tmp_path: Path, broker: MosquittoBroker) -> None:
    path, api_port = process_config(
        tmp_path, broker.port, node_raw(tmp_path, 0)["device"], control_token=CONTROL
    )
    hub = HubProcess(path, api_port, tmp_path / "hub.log")
    base = f"http://127.0.0.1:{api_port}"
    hub.start()
    try:
        await rate_bad(broker, "bad-kill")
        async with aiohttp.ClientSession(base) as http:
            alert_id = await open_alert_id(http)
        for delay_ms in (0, 2, 5, 10, 30):
            async with aiohttp.ClientSession(base) as http:
                request = asyncio.create_task(
                    post(
                        http,
                        f"/v1/alerts/{alert_id}/callback",
                        {"by": "李", "outcome": "reached"},
                        headers=AUTH,
                    )
                )
                await asyncio.sleep(delay_ms / 1000)
                hub.kill9()
                await asyncio.gather(request, return_exceptions=True)
            hub.start()
        async with aiohttp.ClientSession(base) as http:
            status, state = await post(
                http, f"/v1/alerts/{alert_id}/callback", {"by": "李", "outcome": "reached"}, headers=AUTH
            )
            assert status == 200
            assert state["step"] == "rectify"
            callbacks = [d for d in await pulled(http, "followup") if d["step"] == "callback"]
        assert len(callbacks) == 1, "however often the hub died around it, the step is stored once"
        assert hub.terminate() == 0
    finally:
        hub.stop_quietly()


async def test_a_deadline_passing_while_the_hub_is_stopped_raises_its_alert_at_start(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    offset_file = tmp_path / "faketime"
    env = faketime_env(offset_file)
    path, api_port = process_config(
        tmp_path, broker.port, node_raw(tmp_path, 0)["device"], control_token=CONTROL
    )
    hub = HubProcess(path, api_port, tmp_path / "hub.log", env=env)
    base = f"http://127.0.0.1:{api_port}"
    hub.start()
    try:
        await rate_bad(broker, "bad-stopped")
        async with aiohttp.ClientSession(base) as http:
            alert_id = await open_alert_id(http)
            assert await pulled(http, "alert")
            assert not [a for a in await pulled(http, "alert") if a["type"] == "callback_overdue"]
        assert hub.terminate() == 0
        offset_file.write_text("+2h\n")  # the hour passes while the hub is stopped
        hub.start()
        async with aiohttp.ClientSession(base) as http, asyncio.timeout(15):
            while not (
                overdue := [a for a in await pulled(http, "alert") if a["type"] == "callback_overdue"]
            ):
                await asyncio.sleep(0.05)
            assert [a["alert_id"] for a in overdue] == [alert_id]
            async with http.get("/v1/status") as response:
                (state,) = (await response.json())["followups"]
            assert state["overdue"] is True
        assert hub.terminate() == 0
        hub.start()
        async with aiohttp.ClientSession(base) as http:
            await asyncio.sleep(0.5)
            overdue = [a for a in await pulled(http, "alert") if a["type"] == "callback_overdue"]
            assert len(overdue) == 1, "raised once, not again at the next start"
        assert hub.terminate() == 0
    finally:
        offset_file.write_text("+0\n")
        hub.stop_quietly()


# -- the records reach a real receiver -------------------------------------------------------------


async def test_followup_and_overdue_records_reach_the_receiver(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with start_receiver(
        "127.0.0.1:0", f"sqlite:///{tmp_path / 'central.db'}", CENTRAL_TOKEN
    ) as central:
        raw = node_raw(tmp_path / "data", broker.port)
        raw["api"] = {"listen": "127.0.0.1:0", "pull_token": PULL_TOKEN, "control_token": CONTROL}
        raw["central"] = {"url": central.url, "token": CENTRAL_TOKEN}
        config = parse_config(raw)
        async with (
            running_hub(config) as hub,
            aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http,
        ):
            await rate_bad(broker, "bad-sync")
            alert_id = await open_alert_id(http)
            for step, body in (
                ("callback", {"by": "李", "outcome": "unreachable"}),
                ("rectify", {"by": "李", "substantiated": True}),
            ):
                status, _state = await post(http, f"/v1/alerts/{alert_id}/{step}", body, headers=AUTH)
                assert status == 200
            async with asyncio.timeout(15):
                while (await central.stats()).records_by_kind.get("followup", 0) < 2:
                    await asyncio.sleep(0.05)
        stats = await central.stats()
        assert stats.rejected == 0
        assert stats.records_by_kind["followup"] == 2
