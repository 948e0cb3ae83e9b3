"""Pure tests of APDU building/parsing and of the ATR rule (no pcscd needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.pcsc.apdu import (
    GET_UID,
    ApduError,
    Response,
    command,
    get_response,
    read_record,
    select_aid,
    select_ef,
)
from drivers.pcsc.atr import (
    DEFAULT_SSC_ATR_PATTERNS,
    AtrError,
    AtrPattern,
    CardClass,
    classify,
    parse_atr,
)
from drivers.pcsc.ssc import SSSE_AID
from tests.drivers.pcsc.fake_card import CONTACTLESS_ATR, EMV_ATR, SSC_ATR

SSC_PATTERNS = tuple(AtrPattern.parse(text) for text in DEFAULT_SSC_ATR_PATTERNS)


def with_tck(body: str) -> bytes:
    """Append the TCK (XOR of T0 to the last byte) to an ATR given in hex."""
    raw = bytes.fromhex(body)
    check = 0
    for value in raw[1:]:
        check ^= value
    return raw + bytes((check,))


def test_contract_apdus_are_exact() -> None:
    assert GET_UID.hex().upper() == "FFCA000000"
    assert select_aid(SSSE_AID).hex().upper() == "00A404000F7378312E73682EC9E7BBE1B1A3D5CF"
    assert select_ef(0xEF06).hex().upper() == "00A4020002EF06"
    assert read_record(0x08, 0x14).hex().upper() == "00B2080014"
    assert get_response(0x1C).hex().upper() == "00C000001C"


def test_command_cases() -> None:
    assert command(0x00, 0x84, 0, 0) == bytes.fromhex("00840000")
    assert command(0x00, 0xB0, 0, 0, le=256) == bytes.fromhex("00B0000000")
    assert command(0x00, 0xD6, 0, 0, b"\x01\x02") == bytes.fromhex("00D60000020102")
    assert command(0x00, 0xA4, 4, 0, b"\xa0", le=1) == bytes.fromhex("00A4040001A001")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cla": 0x100, "ins": 0, "p1": 0, "p2": 0}, "CLA"),
        ({"cla": 0, "ins": 0, "p1": -1, "p2": 0}, "P1"),
        ({"cla": 0, "ins": 0, "p1": 0, "p2": 0, "data": b"\x00" * 256}, "255"),
        ({"cla": 0, "ins": 0, "p1": 0, "p2": 0, "le": 0}, "Le"),
        ({"cla": 0, "ins": 0, "p1": 0, "p2": 0, "le": 257}, "Le"),
    ],
)
def test_command_rejects_what_does_not_fit(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ApduError, match=message):
        command(**kwargs)  # type: ignore[arg-type]


def test_select_ef_and_aid_bounds() -> None:
    with pytest.raises(ApduError):
        select_ef(0x10000)
    with pytest.raises(ApduError):
        select_aid(b"")


@given(
    data=st.binary(max_size=255),
    le=st.one_of(st.none(), st.integers(min_value=1, max_value=256)),
)
def test_command_length_follows_its_case(data: bytes, le: int | None) -> None:
    apdu = command(0x00, 0xB2, 1, 4, data, le)
    assert len(apdu) == 4 + (1 + len(data) if data else 0) + (0 if le is None else 1)
    if data:
        assert apdu[4] == len(data)
        assert apdu[5 : 5 + len(data)] == data


def test_response_parse_hides_data() -> None:
    response = Response.parse(bytes.fromhex("0812313130313035") + b"\x90\x00")
    assert response.ok
    assert response.sw == 0x9000
    assert response.data == bytes.fromhex("0812313130313035")
    assert "313130" not in repr(response)
    assert "110105" not in repr(response)
    assert str(response) == "SW 9000 (8 data bytes)"
    assert not Response.parse(b"\x6a\x82").ok
    with pytest.raises(ApduError):
        Response.parse(b"\x90")


def test_parse_contactless_pseudo_atr() -> None:
    assert with_tck(CONTACTLESS_ATR[:-1].hex()) == CONTACTLESS_ATR
    atr = parse_atr(CONTACTLESS_ATR)
    assert atr.is_contactless_pseudo_atr
    assert atr.protocols == (0, 1)
    assert atr.historical[:2] == b"\x80\x4f"
    assert atr.tck == 0x6A


def test_parse_social_security_atr() -> None:
    atr = parse_atr(SSC_ATR)
    assert dict(atr.interface) == {"TB1": 0x00, "TC1": 0x00}
    assert atr.protocols == ()
    assert atr.tck is None
    assert len(atr.historical) == 13
    assert not atr.is_contactless_pseudo_atr


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x3b", "2..33"),
        (b"\x3b" * 34, "2..33"),
        (bytes.fromhex("3A00"), "TS"),
        (bytes.fromhex("3B6D00"), "TC1 missing"),
        (bytes.fromhex("3B6D0000008154"), "historical bytes missing"),
        (CONTACTLESS_ATR[:-1] + b"\x00", "TCK"),
        (CONTACTLESS_ATR[:-1], "TCK"),
        (SSC_ATR + b"\x00", "unexpected"),
    ],
)
def test_parse_atr_rejects_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(AtrError, match=message):
        parse_atr(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (CONTACTLESS_ATR, CardClass.CONTACTLESS),
        # ISO 14443-4 card (ATS historical bytes) in a contactless reader: still only a UID read.
        (with_tck("3B888001 00000000 00718100"), CardClass.CONTACTLESS),
        (SSC_ATR, CardClass.SOCIAL_SECURITY),
        (bytes.fromhex("3B6D000000905431168660110816000001"), CardClass.SOCIAL_SECURITY),
        (EMV_ATR, CardClass.OTHER),
        # Same layout as a social security card but an unlisted chip maker: default-deny.
        (bytes.fromhex("3B6D000000995431008660240520000001"), CardClass.OTHER),
        # A typical T=1 contact bank card ATR.
        (with_tck("3BE90000 8121 45 5649535F494E462006"), CardClass.OTHER),
        (b"\x3b", CardClass.OTHER),
    ],
)
def test_classify_is_default_deny(raw: bytes, expected: CardClass) -> None:
    assert classify(raw, SSC_PATTERNS) is expected


def test_classify_with_an_extra_pattern() -> None:
    extra = AtrPattern.parse("3b 68 00 00 00 73 c8 40 .. .. 90 00")
    assert classify(EMV_ATR, SSC_PATTERNS) is CardClass.OTHER
    assert classify(EMV_ATR, (*SSC_PATTERNS, extra)) is CardClass.SOCIAL_SECURITY


def test_atr_pattern_nibble_wildcards() -> None:
    pattern = AtrPattern.parse("3B 6. 00")
    assert pattern.text == "3B 6. 00"
    assert pattern.matches(bytes.fromhex("3B6D00"))
    assert pattern.matches(bytes.fromhex("3B6000"))
    assert not pattern.matches(bytes.fromhex("3B7D00"))
    assert not pattern.matches(bytes.fromhex("3B6D0000"))


@pytest.mark.parametrize("text", ["", "3B 6", "3B XY", "3B6D"])
def test_atr_pattern_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="ATR pattern"):
        AtrPattern.parse(text)


@given(st.binary(min_size=1, max_size=33))
def test_exact_pattern_matches_only_itself(raw: bytes) -> None:
    pattern = AtrPattern.parse(raw.hex(" "))
    assert pattern.matches(raw)
    assert not pattern.matches(raw + b"\x00")
    assert not pattern.matches(bytes((raw[0] ^ 0x01,)) + raw[1:])


@given(st.binary(max_size=40))
def test_parse_atr_never_fails_unexpectedly(raw: bytes) -> None:
    try:
        atr = parse_atr(raw)
    except AtrError:
        return
    assert atr.raw == raw
