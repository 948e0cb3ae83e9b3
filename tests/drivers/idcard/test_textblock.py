"""Text block layouts: each built field by field to its widths, independently of the tables."""

from __future__ import annotations

import pytest

from drivers.idcard.textblock import (
    LAYOUTS,
    NO_EXPIRY,
    CardType,
    Sex,
    TextBlockError,
    decode_text_block,
    encode_text_block,
)


def ucs2(text: str, width_bytes: int) -> bytes:
    """One field: UCS-2LE, space-padded to its width in bytes."""
    encoded = text.encode("utf-16-le")
    assert len(encoded) <= width_bytes
    return encoded + " ".encode("utf-16-le") * ((width_bytes - len(encoded)) // 2)


def block(*fields: tuple[str, int]) -> bytes:
    data = b"".join(ucs2(text, width) for text, width in fields)
    assert len(data) == 256
    return data


RESIDENT_NUMBER = "11010519491231002X"


def resident_block(valid_until: str = "20350101", flag: str = "") -> bytes:
    return block(
        ("张测试", 30),
        ("2", 2),
        ("01", 4),
        ("19491231", 16),
        ("北京市东城区测试胡同9号", 70),
        (RESIDENT_NUMBER, 36),
        ("北京市公安局东城分局", 30),
        ("20150101", 16),
        (valid_until, 16),
        ("", 28),
        (flag, 2),
        ("", 6),
    )


def test_resident_card() -> None:
    text = decode_text_block(resident_block())
    assert text.layout == "resident"
    assert text.card_type is CardType.RESIDENT
    assert text.name == "张测试"
    assert text.sex is Sex.FEMALE
    assert text.nation == "01"
    assert text.birth == "1949-12-31"
    assert text.birth_year == 1949
    assert text.address == "北京市东城区测试胡同9号"
    assert text.id_number == RESIDENT_NUMBER
    assert (text.valid_from, text.valid_until) == ("2015-01-01", "2035-01-01")


def test_no_expiry() -> None:
    text = decode_text_block(resident_block(valid_until="长期"))
    assert text.valid_until == NO_EXPIRY == "长期"


def test_hk_mo_tw_permit() -> None:
    data = block(
        ("李测试", 30),
        ("1", 2),
        ("", 4),
        ("19900202", 16),
        ("广东省深圳市福田区测试路2号", 70),
        ("810000199002021237", 36),
        ("深圳市公安局", 30),
        ("20210303", 16),
        ("20260303", 16),
        ("H12345678", 18),
        ("01", 4),
        ("", 6),
        ("J", 2),
        ("", 6),
    )
    text = decode_text_block(data)
    assert text.card_type is CardType.HK_MO_TW_PERMIT
    assert text.layout == "J"
    assert (text.name, text.sex, text.birth) == ("李测试", Sex.MALE, "1990-02-02")
    assert text.id_number == "810000199002021237"
    assert text.valid_until == "2026-03-03"
    assert text.nation == ""


def test_foreign_permanent_old_layout() -> None:
    data = block(
        ("SAMPLE, TEST PERSON", 120),
        ("1", 2),
        ("USA110085010112", 30),
        ("USA", 6),
        ("测试丙", 30),
        ("20170101", 16),
        ("20270101", 16),
        ("19850101", 16),
        ("01", 4),
        ("1100", 8),
        ("I", 2),
        ("", 6),
    )
    text = decode_text_block(data)
    assert text.card_type is CardType.FOREIGN_PERMANENT
    assert text.layout == "I"
    assert text.english_name == "SAMPLE, TEST PERSON"
    assert text.name == "测试丙"
    assert text.id_number == "USA110085010112"
    assert text.nation == "USA"
    assert text.birth == "1985-01-01"
    assert (text.valid_from, text.valid_until) == ("2017-01-01", "2027-01-01")


def test_foreign_permanent_old_layout_without_chinese_name_uses_english() -> None:
    data = bytearray(encode_text_block("I", {
        "english_name": "ONLY, ENGLISH", "sex": "2", "id_number": "GBR310075060122",
        "nation": "GBR", "valid_from": "20160101", "valid_until": "20260101",
        "birth": "19750601",
    }))  # fmt: skip
    assert decode_text_block(bytes(data)).name == "ONLY, ENGLISH"


def test_foreign_permanent_2023_layout() -> None:
    english = "SAMPLE, TESTING WITH A VERY LONG ENGLISH NAME"  # 45 characters: spills over
    data = block(
        ("测试丁", 30),
        ("2", 2),
        ("00", 4),
        ("19800101", 16),
        (english[:35], 70),
        ("931586198001010028", 36),
        ("", 30),
        ("20230808", 16),
        ("20330807", 16),
        (english[35:], 22),
        ("PAK", 6),
        ("Y", 2),
        ("000", 6),
    )
    text = decode_text_block(data)
    assert text.card_type is CardType.FOREIGN_PERMANENT
    assert text.layout == "Y"
    assert text.name == "测试丁"
    assert text.english_name == english
    assert text.sex is Sex.FEMALE
    assert text.birth_year == 1980
    assert text.id_number == "931586198001010028"
    assert text.nation == "PAK"
    assert text.valid_until == "2033-08-07"
    assert encode_text_block("Y", {
        "name": "测试丁", "sex": "2", "renewal_count": "00", "birth": "19800101",
        "english_name": english, "id_number": "931586198001010028", "valid_from": "20230808",
        "valid_until": "20330807", "nation": "PAK", "prior_link": "000",
    }) == data  # fmt: skip


def test_encoder_matches_hand_built_blocks() -> None:
    assert encode_text_block("resident", {
        "name": "张测试", "sex": "2", "nation": "01", "birth": "19491231",
        "address": "北京市东城区测试胡同9号", "id_number": RESIDENT_NUMBER,
        "authority": "北京市公安局东城分局", "valid_from": "20150101", "valid_until": "20350101",
    }) == resident_block()  # fmt: skip


def test_repr_hides_personal_fields() -> None:
    text = repr(decode_text_block(resident_block()))
    for secret in ("张测试", RESIDENT_NUMBER, "测试胡同", "19491231", "1949-12-31"):
        assert secret not in text
    assert "resident" in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (resident_block()[:254], "256 bytes"),
        (resident_block(flag="Q"), "unknown card type flag"),
        (resident_block(valid_until="20351301"), "valid_until is not a valid calendar date"),
        (resident_block(valid_until="2035010"), "valid_until is not a YYYYMMDD date"),
    ],
)
def test_bad_blocks(data: bytes, message: str) -> None:
    with pytest.raises(TextBlockError, match=message) as caught:
        decode_text_block(data)
    assert "2035" not in str(caught.value)


def test_bad_sex_and_empty_number_and_name() -> None:
    data = bytearray(resident_block())
    data[30:32] = ucs2("5", 2)
    with pytest.raises(TextBlockError, match="sex"):
        decode_text_block(bytes(data))
    data = bytearray(resident_block())
    data[122:158] = ucs2("", 36)
    with pytest.raises(TextBlockError, match="ID number"):
        decode_text_block(bytes(data))
    data = bytearray(resident_block())
    data[0:30] = ucs2("", 30)
    with pytest.raises(TextBlockError, match="name"):
        decode_text_block(bytes(data))


def test_undecodable_units_never_raise_unicode_errors() -> None:
    data = bytearray(resident_block())
    data[52:54] = b"\x00\xd8"  # a lone surrogate in the address
    assert decode_text_block(bytes(data)).id_number == RESIDENT_NUMBER


def test_nul_padding_accepted() -> None:
    data = bytearray(resident_block())
    data[220:256] = bytes(36)
    assert decode_text_block(bytes(data)).card_type is CardType.RESIDENT


def test_encoder_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        encode_text_block("Z", {})
    with pytest.raises(ValueError, match="no field"):
        encode_text_block("resident", {"english_name": "X"})
    with pytest.raises(ValueError, match="longer"):
        encode_text_block("resident", {"name": "一二三四五六七八九十一二三四五六"})
    with pytest.raises(ValueError, match="type flag"):
        encode_text_block("J", {"type_flag": "J"})


def test_every_layout_puts_the_flag_at_248() -> None:
    assert set(LAYOUTS) == {"", "J", "I", "Y"}
    for layout in LAYOUTS.values():
        flag = layout.spans["type_flag"]
        assert (flag.start, flag.end) == (248, 250)
        for name in ("sex", "birth", "id_number", "valid_from", "valid_until"):
            assert name in layout.spans
