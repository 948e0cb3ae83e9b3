"""ID cards and QR scans through the whole hub: masked identity only, scans classified, nothing leaked."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from drivers.idcard.simulator import SimCard, SimulatedSamReader, resident_check_character
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from drivers.qr.simulator import SimulatedSerialScanner
from hub.ops.broker import MosquittoBroker
from hub.privacy.sealing import citizen_ref, load_or_create_secret
from tests.support.hub import NODE_ID, node_config, running_hub
from tests.support.mqtt import observe

ROOT = f"hall/v1/{NODE_ID}"
FIRST17 = "37010219900307123"
NUMBER = FIRST17 + resident_check_character(FIRST17)
NAME = "隐私测试人"
ADDRESS = "山东省济南市历下区保密路88号"


def card() -> SimCard:
    photo = bytes(range(256)) * 4
    return SimCard(
        "resident",
        {
            "name": NAME,
            "sex": "2",
            "nation": "01",
            "birth": "19900307",
            "address": ADDRESS,
            "id_number": NUMBER,
            "authority": "济南市公安局历下分局",
            "valid_from": "20200101",
            "valid_until": "长期",
        },
        photo=photo,
    )


async def until(condition: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_card_scan_and_rating_at_one_window(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tty = tmp_path / "tty"
    tty.mkdir()
    keypad = SimulatedKeypad(1)
    devices = [
        {
            "id": "kp-07",
            "kind": "keypad",
            "transport": "serial",
            "port": str(tty / "kp"),
            "address": 1,
            "window": "07",
        },
        {"id": "id-07", "kind": "idcard", "transport": "serial", "port": str(tty / "id"), "window": "07"},
        {"id": "qr-07", "kind": "qr", "transport": "serial", "port": str(tty / "qr"), "window": "07"},
    ]
    config = node_config(tmp_path / "data", broker.port, devices)
    async with (
        SimulatedLine(tty / "kp", [keypad]),
        SimulatedSamReader(tty / "id") as reader,
        observe(broker.port, f"{ROOT}/#") as seen,
    ):
        scanner = SimulatedSerialScanner(tty / "qr")
        scanner.plug()
        try:
            async with running_hub(config) as hub:
                await until(lambda: all(hub.registry.get(d).online for d in ("kp-07", "id-07", "qr-07")))  # type: ignore[union-attr]
                reader.place_card(card())
                cards = await seen.wait_for(f"{ROOT}/events/card", 1, timeout=15)
                await scanner.scan(
                    "https://hcp.example.gov.cn/evaluate?case_no=SD-2026-0042", terminator="crlf"
                )
                await scanner.scan("483920", terminator="cr")
                scans = await seen.wait_for(f"{ROOT}/events/scan", 2, timeout=15)
                assert await keypad.free_rating(4).wait()
                evaluations = await seen.wait_for(f"{ROOT}/events/evaluation", 1)
                await asyncio.sleep(0.5)
        finally:
            scanner.unplug()

    secret = load_or_create_secret(tmp_path / "data" / "secret")
    expected_ref = citizen_ref(NUMBER, secret, "sm3")
    data = cards[0]["data"]
    assert (data["card_type"], data["citizen_masked"], data["citizen_ref"]) == (
        "resident",
        "370102********" + NUMBER[-4:],
        expected_ref,
    )
    assert (data["sex"], data["birth_year"], data["valid_until"], data["window"]) == (
        "female",
        1990,
        "长期",
        "07",
    )
    assert [(s["data"]["meaning"], s["data"]["case_no"]) for s in scans] == [
        ("evaluation_url", "SD-2026-0042"),
        ("pickup_code", None),
    ]
    rating = evaluations[0]["data"]
    assert (rating["citizen_ref"], rating["citizen_masked"]) == (expected_ref, data["citizen_masked"]), (
        "the card read at the window identifies the rating"
    )

    secrets = [NAME, NUMBER, NUMBER[6:14], ADDRESS]
    places: dict[str, bytes] = {}
    for file in (tmp_path / "data").iterdir():
        if file.name != "secret":
            places[file.name] = file.read_bytes()
    places["mqtt"] = json.dumps(seen.messages, ensure_ascii=False).encode()
    places["logs"] = "\n".join(r.getMessage() for r in caplog.records).encode()
    for where, blob in places.items():
        for secret_text in secrets:
            for encoding in ("utf-8", "utf-16-le"):
                assert secret_text.encode(encoding) not in blob, (
                    f"{secret_text!r} ({encoding}) found in {where}"
                )
        assert bytes(range(64, 128)) not in blob, f"photo bytes found in {where}"
