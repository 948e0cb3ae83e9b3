"""HKP/1 codec: the CONTRACTS §3 examples byte for byte, round trips and every field boundary."""

from __future__ import annotations

import pytest

from drivers.keypad.codec import (
    MAX_PAYLOAD,
    PROMPT_TEXT_MAX,
    SESSION_MAX,
    SHOW_TEXT_MAX,
    Ack,
    Cancel,
    CodecError,
    Command,
    DropReason,
    Frame,
    FrameError,
    Key,
    Nak,
    NakCode,
    Payload,
    PayloadError,
    Ping,
    Pong,
    Prompt,
    Show,
    Status,
    StatusFlag,
    crc16,
    decode_frame,
    decode_payload,
    encode_frame,
    fit_text,
    make_frame,
    silence_for_baud,
)

EXAMPLES = [
    pytest.param("02 01 01 01 00 51 88 03", make_frame(1, 1, Ping()), Ping(), id="ping"),
    pytest.param(
        "02 01 01 06 02 01 01 5D 12 03",
        make_frame(1, 1, Ack(1, Command.PING)),
        Ack(1, 0x01),
        id="ack-of-ping",
    ),
    pytest.param(
        "02 01 02 10 10 00 00 00 2A 3C 30 37 E5 8F B7 E7 AA 97 E5 8F A3 7F D7 03",
        make_frame(1, 2, Prompt(42, 60, "07号窗口")),
        Prompt(42, 60, "07号窗口"),
        id="prompt",
    ),
    pytest.param(
        "02 01 07 90 06 00 00 00 2A 02 03 08 37 03",
        make_frame(1, 7, Key(42, 2, ("R1", "R2"))),
        Key(42, 2, ("R1", "R2")),
        id="key",
    ),
]


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x4B37


def test_command_and_code_values() -> None:
    assert {c.name: int(c) for c in Command} == {
        "PING": 0x01,
        "ACK": 0x06,
        "PROMPT": 0x10,
        "CANCEL": 0x11,
        "SHOW": 0x12,
        "NAK": 0x15,
        "PONG": 0x81,
        "KEY": 0x90,
        "STATUS": 0x91,
    }
    assert [int(c) for c in NakCode] == [1, 2, 3, 4]
    assert [int(f) for f in StatusFlag] == [1, 2, 4]


@pytest.mark.parametrize(("wire", "frame", "payload"), EXAMPLES)
def test_contract_examples(wire: str, frame: Frame, payload: object) -> None:
    raw = bytes.fromhex(wire)
    assert encode_frame(frame) == raw
    decoded = decode_frame(raw)
    assert decoded == frame
    assert decode_payload(decoded) == payload


ROUND_TRIPS = [
    Ping(),
    Pong("HKP-2.1.0"),
    Pong(""),
    Prompt(1, 0, ""),
    Prompt(SESSION_MAX, 255, "07号窗口 张三"),
    Cancel(1),
    Cancel(SESSION_MAX),
    Show(""),
    Show("请到 3 号窗口"),
    Key(0, 1),
    Key(SESSION_MAX, 5, ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8")),
    Key(7, 3, ("R8",)),
    Status(0),
    Status(0xFF),
    Ack(0, 0),
    Ack(255, 0x90),
    *(Nak(9, Command.KEY, code) for code in NakCode),
]


@pytest.mark.parametrize("payload", ROUND_TRIPS, ids=repr)
@pytest.mark.parametrize(("addr", "seq"), [(1, 0), (0xFE, 255), (0xFF, 128)])
def test_round_trip(payload: Payload, addr: int, seq: int) -> None:
    frame = make_frame(addr, seq, payload)
    assert frame.cmd == payload.COMMAND
    raw = encode_frame(frame)
    assert len(raw) == 8 + len(frame.payload)
    assert raw[0] == 0x02
    assert raw[-1] == 0x03
    assert raw[4] == len(frame.payload)
    decoded = decode_frame(raw)
    assert decoded == frame
    assert decode_payload(decoded) == payload


@pytest.mark.parametrize("code", list(NakCode))
def test_every_nak_code(code: NakCode) -> None:
    raw = encode_frame(make_frame(3, 4, Nak(4, Command.PROMPT, code)))
    nak = decode_payload(decode_frame(raw))
    assert isinstance(nak, Nak)
    assert nak == Nak(4, 0x10, code)
    assert isinstance(nak.code, NakCode)
    assert nak.reason == {1: "bad crc", 2: "unknown command", 3: "bad payload", 4: "busy"}[code]


def test_unknown_nak_code_is_kept() -> None:
    nak = Nak.decode(bytes((1, 0x10, 9)))
    assert nak.code == 9
    assert not isinstance(nak.code, NakCode)
    assert nak.reason == "error code 9"


def test_key_reasons_bitmask() -> None:
    assert Key(1, 2, ("R1", "R2")).encode()[-1] == 0b11
    assert Key(1, 2, ("R8",)).encode()[-1] == 0x80
    assert Key(1, 2, ("R2", "R1")).encode() == Key(1, 2, ("R1", "R2")).encode()
    assert Key.decode(bytes((0, 0, 0, 1, 1, 0b1010_0101))).reasons == ("R1", "R3", "R6", "R8")
    with pytest.raises(PayloadError, match="R9"):
        Key(1, 2, ("R9",)).encode()


def test_status_faults() -> None:
    assert Status(0).faults == ()
    assert Status(0b001).faults == ("display_fault",)
    assert Status(0b110).faults == ("key_fault", "tamper")
    assert Status(0b1000_0001).faults == ("display_fault", "bit7")


@pytest.mark.parametrize(
    "payload",
    [
        Prompt(0, 10, "x"),
        Prompt(SESSION_MAX + 1, 10, "x"),
        Prompt(1, -1, "x"),
        Prompt(1, 256, "x"),
        Prompt(1, 10, "x" * (PROMPT_TEXT_MAX + 1)),
        Prompt(1, 10, "窗" * (PROMPT_TEXT_MAX // 3 + 1)),
        Cancel(0),
        Cancel(SESSION_MAX + 1),
        Show("x" * (SHOW_TEXT_MAX + 1)),
        Key(-1, 3),
        Key(SESSION_MAX + 1, 3),
        Key(1, 0),
        Key(1, 6),
        Status(256),
        Status(-1),
        Ack(256, 1),
        Ack(1, -1),
        Nak(1, 1, 256),
        Pong("固件"),
        Pong("x" * (MAX_PAYLOAD + 1)),
    ],
    ids=repr,
)
def test_encode_rejects_out_of_range(payload: Payload) -> None:
    with pytest.raises(CodecError):
        payload.encode()


def test_text_limits_are_exact() -> None:
    assert len(Prompt(1, 1, "x" * PROMPT_TEXT_MAX).encode()) == MAX_PAYLOAD
    assert len(Show("x" * SHOW_TEXT_MAX).encode()) == MAX_PAYLOAD


@pytest.mark.parametrize(
    ("command", "payload"),
    [
        (Command.PING, b"\x00"),
        (Command.PROMPT, b"\x00\x00\x00\x01"),
        (Command.PROMPT, b"\x00\x00\x00\x00\x0a"),
        (Command.PROMPT, b"\x00\x00\x00\x01\x0a\xff"),
        (Command.CANCEL, b"\x00\x00\x01"),
        (Command.CANCEL, b"\x00\x00\x00\x00"),
        (Command.SHOW, b"\xe5\x8f"),
        (Command.KEY, b"\x00\x00\x00\x01\x03"),
        (Command.KEY, b"\x00\x00\x00\x01\x00\x00"),
        (Command.KEY, b"\x00\x00\x00\x01\x06\x00"),
        (Command.KEY, b"\x00\x00\x00\x01\x03\x00\x00"),
        (Command.STATUS, b""),
        (Command.STATUS, b"\x00\x00"),
        (Command.ACK, b"\x01"),
        (Command.NAK, b"\x01\x02"),
        (0x42, b""),
    ],
)
def test_decode_rejects_bad_payloads(command: int, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_payload(Frame(1, 1, command, payload))


def test_pong_tolerates_non_ascii() -> None:
    assert Pong.decode(b"v1\xff").firmware == "v1\ufffd"


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("ADDR", {"addr": 256}),
        ("ADDR", {"addr": -1}),
        ("SEQ", {"seq": 256}),
        ("CMD", {"cmd": 256}),
        ("payload", {"payload": bytes(MAX_PAYLOAD + 1)}),
    ],
)
def test_frame_field_bounds(field: str, kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"addr": 1, "seq": 1, "cmd": 1, "payload": b""}
    with pytest.raises(CodecError, match=field):
        Frame(**{**base, **kwargs})  # type: ignore[arg-type]


def test_frame_boundaries_encode() -> None:
    frame = Frame(0, 0, 0, bytes(MAX_PAYLOAD))
    assert decode_frame(encode_frame(frame)) == frame
    frame = Frame(255, 255, 255, b"")
    assert decode_frame(encode_frame(frame)) == frame
    assert Frame(1, 1, 0x42).command is None
    assert Frame(1, 1, 0x42).command_name == "0x42"
    assert Frame(1, 1, 0x90).command_name == "KEY"


def _with_len(length: int) -> bytes:
    body = bytes((1, 1, 1, length)) + bytes(length)
    return b"\x02" + body + crc16(body).to_bytes(2, "little") + b"\x03"


def test_decode_frame_errors() -> None:
    good = encode_frame(make_frame(1, 7, Key(42, 2, ("R1", "R2"))))
    assert decode_frame(_with_len(MAX_PAYLOAD)).payload == bytes(MAX_PAYLOAD)
    cases = {
        DropReason.BAD_LEN: _with_len(MAX_PAYLOAD + 1),
        DropReason.BAD_ETX: good[:-1] + b"\x04",
        DropReason.BAD_CRC: good[:-3] + bytes((good[-3] ^ 1,)) + good[-2:],
        DropReason.NOISE: b"\x01" + good[1:],
    }
    for reason, raw in cases.items():
        with pytest.raises(FrameError) as caught:
            decode_frame(raw)
        assert caught.value.reason is reason
    with pytest.raises(FrameError) as caught:
        decode_frame(good + b"\x00")
    assert caught.value.reason is DropReason.BAD_LEN


def test_fit_text_cuts_at_character_boundary() -> None:
    assert fit_text("07号窗口", 100) == "07号窗口"
    assert fit_text("07号窗口", 5) == "07号"
    assert fit_text("07号窗口", 4) == "07"
    assert len(fit_text("张" * 100, PROMPT_TEXT_MAX).encode()) <= PROMPT_TEXT_MAX


def test_silence_scales_with_baud() -> None:
    assert silence_for_baud(9600) == pytest.approx(0.050)
    assert silence_for_baud(4800) == pytest.approx(0.100)
    assert silence_for_baud(19200) == pytest.approx(0.025)
    assert silence_for_baud(115200) == pytest.approx(0.020)
    with pytest.raises(CodecError):
        silence_for_baud(0)
