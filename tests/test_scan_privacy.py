"""ID numbers inside scanned codes: masked with a citizen_ref on every scan path, never kept in full.

End to end on a real Mosquitto and a real hub: an MQTT scanner and a serial scanner send codes that
carry ID numbers; the outbox file, the MQTT traffic (mirror, acks), the pull API and the hub's log
must hold only the masked numbers and their references.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from contract.mqtt import PayloadError, RatingPayload, ScanPayload, parse_device_payload
from drivers.base import CitizenIdentifier
from drivers.pcsc.ssc import is_valid_id_number
from drivers.qr.simulator import SimulatedSerialScanner
from hub.ingest.scans import ScanClassifier, ScanRecorder
from hub.ops.broker import MosquittoBroker
from hub.privacy.id_numbers import check_character, find_id_numbers, mask_id_numbers
from hub.privacy.sealing import NodeIdentifier, citizen_ref, load_or_create_secret
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, PULL_TOKEN, node_config, running_hub
from tests.support.mqtt import observe

ROOT = f"hall/v1/{NODE_ID}"
NUMBER = "370102199003071238"  # valid check character
NUMBER_X = "44030419851015107X"  # check character X, scanned in lower case
URL = f"https://hcp.example.gov.cn/evaluate?case_no=SD-2026-0042&idcard={NUMBER}&from=qr"
SERIAL_CODE = f"身份证:{NUMBER_X.lower()} 姓名:略"


SECRET = bytes(range(32))

# --- the detector and masker ---------------------------------------------------------------------


def test_check_character_matches_the_standard_example() -> None:
    # GB 11643-1999 appendix example: 11010519491231002X.
    assert check_character("11010519491231002") == "X"
    assert check_character(NUMBER[:17]) == NUMBER[-1]
    with pytest.raises(ValueError, match="17 ASCII digits"):
        check_character("1101051949123100")


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_check_character_agrees_with_the_card_reader(first17: str) -> None:
    number = first17 + check_character(first17)
    assert is_valid_id_number(number)
    wrong = "0" if number[-1] != "0" else "1"
    assert not is_valid_id_number(first17 + wrong)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (NUMBER, "370102********1238"),
        (f"https://a.gov.cn/v?idcard={NUMBER}&x=1", "https://a.gov.cn/v?idcard=370102********1238&x=1"),
        (f"身份证:{NUMBER};", "身份证:370102********1238;"),
        (f"ID{NUMBER}X", "ID370102********1238X"),  # letters around it are a boundary
        (NUMBER_X.lower(), "440304********107X"),  # upper-cased, as the reference is
        ("１１０１０５１９４９１２３１００２ｘ", "110105********002X"),  # full-width digits and X
        ("370102900307123", "370102*****7123"),  # the old 15-digit form
        ("370102199003071230", "370102********1230"),  # wrong check character: masked all the same
        (f"{NUMBER}0001", "370102********12380001"),  # glued to digits, right check character
        (f"9{NUMBER_X}", "9440304********107X"),
        (f"{NUMBER} and 11010519491231002X", "370102********1238 and 110105********002X"),
    ],
)
def test_id_numbers_are_masked_wherever_they_stand(text: str, masked: str) -> None:
    result = mask_id_numbers(text)
    assert result.text == masked
    assert len(result.text) == len(text)
    assert result.numbers


@pytest.mark.parametrize(
    "text",
    [
        "483920",  # pickup code
        "37010220240001",  # a 14-digit case number
        "37010219900307123",  # 17 digits: too short to be sure
        "3701021990030712",  # 16 digits
        "070102199003071238",  # starts with 0
        "370102199013071238",  # month 13
        "370102199002301238",  # 30 February
        "370102180003071238",  # born in 1800
        "370102199003071230000",  # glued, and no window has a right check character
        "370102901307123",  # old form with month 13
        "https://zwfw.sd.gov.cn/pj?case_no=SD-2026-0042",
        "6222021234567890123",  # a 19-digit bank card number with no valid window
    ],
)
def test_other_codes_are_kept_as_they_are(text: str) -> None:
    assert mask_id_numbers(text).text == text
    assert find_id_numbers(text) == []


def test_several_numbers_are_found_in_order_and_fifteen_digits_are_upgraded() -> None:
    found = find_id_numbers(f"a={NUMBER_X.lower()}&b=370102900307123&c={NUMBER}")
    upgraded = "370102" + "19" + "900307123" + check_character("37010219900307123")
    assert [(f.check_ok, f.canonical) for f in found] == [(True, NUMBER_X), (None, upgraded), (True, NUMBER)]
    assert found[1].masked == "370102********" + upgraded[-4:], "the masked form of the 18-digit number"
    assert NUMBER not in repr(found) + repr(mask_id_numbers(NUMBER)), "reprs never show a number"


def valid_numbers() -> st.SearchStrategy[str]:
    """18-character numbers with a real date and a right check character."""
    first17 = st.builds(
        lambda region, day, seq: f"{region}{day:%Y%m%d}{seq:03d}",
        st.integers(100000, 999999),
        st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2099, 12, 31)),
        st.integers(0, 999),
    )
    return first17.map(lambda f: f + check_character(f))


SURROUNDING = st.text(alphabet=st.sampled_from("0123456789Xx ab=&:/?身份证号０９"), max_size=30)


@given(SURROUNDING, valid_numbers(), st.booleans(), SURROUNDING)
@example("9", NUMBER_X, True, "5")
def test_a_valid_number_never_survives_whatever_surrounds_it(
    before: str, number: str, lower: bool, after: str
) -> None:
    text = before + (number.lower() if lower else number) + after
    result = mask_id_numbers(text)
    assert number not in result.text.upper()
    assert len(result.text) == len(text)
    changed = [i for i, (old, new) in enumerate(zip(text, result.text, strict=True)) if old != new]
    spans = [(f.start, f.end) for f in result.numbers]
    assert all(any(start <= i < end for start, end in spans) for i in changed), "only numbers change"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_text_without_long_digit_runs_is_untouched(text: str) -> None:
    runs = "".join(c if c in "0123456789０１２３４５６７８９" else " " for c in text).split()
    if all(len(run) < 15 for run in runs):
        assert mask_id_numbers(text).text == text


# --- the scan fields ----------------------------------------------------------------------------


def recorder() -> ScanRecorder:
    return ScanRecorder(lambda: NodeIdentifier(SECRET, "sha256"))


def test_scan_fields_mask_every_number_and_reference_the_first() -> None:
    fields = recorder().fields(f"{URL}&guardian={NUMBER_X}", symbology=f"QR{NUMBER}")
    masked, masked_x = "370102********1238", "440304********107X"
    assert fields == {
        "data": f"{URL}&guardian={NUMBER_X}".replace(NUMBER, masked).replace(NUMBER_X, masked_x),
        "symbology": f"QR{masked}",
        "meaning": "evaluation_url",
        "case_no": "SD-2026-0042",
        "citizen_ref": citizen_ref(NUMBER, SECRET, "sha256"),
        "citizen_masked": masked,
    }


def test_a_case_number_shaped_like_an_id_number_is_masked_too() -> None:
    fields = recorder().fields(f"https://a.gov.cn/e?case_no={NUMBER}", symbology=None)
    assert (fields["meaning"], fields["case_no"]) == ("evaluation_url", "370102********1238")
    assert fields["symbology"] is None


def test_codes_without_numbers_are_classified_and_never_touch_the_secret() -> None:
    def no_secret() -> CitizenIdentifier:
        raise AssertionError("the secret was read for a scan without an ID number")

    scans = ScanRecorder(no_secret, ScanClassifier())
    assert scans.fields(" 483920 ", "EAN") == {
        "data": " 483920 ",
        "symbology": "EAN",
        "meaning": "pickup_code",
        "case_no": None,
        "citizen_ref": None,
        "citizen_masked": None,
    }


def test_without_a_usable_secret_the_number_is_still_masked(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> CitizenIdentifier:
        raise OSError(f"cannot read the secret while handling {NUMBER}")

    fields = ScanRecorder(broken).fields(NUMBER, None)
    assert (fields["data"], fields["citizen_masked"], fields["citizen_ref"]) == (
        "370102********1238",
        "370102********1238",
        None,
    )
    assert "no citizen_ref" in caplog.text
    assert NUMBER not in caplog.text


def test_a_rejected_value_is_echoed_masked() -> None:
    with pytest.raises(PayloadError) as caught:
        parse_device_payload(ScanPayload, {"msg_id": "m1", "data": int(NUMBER)})
    assert caught.value.message == "data: expected text, got 370102********1238"


def test_a_time_that_is_an_id_number_is_echoed_masked() -> None:
    """A rule's refusal (here the RFC 3339 check of `ts`) echoes the value as masked as a type's."""
    with pytest.raises(PayloadError) as caught:
        parse_device_payload(RatingPayload, {"msg_id": "m1", "level": 5, "ts": NUMBER})
    assert "370102********1238" in caught.value.message
    assert NUMBER not in caught.value.message


# --- end to end ---------------------------------------------------------------------------------


async def until(condition: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_scanned_id_number_is_masked_everywhere(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tty = tmp_path / "tty"
    tty.mkdir()
    devices = [
        {"id": "qr-00", "kind": "qr", "transport": "mqtt"},
        {"id": "qr-07", "kind": "qr", "transport": "serial", "port": str(tty / "qr"), "window": "07"},
    ]
    config = node_config(tmp_path / "data", broker.port, devices)
    scanner = SimulatedSerialScanner(tty / "qr")
    scanner.plug()
    try:
        async with observe(broker.port, f"{ROOT}/#") as seen, running_hub(config) as hub:
            await until(lambda: getattr(hub.registry.get("qr-07"), "online", False))
            async with SimulatedMqttDevice(
                "127.0.0.1", broker.port, NODE_ID, "qr-00", kind="qr", retry_interval_s=2.0
            ) as qr:
                url_ack = await qr.send("scan", {"data": URL, "symbology": "QRCode"})
                pickup_ack = await qr.send("scan", {"data": "483920"})
                # Firmware that sends a numeric code as a JSON number is rejected, without an echo.
                number_ack = await qr.send("scan", {"data": int(NUMBER)})
            await scanner.scan(SERIAL_CODE, terminator="crlf")
            scans = await seen.wait_for(f"{ROOT}/events/scan", 3, timeout=15)
            async with aiohttp.ClientSession() as http:
                response = await http.get(
                    f"http://127.0.0.1:{hub.api_port}/v1/records",
                    headers={"Authorization": f"Bearer {PULL_TOKEN}"},
                    params={"kind": "scan"},
                )
                pulled = await response.read()
            await asyncio.sleep(0.3)
    finally:
        scanner.unplug()

    places: dict[str, bytes] = {
        file.name: file.read_bytes() for file in (tmp_path / "data").iterdir() if file.name != "secret"
    }
    outbox = b"".join(blob for name, blob in places.items() if name.startswith("outbox"))
    # Everything on the broker but the scanner's own input (`dev/qr-00/scan`): mirror, acks, errors.
    from_hub = {topic: m for topic, m in seen.messages.items() if topic != f"{ROOT}/dev/qr-00/scan"}
    assert from_hub[f"{ROOT}/dev/qr-00/ack"], "the hub's acks were observed"
    assert len(from_hub[f"{ROOT}/events/scan"]) == 3, "the scan mirror is searched too"
    mirror = json.dumps(seen.messages[f"{ROOT}/events/scan"], ensure_ascii=False).encode()
    places["mqtt from the hub"] = json.dumps(from_hub, ensure_ascii=False).encode()
    places["pull api"] = pulled
    places["logs"] = "\n".join(r.getMessage() for r in caplog.records).encode()
    places["log tracebacks"] = "\n".join(r.exc_text or "" for r in caplog.records).encode()
    full_texts = [NUMBER, NUMBER_X, NUMBER_X.lower(), NUMBER[6:14], NUMBER_X[6:14]]
    for where, blob in places.items():
        for text in full_texts:
            assert text.encode() not in blob, f"{text!r} found in {where}"

    secret = load_or_create_secret(tmp_path / "data" / "secret")
    masked, masked_x = "370102********1238", "440304********107X"
    ref, ref_x = citizen_ref(NUMBER, secret, "sm3"), citizen_ref(NUMBER_X, secret, "sm3")
    for where, blob in (("outbox", outbox), ("mqtt mirror", mirror), ("pull api", pulled)):
        for text in (masked, masked_x, ref, ref_x):
            assert text.encode() in blob, f"{text!r} missing from {where}"

    assert (url_ack.status, pickup_ack.status, number_ack.status) == ("stored", "stored", "rejected")
    assert number_ack.error == "data: expected text, got 370102********1238"
    by_id = {s["id"]: s["data"] for s in scans}
    url_scan, pickup_scan = by_id[url_ack.id], by_id[pickup_ack.id]
    serial_scan = next(d for d in by_id.values() if d["device_id"] == "qr-07")
    assert url_scan == {
        "device_id": "qr-00",
        "window": None,
        "node_id": NODE_ID,
        "source": "mqtt",
        "data": URL.replace(NUMBER, masked),
        "symbology": "QRCode",
        "meaning": "evaluation_url",
        "case_no": "SD-2026-0042",
        "citizen_ref": ref,
        "citizen_masked": masked,
    }
    assert (pickup_scan["data"], pickup_scan["meaning"], pickup_scan["citizen_ref"]) == (
        "483920",
        "pickup_code",
        None,
    )
    assert pickup_scan["citizen_masked"] is None
    assert serial_scan["data"] == SERIAL_CODE.replace(NUMBER_X.lower(), masked_x)
    assert (serial_scan["source"], serial_scan["window"], serial_scan["meaning"]) == ("serial", "07", "other")
    assert (serial_scan["citizen_ref"], serial_scan["citizen_masked"]) == (ref_x, masked_x)
