"""The SAM wire format: §4's example frames byte for byte, every SW3, and the decoder's resync."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.idcard.codec import (
    MAX_LEN,
    PREAMBLE,
    READ_BASIC_FRAME_LEN,
    Command,
    DropReason,
    Frame,
    FrameDecoder,
    ProtocolError,
    Status,
    UnknownCommandError,
    checksum,
    decode_card_data,
    decode_command,
    decode_response,
    encode_card_data_response,
    encode_command,
    encode_frame,
    encode_response,
)

FIND_CARD = bytes.fromhex("AA AA AA 96 69 00 03 20 01 22")
CARD_PRESENT = bytes.fromhex("AA AA AA 96 69 00 08 00 00 9F 00 00 00 00 97")
NO_CARD = bytes.fromhex("AA AA AA 96 69 00 04 00 00 80 84")

# Every SW3 of §4 with its meaning; the enum must hold exactly these.
SW3_CODES = {
    0x90, 0x9F, 0x80, 0x81, 0x41, 0x10, 0x11, 0x21, 0x23, 0x24,
    0x31, 0x32, 0x33, 0x40, 0x47, 0x60, 0x66, 0x91,
}  # fmt: skip


def decode_all(data: bytes) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    return decoder.feed(data), decoder


# -- §4 examples ------------------------------------------------------------------------------


def test_find_card_command_bytes() -> None:
    assert encode_command(Command.FIND_CARD) == FIND_CARD


def test_card_present_answer() -> None:
    assert encode_response(Status.CARD_FOUND, bytes(4)) == CARD_PRESENT
    frames, decoder = decode_all(CARD_PRESENT)
    response = decode_response(frames[0])
    assert (response.sw1, response.sw2, response.status) == (0, 0, Status.CARD_FOUND)
    assert response.data == bytes(4)
    assert response.ok
    assert not decoder.drops


def test_no_card_answer() -> None:
    assert encode_response(Status.FIND_FAILED) == NO_CARD
    frames, _ = decode_all(NO_CARD)
    response = decode_response(frames[0])
    assert response.status is Status.FIND_FAILED
    assert not response.ok
    assert "no card" in response.describe()


@pytest.mark.parametrize(
    ("command", "pair"),
    [
        (Command.RESET_SAM, "10 FF"),
        (Command.SAM_STATUS, "11 FF"),
        (Command.READ_SAM_ID, "12 FF"),
        (Command.FIND_CARD, "20 01"),
        (Command.SELECT_CARD, "20 02"),
        (Command.READ_BASIC, "30 01"),
        (Command.READ_WITH_FINGERPRINT, "30 10"),
        (Command.READ_EXTRA_ADDRESS, "30 03"),
    ],
)
def test_every_command_encodes_and_decodes(command: Command, pair: str) -> None:
    cmd, para = bytes.fromhex(pair)
    expected = PREAMBLE + bytes([0, 3, cmd, para, 3 ^ cmd ^ para])
    assert encode_command(command) == expected
    frames, _ = decode_all(expected)
    assert decode_command(frames[0]) is command


def test_unknown_command() -> None:
    frames, _ = decode_all(encode_frame(b"\x20\x07"))
    with pytest.raises(UnknownCommandError) as caught:
        decode_command(frames[0])
    assert (caught.value.cmd, caught.value.para) == (0x20, 0x07)
    with pytest.raises(ProtocolError):
        decode_command(Frame(b"\x20"))


def test_read_basic_answer_is_1295_bytes() -> None:
    text = bytes(range(256))
    photo = bytes([0x5A]) * 1024
    wire = encode_card_data_response(text, photo)
    assert len(wire) == READ_BASIC_FRAME_LEN == 1295
    assert wire[5:7] == (1288).to_bytes(2, "big")
    assert wire[7:14] == bytes.fromhex("00 00 90 01 00 04 00")
    frames, _ = decode_all(wire)
    response = decode_response(frames[0])
    assert response.status is Status.SUCCESS
    card = decode_card_data(response.data)
    assert card.text == text
    assert card.photo_len == 1024
    assert "text" not in repr(card).replace("text=", "")
    assert repr(frames[0]) == "Frame()"


def test_read_with_fingerprint_answer() -> None:
    wire = encode_card_data_response(bytes(256), bytes(1024), bytes(1024))
    frames, decoder = decode_all(wire)
    assert not decoder.drops
    card = decode_card_data(decode_response(frames[0]).data, with_fingerprint=True)
    assert (card.photo_len, card.fingerprint_len) == (1024, 1024)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01",
        (255).to_bytes(2, "big") + (1024).to_bytes(2, "big") + bytes(1279),
        (256).to_bytes(2, "big") + (1024).to_bytes(2, "big") + bytes(1279),
    ],
    ids=["short", "wrong-text-length", "lengths-do-not-add-up"],
)
def test_card_data_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_card_data(data)


# -- every SW3 --------------------------------------------------------------------------------


def test_status_enum_is_exactly_the_contract() -> None:
    assert {status.value for status in Status} == SW3_CODES
    descriptions = [status.description for status in Status]
    assert len(set(descriptions)) == len(descriptions)


@pytest.mark.parametrize("status", list(Status), ids=lambda status: status.name)
def test_every_sw3_round_trips_with_a_description(status: Status) -> None:
    frames, decoder = decode_all(encode_response(status, b"\x01\x02"))
    response = decode_response(frames[0])
    assert response.status is status
    assert response.data == b"\x01\x02"
    assert status.description
    assert f"{status.value:02X}" in response.describe()
    assert not decoder.drops


def test_undefined_sw3() -> None:
    response = decode_response(Frame(b"\x00\x00\x55"))
    assert response.status is None
    assert Status.from_code(0x55) is None
    assert "undefined" in response.describe()
    with pytest.raises(ProtocolError):
        decode_response(Frame(b"\x00\x00"))


# -- decoder: bad frames ----------------------------------------------------------------------


def test_wrong_checksum_dropped_then_next_frame_found() -> None:
    bad = NO_CARD[:-1] + b"\x00"
    reasons: list[DropReason] = []
    decoder = FrameDecoder(reasons.append)
    frames = decoder.feed(bad + CARD_PRESENT)
    assert [decode_response(f).status for f in frames] == [Status.CARD_FOUND]
    assert reasons == [DropReason.BAD_CHECKSUM]
    assert decoder.drops[DropReason.BAD_CHECKSUM] == 1


@pytest.mark.parametrize("length", [0, 1, 2])
def test_wrong_length_dropped(length: int) -> None:
    frames, decoder = decode_all(PREAMBLE + length.to_bytes(2, "big") + b"\x00\x00" + NO_CARD)
    assert len(frames) == 1
    assert decoder.drops[DropReason.BAD_LENGTH] == 1


def test_length_that_disagrees_with_the_bytes_is_caught_by_checksum() -> None:
    lying = PREAMBLE + b"\x00\x05" + NO_CARD[7:]  # says 5, carries 4
    frames, decoder = decode_all(lying + b"\x00" + CARD_PRESENT)
    assert [decode_response(f).status for f in frames] == [Status.CARD_FOUND]
    assert decoder.drops[DropReason.BAD_CHECKSUM] == 1


def test_oversized_dropped_at_once() -> None:
    frames, decoder = decode_all(PREAMBLE + (MAX_LEN + 1).to_bytes(2, "big") + CARD_PRESENT)
    assert len(frames) == 1
    assert decoder.drops[DropReason.OVERSIZED] == 1
    assert decoder.pending == 0


def test_truncated_frame_followed_by_a_new_one() -> None:
    frames, decoder = decode_all(CARD_PRESENT[:9] + NO_CARD)
    assert [decode_response(f).status for f in frames] == [Status.FIND_FAILED]
    assert decoder.drops[DropReason.TRUNCATED] == 1


def test_truncated_frame_expired_after_silence() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(CARD_PRESENT[:9]) == []
    assert decoder.pending == 9
    assert decoder.expire() == []
    assert decoder.drops[DropReason.TRUNCATED] == 1
    assert decoder.feed(NO_CARD)[0].payload == b"\x00\x00\x80"


def test_false_start_releases_the_frame_behind_it_on_expire() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(PREAMBLE + b"\x07\xff" + NO_CARD) == []
    frames = decoder.expire()
    assert [decode_response(f).status for f in frames] == [Status.FIND_FAILED]
    assert decoder.drops[DropReason.TRUNCATED] == 1


def test_noise_prefixed_frame() -> None:
    frames, decoder = decode_all(b"\x00\x13\xaa\xaa\x96\x69\xfe" + CARD_PRESENT)
    assert len(frames) == 1
    assert decoder.drops == {DropReason.NOISE: 1}


def test_preamble_split_across_reads_and_byte_by_byte() -> None:
    decoder = FrameDecoder()
    stream = b"\x01\x02" + CARD_PRESENT + NO_CARD
    frames = [frame for byte in stream for frame in decoder.feed(bytes([byte]))]
    assert [decode_response(f).status for f in frames] == [Status.CARD_FOUND, Status.FIND_FAILED]
    assert decoder.drops == {DropReason.NOISE: 1}


def test_preamble_inside_a_payload_does_not_split_the_frame() -> None:
    payload = b"\x00\x00\x90" + PREAMBLE + b"\x00\x03"
    frames, decoder = decode_all(encode_frame(payload))
    assert [f.payload for f in frames] == [payload]
    assert not decoder.drops


def test_encode_frame_checks_size_and_checksum_definition() -> None:
    with pytest.raises(ValueError, match="too long"):
        encode_frame(bytes(MAX_LEN))
    assert checksum(b"\x00\x03\x20\x01") == 0x22


# -- properties -------------------------------------------------------------------------------

payloads = st.binary(min_size=2, max_size=300)


def _without_preamble(data: bytes) -> bytes:
    return data.replace(PREAMBLE, PREAMBLE[:4])


noise = st.binary(max_size=80).map(_without_preamble)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20)


def _feed_in_chunks(decoder: FrameDecoder, data: bytes, sizes: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        frames += decoder.feed(data[position : position + size])
        position += size
        index += 1
    return frames


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), sizes=chunk_sizes)
def test_any_bytes_never_raise_and_yield_only_checked_frames(data: bytes, sizes: list[int]) -> None:
    decoder = FrameDecoder()
    frames = _feed_in_chunks(decoder, data, sizes)
    for _ in range(len(data) + 1):
        if decoder.pending == 0:
            break
        frames += decoder.expire()
    assert decoder.pending == 0
    for frame in frames:
        assert encode_frame(frame.payload) in data


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.tuples(noise, payloads), max_size=6),
    tail=noise,
    sizes=chunk_sizes,
)
def test_valid_frames_recovered_from_noise(
    parts: list[tuple[bytes, bytes]], tail: bytes, sizes: list[int]
) -> None:
    stream = b"".join(junk + encode_frame(payload) for junk, payload in parts) + tail
    decoder = FrameDecoder()
    frames = _feed_in_chunks(decoder, stream, sizes)
    assert [frame.payload for frame in frames] == [payload for _, payload in parts]
    assert set(decoder.drops) <= {DropReason.NOISE}


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.tuples(st.binary(max_size=40), payloads), min_size=1, max_size=4))
def test_frames_after_arbitrary_garbage_are_recovered_once_it_expires(
    parts: list[tuple[bytes, bytes]],
) -> None:
    """Garbage may hold false preambles: once expired, every frame is back.

    The one exception is garbage that itself forms a valid frame (a phantom, checksum and all),
    which may swallow the start of a real one; phantoms are still genuine frames of the stream.
    """
    stream = b"".join(junk + encode_frame(payload) for junk, payload in parts)
    decoder = FrameDecoder()
    frames = decoder.feed(stream)
    for _ in range(len(stream) + 1):
        if decoder.pending == 0:
            break
        frames += decoder.expire()
    expected = [payload for _, payload in parts]
    recovered = [frame.payload for frame in frames]
    phantoms = [payload for payload in recovered if payload not in expected]
    if not phantoms:
        assert recovered == expected
    for payload in recovered:
        assert encode_frame(payload) in stream
