"""Pure tests of the 社会保障卡 record layout and read sequence (no pcscd: the fake card's answers)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from drivers.base import CitizenIdentity
from drivers.pcsc.apdu import Response, get_response, read_record, select_aid, select_ef
from drivers.pcsc.ssc import (
    EF05,
    EF06,
    RECORDS,
    SSSE_AID,
    Format,
    RecordError,
    SscReadError,
    decode_an,
    decode_cn,
    encode_record,
    exchange,
    is_valid_id_number,
    parse_record,
    read_identity,
)
from hub.privacy.sealing import NodeIdentifier
from tests.drivers.pcsc.fake_card import SSC_ATR, RefusingCard, SocialSecurityCard
from tests.drivers.pcsc.helpers import RecordingIdentifier

KEY = b"hallhub pcsc test key, 32 bytes!"
NUMBER = "11010519491231002X"
NAME = "张测试"


def test_layout_matches_the_read_commands_in_use() -> None:
    # The READ RECORD commands readers send for these items (tag, Le) must come out of the table.
    number, name = RECORDS["id_number"], RECORDS["name"]
    assert read_record(number.record_id, number.le).hex().upper() == "00B2080014"
    assert read_record(name.record_id, name.le).hex().upper() == "00B2090020"
    assert read_record(RECORDS["card_id"].record_id, RECORDS["card_id"].le).hex().upper() == ("00B2010012")
    assert read_record(RECORDS["card_number"].record_id, RECORDS["card_number"].le).hex().upper() == (
        "00B207000B"
    )
    assert {spec.ef for spec in RECORDS.values()} == {EF05, EF06}
    assert [spec.record_id for spec in RECORDS.values()] == list(range(0x01, 0x0E))
    assert number.where == "EF06/08"


def test_record_round_trip_and_padding() -> None:
    spec = RECORDS["name"]
    record = encode_record(spec, NAME.encode("gb18030"))
    assert record[:2] == bytes((0x09, 30))
    assert len(record) == spec.le
    assert decode_an(parse_record(spec, record)) == NAME
    birth = encode_record(RECORDS["birthplace"], bytes.fromhex("1101"))
    assert birth[-1] == 0xFF
    assert decode_cn(parse_record(RECORDS["birthplace"], birth)) == "1101"
    assert RECORDS["birthplace"].fmt is Format.CN


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x08", "too short"),
        (bytes((0x09, 18)) + b"1" * 18, "tag 09, expected 08"),
        (bytes((0x08, 19)) + b"1" * 19, "length byte 19"),
        (bytes((0x08, 18)) + b"1" * 10, "length byte 18 with 10 value bytes"),
    ],
)
def test_parse_record_rejects_without_showing_the_value(data: bytes, message: str) -> None:
    with pytest.raises(RecordError, match=message) as caught:
        parse_record(RECORDS["id_number"], data)
    assert "1111" not in str(caught.value)


def test_encode_record_refuses_oversized_values() -> None:
    with pytest.raises(RecordError):
        encode_record(RECORDS["sex"], b"12")


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        (NUMBER, True),
        ("11010519491231002x", True),
        ("110105194912310021", False),  # wrong check character
        ("11010519491231002", False),  # 17 characters
        ("1101051949123100２X", False),  # full-width digit
        ("A1010519491231002X", False),
    ],
)
def test_id_number_check_character(number: str, valid: bool) -> None:
    assert is_valid_id_number(number) is valid


def test_read_identity_from_a_card() -> None:
    card = SocialSecurityCard(NUMBER, NAME)
    identity = read_identity(card.transmit, NodeIdentifier(KEY, hmac="sha256"))
    assert identity.masked == "110105********002X"
    assert identity.ref == hmac.new(KEY, NUMBER.encode(), hashlib.sha256).hexdigest()
    assert card.apdus == [
        select_aid(SSSE_AID),
        select_ef(EF05),
        read_record(0x01, 0x12),
        select_ef(EF06),
        read_record(0x08, 0x14),
        read_record(0x09, 0x20),
    ]


def test_read_identity_passes_number_and_name_to_the_identifier_only() -> None:
    identifier = RecordingIdentifier()
    identity = read_identity(SocialSecurityCard(NUMBER.lower(), NAME).transmit, identifier)
    assert identifier.calls == [(NUMBER, NAME)]
    assert identity == CitizenIdentity(masked="masked", ref="ref")


def test_card_without_the_application_gets_only_the_select() -> None:
    card = RefusingCard(SSC_ATR)
    with pytest.raises(SscReadError) as caught:
        read_identity(card.transmit, RecordingIdentifier())
    assert caught.value.reason == "ssc_no_application"
    assert card.apdus == [select_aid(SSSE_AID)]


def test_card_id_without_the_mohrss_id_stops_before_personal_data() -> None:
    card = SocialSecurityCard(NUMBER, NAME)
    card.files[EF05][0x01] = encode_record(RECORDS["card_id"], b"\x11" * 16)
    identifier = RecordingIdentifier()
    with pytest.raises(SscReadError) as caught:
        read_identity(card.transmit, identifier)
    assert caught.value.reason == "ssc_bad_card_id"
    assert select_ef(EF06) not in card.apdus
    assert identifier.calls == []


@pytest.mark.parametrize("number", ["110105194912310021", "ABCDEFGHIJKLMNOPQR"])
def test_bad_number_is_refused_without_showing_it(number: str) -> None:
    card = SocialSecurityCard(number, NAME)
    identifier = RecordingIdentifier()
    with pytest.raises(SscReadError) as caught:
        read_identity(card.transmit, identifier)
    assert caught.value.reason == "ssc_bad_number"
    assert number not in str(caught.value)
    assert identifier.calls == []


def test_missing_name_record_identifies_without_the_name() -> None:
    card = SocialSecurityCard(NUMBER, NAME)
    del card.files[EF06][0x09]
    identifier = RecordingIdentifier()
    read_identity(card.transmit, identifier)
    assert identifier.calls == [(NUMBER, None)]


def test_unreadable_number_record() -> None:
    card = SocialSecurityCard(NUMBER, NAME)
    del card.files[EF06][0x08]
    with pytest.raises(SscReadError) as caught:
        read_identity(card.transmit, RecordingIdentifier())
    assert caught.value.reason == "ssc_read_failed"
    assert "6A83" in str(caught.value)


def test_exchange_fetches_announced_data_and_fixes_le() -> None:
    sent: list[bytes] = []
    answers = {
        read_record(0x08, 0x14): b"\x6c\x10",
        read_record(0x08, 0x10): b"\x61\x04",
        get_response(4): b"\x01\x02\x03\x04\x90\x00",
    }

    def transmit(apdu: bytes) -> Response:
        sent.append(apdu)
        return Response.parse(answers[apdu])

    response = exchange(transmit, read_record(0x08, 0x14))
    assert response.ok
    assert response.data == b"\x01\x02\x03\x04"
    assert sent == [read_record(0x08, 0x14), read_record(0x08, 0x10), get_response(4)]


def test_exchange_corrects_at_most_once() -> None:
    sent: list[bytes] = []

    def transmit(apdu: bytes) -> Response:
        sent.append(apdu)
        return Response.parse(b"\x61\x10")

    assert exchange(transmit, select_aid(SSSE_AID)).sw1 == 0x61
    assert len(sent) == 2
