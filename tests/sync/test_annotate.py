"""The national record set on evaluations as the outbox stores them (CONTRACTS §6a, 一次一评)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hub.config import HubConfig
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.store.outbox import Outbox, Stored
from sync.national import national_record_schema
from tests.sync.support import open_outbox, sync_config

VALIDATOR = jsonschema.Draft202012Validator(national_record_schema())


def _config(tmp_path: Path, **national: Any) -> HubConfig:
    devices = [
        {"id": "kp-07", "kind": "keypad", "transport": "serial", "port": "/dev/null", "window": "07"},
        {"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "01"},
        {"id": "qr-01", "kind": "qr", "transport": "mqtt"},
    ]
    return sync_config(
        tmp_path / "data",
        "http://127.0.0.1:1",
        device=devices,
        national=national or {"level_order": "5_best"},
    )


async def _rate(
    outbox: Outbox, config: HubConfig, level: int, device: str = "pad-01", **fields: Any
) -> dict[str, Any]:
    """Store one rating as the hub does; return the stored evaluation's data."""
    intake = Intake(config, outbox, HubMetrics())
    records = intake.evaluation(
        config.devices_by_id[device], level=level, reasons=fields.pop("reasons", []), **fields
    )
    result = await outbox.store(records)
    assert isinstance(result, Stored)
    stored = await outbox.get_record(records[0].id)
    assert stored is not None
    data: dict[str, Any] = stored["data"]
    if "national" in data:
        VALIDATOR.validate(data["national"])
    return data


@pytest.mark.parametrize(
    ("order", "satisfaction"), [("5_best", [5, 4, 3, 2, 1]), ("1_best", [1, 2, 3, 4, 5])]
)
async def test_level_order_from_config(tmp_path: Path, order: str, satisfaction: list[int]) -> None:
    config = _config(tmp_path, level_order=order)
    async with open_outbox(config) as outbox:
        got = [
            (await _rate(outbox, config, level, case_no=f"C-{level}"))["national"]["satisfaction"]
            for level in (5, 4, 3, 2, 1)
        ]
    assert got == satisfaction


async def test_first_rating_of_a_case_maps_fully(tmp_path: Path) -> None:
    config = _config(
        tmp_path, dept_code="11370102MB0000000X", reasons={"R1": "0101", "R3": "0303"}, pf={"pad": 6}
    )
    async with open_outbox(config) as outbox:
        data = await _rate(
            outbox,
            config,
            2,
            case_no="370102-2026-000001",
            item_code="4370117001000",
            item_name="营业执照办理",
            comment="等了很久",
            reasons=["R1", "R2", "R3"],
        )
    national = data["national"]
    assert national["projectNo"] == "370102-2026-000001"
    assert national["taskCode"] == "4370117001000"
    assert national["taskName"] == "营业执照办理"
    assert national["deptCode"] == "11370102MB0000000X"
    assert national["areaCode"] == "370102", "defaults to node.hall_code"
    assert national["pf"] == 6
    assert national["satisfaction"] == 2
    assert national["evalDetail"] == "0101,0303"
    assert national["writingEvaluation"] == "等了很久"
    assert national["assessNumber"] == 1
    assert national["userProp"] == 1
    assert data["flags"] == []


async def test_re_evaluation_after_a_bad_review_is_number_2_then_repeats(tmp_path: Path) -> None:
    config = _config(tmp_path, area_code="370102001000")
    async with open_outbox(config) as outbox:
        first = await _rate(outbox, config, 1, case_no="CASE-1")
        second = await _rate(outbox, config, 4, case_no="CASE-1")
        third = await _rate(outbox, config, 5, case_no="CASE-1")
        stats = await outbox.stats()
    assert first["national"]["assessNumber"] == 1
    assert second["national"]["assessNumber"] == 2
    assert second["flags"] == []
    assert second["national"]["areaCode"] == "370102001000"
    assert "national" not in third
    assert third["flags"] == ["repeat"]
    assert stats.pending_by_kind == {"evaluation": 3, "alert": 1}, "the repeat is still stored"


async def test_second_rating_after_a_good_one_is_a_repeat(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        first = await _rate(outbox, config, 5, case_no="CASE-2")
        again = await _rate(outbox, config, 1, case_no="CASE-2")
        alerts = await outbox.recent_records("alert", 5)
    assert first["national"]["assessNumber"] == 1
    assert "national" not in again
    assert again["flags"] == ["repeat"]
    assert len(alerts) == 1, "a repeated bad review still raises its alert for the hall"


async def test_each_channel_has_its_own_first_rating(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        pad = await _rate(outbox, config, 5, device="pad-01", case_no="CASE-3")
        keypad = await _rate(outbox, config, 4, device="kp-07", case_no="CASE-3")
        pad_again = await _rate(outbox, config, 3, device="pad-01", case_no="CASE-3")
    assert pad["national"]["assessNumber"] == 1
    assert pad["national"]["pf"] == 4
    assert keypad["national"]["assessNumber"] == 1
    assert keypad["channel"] == "keypad"
    assert pad_again["flags"] == ["repeat"]


async def test_ratings_without_a_case_are_always_first(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        numbers = [(await _rate(outbox, config, level))["national"]["assessNumber"] for level in (1, 5, 5)]
    assert numbers == [1, 1, 1]


async def test_an_unmappable_rating_is_stored_without_national(tmp_path: Path) -> None:
    config = _config(tmp_path, pf={"keypad": 4, "pad": 4, "terminal": 5})
    async with open_outbox(config) as outbox:
        data = await _rate(outbox, config, 5, device="qr-01", case_no="CASE-4")
    assert data["channel"] == "qr", "no pf code for qr: no national record, the rating is kept"
    assert "national" not in data
    assert data["flags"] == []


async def test_the_hub_sets_national_on_what_devices_send(tmp_path: Path) -> None:
    """The hook is wired into the hub's own outbox (sync/node.py)."""
    from hub.config import Secrets
    from sync.node import build_hub

    config = _config(tmp_path)
    hub = build_hub(config, Secrets("", "", ""))
    await hub.outbox.open()
    try:
        records = hub.intake.evaluation(config.devices_by_id["pad-01"], level=4, reasons=[], case_no="HUB-1")
        await hub.intake.store(records)
        stored = await hub.outbox.get_record(records[0].id)
    finally:
        await hub.outbox.close()
    assert stored is not None
    assert stored["data"]["national"]["assessNumber"] == 1
    assert [name for name, _ in hub.services if name == "uplink"] == ["uplink"], "push is on with central.url"


async def test_ratings_of_one_case_committed_together_are_judged_in_order(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        intake = Intake(config, outbox, HubMetrics())
        batches = [
            intake.evaluation(config.devices_by_id["pad-01"], level=level, reasons=[], case_no="CASE-T")
            for level in (1, 4, 5)
        ]
        results = await asyncio.gather(*(outbox.store(records) for records in batches))
        assert all(isinstance(result, Stored) for result in results)
        data = [(await outbox.get_record(records[0].id) or {})["data"] for records in batches]
        assert outbox.commits <= 2, "the three writes should have shared a commit"
    assert [d.get("national", {}).get("assessNumber") for d in data] == [1, 2, None]
    assert data[2]["flags"] == ["repeat"]
