"""ScanFramer and encode_scan: the pure serial framing, fed byte by byte and in odd chunks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.qr.codec import (
    RejectedFrame,
    ScanFramer,
    ScannedText,
    SendTerminator,
    Terminator,
    decode_payload,
    encode_scan,
)


def texts(results: list[ScannedText | RejectedFrame]) -> list[str]:
    return [r.text for r in results if isinstance(r, ScannedText)]


@pytest.mark.parametrize(
    ("terminator", "wire", "expected"),
    [
        ("cr", b"A1\rB2\r", ["A1", "B2"]),
        ("lf", b"A1\nB2\n", ["A1", "B2"]),
        ("crlf", b"A1\r\nB2\r\n", ["A1", "B2"]),
        ("any", b"A1\rB2\nC3\r\nD4\n\r", ["A1", "B2", "C3", "D4"]),
        # With a specific terminator, the other line-end bytes are part of the code.
        ("cr", b"line1\nline2\r", ["line1\nline2"]),
        ("lf", b"A\rB\n", ["A\rB"]),
        ("crlf", b"A\rB\nC\r\n", ["A\rB\nC"]),
    ],
)
def test_terminators(terminator: Terminator, wire: bytes, expected: list[str]) -> None:
    framer = ScanFramer(terminator)
    assert texts(framer.feed(wire, 0.0)) == expected
    assert framer.deadline is None


@pytest.mark.parametrize("terminator", ["cr", "lf", "crlf", "any"])
def test_byte_by_byte_gives_the_same_codes(terminator: Terminator) -> None:
    sent: SendTerminator = "crlf" if terminator == "any" else terminator
    wire = encode_scan("https://e.gov.cn/?case_no=1", sent) + encode_scan("取件码 1234", sent)
    framer = ScanFramer(terminator)
    results = [r for i in range(len(wire)) for r in framer.feed(wire[i : i + 1], i * 0.001)]
    assert texts(results) == ["https://e.gov.cn/?case_no=1", "取件码 1234"]


def test_crlf_split_between_reads_is_one_terminator() -> None:
    framer = ScanFramer("crlf")
    assert framer.feed(b"ABC\r", 0.0) == []
    assert framer.feed(b"\nDEF\r\n", 0.01) == [ScannedText("ABC"), ScannedText("DEF")]


def test_idle_timeout_ends_a_partial_code() -> None:
    framer = ScanFramer("cr", idle_timeout_s=0.2)
    assert framer.feed(b"1234", 10.0) == []
    assert framer.feed(b"5678", 10.1) == []
    assert framer.deadline == pytest.approx(10.3)
    assert framer.expire(10.29) == []
    assert framer.expire(10.3) == [ScannedText("12345678")]
    assert framer.deadline is None
    assert framer.expire(20.0) == []


def test_a_late_byte_after_an_idle_gap_starts_a_new_code() -> None:
    framer = ScanFramer("cr", idle_timeout_s=0.2)
    framer.feed(b"AAAA", 0.0)
    assert framer.feed(b"BBBB\r", 1.0) == [ScannedText("AAAA"), ScannedText("BBBB")]


def test_idle_timeout_drops_half_a_crlf() -> None:
    framer = ScanFramer("crlf", idle_timeout_s=0.2)
    framer.feed(b"CODE\r", 0.0)
    assert framer.expire(0.5) == [ScannedText("CODE")]


def test_max_length_is_inclusive_and_counted_in_bytes() -> None:
    framer = ScanFramer("cr", max_length=6)
    assert framer.feed(b"123456\r", 0.0) == [ScannedText("123456")]
    # Two GBK characters are four bytes: within the limit.
    assert framer.feed(encode_scan("办件", "cr", "gbk"), 0.0) == [ScannedText("办件")]
    assert framer.feed(b"1234567\r", 0.0) == [RejectedFrame("too_long")]


def test_too_long_code_is_reported_once_and_the_rest_discarded() -> None:
    framer = ScanFramer("cr", max_length=8)
    results = framer.feed(b"X" * 5, 0.0)
    for i in range(1, 200):
        results += framer.feed(b"X" * 5, i * 0.001)
    assert results == [RejectedFrame("too_long")]
    assert framer.feed(b"XXXX\rGOOD\r", 0.3) == [ScannedText("GOOD")]


def test_too_long_code_without_terminator_ends_at_idle() -> None:
    framer = ScanFramer("cr", max_length=4, idle_timeout_s=0.1)
    assert framer.feed(b"123456789", 0.0) == [RejectedFrame("too_long")]
    assert framer.expire(0.2) == []
    assert framer.feed(b"1234\r", 0.3) == [ScannedText("1234")]


def test_crlf_code_of_exactly_max_length_waiting_for_lf() -> None:
    framer = ScanFramer("crlf", max_length=4)
    assert framer.feed(b"1234\r", 0.0) == []
    assert framer.feed(b"\n", 0.01) == [ScannedText("1234")]


@pytest.mark.parametrize(
    ("encoding", "wire", "expected"),
    [
        ("auto", "办件编号".encode(), "办件编号"),
        ("auto", "办件编号".encode("gbk"), "办件编号"),
        ("gbk", "办件编号".encode("gbk"), "办件编号"),
        ("utf-8", "办件编号".encode(), "办件编号"),
        ("UTF8", b"plain", "plain"),
    ],
)
def test_encodings(encoding: str, wire: bytes, expected: str) -> None:
    assert ScanFramer("cr", encoding=encoding).feed(wire + b"\r", 0.0) == [ScannedText(expected)]


@pytest.mark.parametrize(
    ("encoding", "wire"),
    [("utf-8", "办件".encode("gbk")), ("auto", b"\xff\xfe\x80abc"), ("gbk", b"\x81\x30")],
)
def test_undecodable_bytes_are_rejected(encoding: str, wire: bytes) -> None:
    framer = ScanFramer("cr", encoding=encoding)
    assert framer.feed(wire + b"\rOK\r", 0.0) == [RejectedFrame("bad_encoding"), ScannedText("OK")]


def test_reset_forgets_a_partial_code() -> None:
    framer = ScanFramer("cr")
    framer.feed(b"PARTIAL", 0.0)
    framer.reset()
    assert framer.deadline is None
    assert framer.feed(b"NEW\r", 0.01) == [ScannedText("NEW")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"terminator": "tab"}, "terminator"),
        ({"encoding": "klingon"}, "encoding"),
        ({"max_length": 0}, "max_length"),
        ({"idle_timeout_s": 0}, "idle_timeout_s"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScanFramer(**options)  # type: ignore[arg-type]


def test_encode_scan() -> None:
    assert encode_scan("AB", "crlf") == b"AB\r\n"
    assert encode_scan("办", "none", "gbk") == "办".encode("gbk")
    with pytest.raises(ValueError, match="terminator"):
        encode_scan("AB", "any")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concrete encoding"):
        encode_scan("AB", "cr", "auto")


def test_decode_payload_prefers_utf8() -> None:
    # Valid in both: UTF-8 wins under auto.
    assert decode_payload("é".encode(), "auto") == "é"
    assert decode_payload(b"\xff", "auto") is None


code_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    min_size=1,
    max_size=40,
)


@given(
    codes=st.lists(code_text, min_size=1, max_size=6),
    terminator=st.sampled_from(["cr", "lf", "crlf"]),
    encoding=st.sampled_from(["utf-8", "auto"]),
    cuts=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=30),
)
def test_any_chunking_yields_the_codes_sent(
    codes: list[str], terminator: Terminator, encoding: str, cuts: list[int]
) -> None:
    wire = b"".join(encode_scan(code, terminator, "utf-8") for code in codes)  # type: ignore[arg-type]
    framer = ScanFramer(terminator, encoding=encoding)
    results: list[ScannedText | RejectedFrame] = []
    offset, step = 0, 0
    while offset < len(wire):
        size = cuts[step % len(cuts)]
        results += framer.feed(wire[offset : offset + size], step * 0.001)
        offset += size
        step += 1
    assert results == [ScannedText(code) for code in codes]
