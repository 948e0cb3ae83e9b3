"""FrameDecoder: resynchronisation, drop reasons, the line-silence rule, and property tests."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.keypad.codec import (
    MAX_PAYLOAD,
    DecodeItem,
    DroppedFrame,
    DropReason,
    Frame,
    FrameDecoder,
    Key,
    Ping,
    Prompt,
    Status,
    crc16,
    encode_frame,
    make_frame,
)

SILENCE = 0.05
KEY = make_frame(1, 7, Key(42, 2, ("R1", "R2")))
PROMPT = make_frame(1, 2, Prompt(42, 60, "07号窗口"))
STATUS = make_frame(2, 9, Status(0b101))


def frames(items: list[DecodeItem]) -> list[Frame]:
    return [item for item in items if isinstance(item, Frame)]


def drops(items: list[DecodeItem]) -> list[DropReason]:
    return [item.reason for item in items if isinstance(item, DroppedFrame)]


def corrupt_crc(frame: Frame) -> bytes:
    raw = encode_frame(frame)
    return raw[:-3] + bytes((raw[-3] ^ 0x5A,)) + raw[-2:]


def test_whole_frames_and_byte_by_byte() -> None:
    stream = encode_frame(KEY) + encode_frame(PROMPT) + encode_frame(STATUS)
    assert frames(FrameDecoder().feed(stream, 0.0)) == [KEY, PROMPT, STATUS]
    decoder = FrameDecoder()
    out: list[DecodeItem] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1], 0.0)
    assert out == [KEY, PROMPT, STATUS]
    assert decoder.buffered == 0
    assert decoder.deadline is None


def test_noise_before_a_frame_is_one_drop() -> None:
    out = FrameDecoder().feed(b"\x00\xff\x13\x37" + encode_frame(KEY), 0.0)
    assert out[0] == DroppedFrame(DropReason.NOISE, 4, b"\x00\xff\x13\x37")
    assert out[1:] == [KEY]


def test_noise_alone_is_reported_after_silence() -> None:
    decoder = FrameDecoder(SILENCE)
    assert decoder.feed(b"\x00\x01", 1.0) == []
    assert decoder.feed(b"\x04", 1.01) == []
    assert decoder.deadline == 1.01 + SILENCE
    assert decoder.expire(1.02) == []
    assert decoder.expire(1.07) == [DroppedFrame(DropReason.NOISE, 3, b"\x00\x01\x04")]
    assert decoder.buffered == 0


def test_bad_crc_is_dropped_and_search_resumes_after_its_stx() -> None:
    out = FrameDecoder().feed(corrupt_crc(KEY) + encode_frame(PROMPT), 0.0)
    # The KEY's level byte is 0x02 too: it is tried as an STX (and fails) before PROMPT is found.
    assert drops(out) == [DropReason.BAD_CRC, DropReason.BAD_ETX]
    assert frames(out) == [PROMPT]
    dropped = out[0]
    assert isinstance(dropped, DroppedFrame)
    assert dropped.addr == 1
    assert dropped.size == len(encode_frame(KEY))


def test_frame_hidden_inside_a_failed_frame_is_found() -> None:
    # A stray STX whose LEN swallows the real frame: the check fails, the real frame is recovered.
    stray = bytes((0x02, 0x01, 0x01, 0x01, 0x06))
    out = FrameDecoder().feed(stray + encode_frame(KEY), 0.0)
    assert frames(out) == [KEY]
    assert drops(out)
    assert set(drops(out)) <= {DropReason.BAD_CRC, DropReason.BAD_ETX}


def test_bad_len_and_bad_etx() -> None:
    body = bytes((1, 1, 1, MAX_PAYLOAD + 1))
    out = FrameDecoder().feed(b"\x02" + body + encode_frame(KEY), 0.0)
    assert drops(out)[0] is DropReason.BAD_LEN
    assert frames(out) == [KEY]
    raw = encode_frame(STATUS)
    out = FrameDecoder().feed(raw[:-1] + b"\x7f" + encode_frame(KEY), 0.0)
    assert drops(out)[0] is DropReason.BAD_ETX
    assert frames(out) == [KEY]


def test_max_len_frame_is_accepted() -> None:
    body = bytes((1, 1, 0x12, MAX_PAYLOAD)) + b"x" * MAX_PAYLOAD
    raw = b"\x02" + body + crc16(body).to_bytes(2, "little") + b"\x03"
    assert FrameDecoder().feed(raw, 0.0) == [Frame(1, 1, 0x12, b"x" * MAX_PAYLOAD)]


def test_silence_rule_releases_frame_behind_stray_stx() -> None:
    decoder = FrameDecoder(SILENCE)
    stray = bytes((0x02, 0x01, 0x01, 0x01, 0xF0))  # LEN 240: would wait for 248 bytes
    assert decoder.feed(stray, 10.0) == []
    assert decoder.feed(encode_frame(KEY), 10.001) == []  # held behind the stray STX
    assert decoder.expire(10.001 + SILENCE / 2) == []
    out = decoder.expire(10.001 + SILENCE)
    assert drops(out)[0] is DropReason.TIMEOUT
    assert frames(out) == [KEY]
    assert decoder.buffered == 0
    assert decoder.deadline is None


def test_stray_stx_then_silence_then_frame() -> None:
    decoder = FrameDecoder(SILENCE)
    assert decoder.feed(bytes((0x02, 0x01, 0x01, 0x01, 0xF0)), 5.0) == []
    out = decoder.feed(encode_frame(KEY), 5.0 + SILENCE * 2)
    assert out[0] == DroppedFrame(DropReason.TIMEOUT, 5, bytes((2, 1, 1, 1, 0xF0)), 1)
    assert out[1:] == [KEY]


def test_silence_rule_applies_on_next_feed_too() -> None:
    decoder = FrameDecoder(SILENCE)
    raw = encode_frame(PROMPT)
    assert decoder.feed(raw[:10], 0.0) == []
    out = decoder.feed(raw[10:] + encode_frame(KEY), 0.2)  # the rest came after a gap: noise
    assert drops(out)[0] is DropReason.TIMEOUT
    assert frames(out) == [KEY]


def test_no_silence_while_bytes_keep_coming() -> None:
    decoder = FrameDecoder(SILENCE)
    raw = encode_frame(PROMPT)
    out: list[DecodeItem] = []
    for i, byte in enumerate(raw):
        out += decoder.feed(bytes((byte,)), i * SILENCE * 0.9)
    assert out == [PROMPT]


def test_injected_clock() -> None:
    now = [100.0]
    decoder = FrameDecoder(SILENCE, clock=lambda: now[0])
    assert decoder.feed(encode_frame(KEY)[:6]) == []
    now[0] += SILENCE
    assert drops(decoder.expire()) == [DropReason.TIMEOUT]


def test_reset_forgets_partial_input() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(KEY)[:6], 0.0)
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.feed(encode_frame(KEY), 0.0) == [KEY]


# -- properties ------------------------------------------------------------------------------

frame_st = st.builds(
    Frame,
    addr=st.integers(0, 255),
    seq=st.integers(0, 255),
    cmd=st.integers(0, 255),
    payload=st.binary(max_size=MAX_PAYLOAD),
)
typed_frame_st = st.one_of(
    st.builds(lambda a, s: make_frame(a, s, Ping()), st.integers(1, 254), st.integers(0, 255)),
    st.builds(
        lambda a, s, sess, lvl: make_frame(a, s, Key(sess, lvl, ("R1",))),
        st.integers(1, 254),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.integers(1, 5),
    ),
    frame_st,
)
noise_st = st.binary(max_size=40) | st.lists(
    st.sampled_from([0x02, 0x03, 0x00, 0xF0, 0x01]), max_size=12
).map(bytes)


def feed_all(decoder: FrameDecoder, stream: bytes, cuts: list[int], now: float) -> list[DecodeItem]:
    out: list[DecodeItem] = []
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        out += decoder.feed(stream[start:end], now)
    return out


def is_subsequence(wanted: list[Frame], got: list[Frame]) -> bool:
    it = iter(got)
    return all(any(frame == g for g in it) for frame in wanted)


def assert_frames_were_on_the_wire(out: list[DecodeItem], stream: bytes) -> None:
    for item in out:
        if isinstance(item, Frame):
            assert encode_frame(item) in stream  # the frame and its CRC were received as such


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(
    stream=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=20),
    gaps=st.lists(st.floats(0, 0.2), max_size=20),
)
def test_any_bytes_never_raise_nor_yield_bad_frames(
    stream: bytes, cuts: list[int], gaps: list[float]
) -> None:
    decoder = FrameDecoder(SILENCE)
    out: list[DecodeItem] = []
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    now = 0.0
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        now += gaps[i] if i < len(gaps) else 0.0
        out += decoder.feed(stream[start:end], now)
        out += decoder.expire(now + 0.01)
    out += decoder.expire(now + 1.0)
    assert decoder.buffered == 0
    assert_frames_were_on_the_wire(out, stream)
    dropped = sum(item.size for item in out if isinstance(item, DroppedFrame))
    assert dropped >= len(stream) - sum(len(encode_frame(f)) for f in frames(out))


@PROPERTY
@given(
    parts=st.lists(st.tuples(noise_st, typed_frame_st), min_size=1, max_size=6),
    tail=noise_st,
    cuts=st.lists(st.integers(0, 2000), max_size=30),
    byte_by_byte=st.booleans(),
)
def test_every_frame_in_noise_is_recovered(
    parts: list[tuple[bytes, Frame]], tail: bytes, cuts: list[int], byte_by_byte: bool
) -> None:
    stream = b"".join(noise + encode_frame(frame) for noise, frame in parts) + tail
    wanted = [frame for _, frame in parts]
    decoder = FrameDecoder(SILENCE)
    if byte_by_byte:
        out = feed_all(decoder, stream, list(range(len(stream))), 0.0)
    else:
        out = feed_all(decoder, stream, cuts, 0.0)
    out += decoder.expire(1.0)
    assert is_subsequence(wanted, frames(out))
    assert_frames_were_on_the_wire(out, stream)


damaged_st = st.one_of(
    st.tuples(st.just("truncated"), typed_frame_st, st.integers(1, 300)),
    st.tuples(st.just("flipped"), typed_frame_st, st.integers(0, 8 * 260)),
    st.tuples(st.just("good"), typed_frame_st, st.just(0)),
)


@PROPERTY
@given(segments=st.lists(damaged_st, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 3000)))
def test_truncated_and_bit_flipped_frames_do_not_hide_good_ones(
    segments: list[tuple[str, Frame, int]], cuts: list[int]
) -> None:
    chunks: list[bytes] = []
    wanted: list[Frame] = []
    for kind, frame, n in segments:
        raw = encode_frame(frame)
        if kind == "truncated":
            chunks.append(raw[: n % len(raw)])
        elif kind == "flipped":
            bit = n % (8 * len(raw))
            flipped = bytearray(raw)
            flipped[bit // 8] ^= 1 << (bit % 8)
            chunks.append(bytes(flipped))
        else:
            chunks.append(raw)
            wanted.append(frame)
    stream = b"".join(chunks)
    decoder = FrameDecoder(SILENCE)
    out = feed_all(decoder, stream, cuts, 0.0) + decoder.expire(1.0)
    assert is_subsequence(wanted, frames(out))
    assert_frames_were_on_the_wire(out, stream)
