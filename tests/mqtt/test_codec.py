"""hub.mqtt.codec: every packet round-trips, and no bytes from the network make it misread or crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hub.mqtt import MalformedPacket, codec
from hub.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    Framer,
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Will,
)

# Text MQTT can carry: UTF-8 without U+0000 (surrogates cannot be encoded at all).
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
topics = texts.filter(lambda t: t != "" and "+" not in t and "#" not in t)
packet_ids = st.integers(1, 0xFFFF)
payloads = st.binary(max_size=300)

wills = st.builds(Will, topics, payloads, st.integers(0, 2), st.booleans())


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=40)) if username is not None else None
    clean = draw(st.booleans())
    client_id = draw(texts if clean else topics)
    return Connect(
        client_id, clean, draw(st.integers(0, 0xFFFF)), draw(st.none() | wills), username, password
    )


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 1))
    packet_id = draw(packet_ids) if qos else 0
    dup = draw(st.booleans()) if qos else False
    return Publish(draw(topics), draw(payloads), qos, draw(st.booleans()), dup, packet_id)


packets = st.one_of(
    connects(),
    st.builds(Connack, st.just(False), st.integers(0, 5)),
    st.builds(Connack, st.just(True), st.just(0)),
    publishes(),
    st.builds(Puback, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topics, st.integers(0, 2)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        Suback, packet_ids, st.lists(st.sampled_from((0, 1, 2, 0x80)), min_size=1, max_size=4).map(tuple)
    ),
    st.just(Pingreq()),
    st.just(Pingresp()),
    st.just(Disconnect()),
)


def _one(data: bytes) -> codec.Packet:
    frames = Framer().feed(data)
    assert len(frames) == 1
    return codec.decode(*frames[0])


@given(packets)
def test_every_packet_round_trips(packet: codec.Packet) -> None:
    assert _one(codec.encode(packet)) == packet


@given(st.lists(packets, min_size=1, max_size=5), st.data())
def test_a_stream_cut_anywhere_gives_the_same_packets(sent: list[codec.Packet], data: st.DataObject) -> None:
    stream = b"".join(codec.encode(p) for p in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    framer, got = Framer(), []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got += [codec.decode(*frame) for frame in framer.feed(stream[start:stop])]
    assert got == sent
    assert framer.buffered == 0


@given(packets)
def test_every_truncation_waits_for_the_rest(packet: codec.Packet) -> None:
    data = codec.encode(packet)
    for cut in range(len(data)):
        framer = Framer()
        assert framer.feed(data[:cut]) == [], f"a packet cut at {cut} of {len(data)} bytes was taken as whole"
        assert [codec.decode(*f) for f in framer.feed(data[cut:])] == [packet]


@given(packets)
def test_a_cut_body_is_malformed_or_a_shorter_valid_packet(packet: codec.Packet) -> None:
    """Decoding a body cut short never raises anything but MalformedPacket (never IndexError)."""
    header, body = Framer().feed(codec.encode(packet))[0]
    for cut in range(len(body)):
        with contextlib.suppress(MalformedPacket):
            codec.decode(header, body[:cut])


@settings(max_examples=500)
@given(st.binary(max_size=200))
@example(b"\x30\x02\x00\x05")  # a topic length beyond the packet
@example(b"\x32\x03\x00\x01a")  # QoS 1 with no room for the packet id
@example(b"\x20\x02\x02\x00")  # CONNACK with a reserved flag
@example(b"\x90\x03\x00\x01\x03")  # SUBACK with return code 3
def test_garbage_is_refused_with_malformed_packet_only(data: bytes) -> None:
    error: MalformedPacket | None = None
    try:
        for frame in Framer().feed(data):
            codec.decode(*frame)
    except MalformedPacket as exc:
        error = exc
    if error is not None:
        assert error.packet
        assert error.reason


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_remaining_length_round_trips_at_every_boundary(length: int) -> None:
    encoded = b"\x30" + codec.encode_remaining_length(length)
    assert len(encoded) - 1 == 1 + (length > 127) + (length > 16_383) + (length > 2_097_151)
    assert codec.frame_at(encoded, 0, max_size=codec.MAX_REMAINING_LENGTH) == (
        0x30,
        len(encoded),
        len(encoded) + length,
    )


def test_remaining_length_beyond_four_bytes_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        codec.encode_remaining_length(268_435_456)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "more than four bytes"),
        (b"\x30\x80\x00", "shortest form"),
        (b"\x30" + codec.encode_remaining_length(1025), "over the limit of 1024"),
    ],
)
def test_an_oversized_or_overlong_length_is_malformed_before_anything_is_buffered(
    data: bytes, reason: str
) -> None:
    framer = Framer(max_size=1024)
    with pytest.raises(MalformedPacket, match=reason):
        framer.feed(data)
    assert framer.buffered == 0


def test_a_large_packet_in_pieces_is_held_until_whole() -> None:
    packet = codec.encode_publish("a/b", b"x" * 300_000, qos=1, packet_id=9)
    pieces = [packet[start : start + 65536] for start in range(0, len(packet), 65536)]
    framer = Framer()
    for piece in pieces[:-1]:
        assert framer.feed(piece) == []
    assert framer.buffered == len(packet) - len(pieces[-1])
    (frame,) = framer.feed(pieces[-1])
    assert codec.decode(*frame) == Publish("a/b", b"x" * 300_000, 1, False, False, 9)
    assert framer.buffered == 0


@pytest.mark.parametrize(
    ("header", "body", "reason"),
    [
        (0x36, b"\x00\x01a\x00\x01", "QoS 3"),
        (0x38, b"\x00\x01a", "DUP set at QoS 0"),
        (0x32, b"\x00\x01a\x00\x00", "packet id 0"),
        (0x30, b"\x00\x02\xff\xfe", "not UTF-8"),
        (0x30, b"\x00\x03a/+", "wildcard"),
        (0x30, b"\x00\x00", "empty"),
        (0x30, b"\x00\x01\x00", "U\\+0000"),
        (0x41, b"\x00\x01", "reserved flags"),
        (0x40, b"\x00\x01\x00", "not 2"),
        (0x40, b"\x00\x00", "packet id 0"),
        (0x20, b"\x01\x05", "session present with a refusal"),
        (0xD0, b"\x00", "none allowed"),
        (0x80, b"\x00\x01\x00\x01a\x01", "flags not 0x2"),
        (0x82, b"\x00\x01\x00\x01a\x03", "QoS missing or not 0-2"),
        (0x50, b"\x00\x01", "not part of what this client speaks"),
        (0x10, b"\x00\x04MQTT\x03\x02\x00\x3c\x00\x00", "protocol level 3"),
        (0x10, b"\x00\x04MQTT\x04\x40\x00\x3c\x00\x01a\x00\x01p", "password without user name"),
        (0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x01aX", "bytes after the payload"),
    ],
)
def test_each_broken_rule_is_named(header: int, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        codec.decode(header, body)


@pytest.mark.parametrize(
    "call",
    [
        lambda: codec.encode_publish("a/#", b""),
        lambda: codec.encode_publish(b"", b""),
        lambda: codec.encode_publish("a", b"", qos=1, packet_id=0),
        lambda: codec.encode_publish("a", b"", qos=2, packet_id=1),
        lambda: codec.encode_publish("a", b"", qos=0, packet_id=1),
        lambda: codec.encode(Connect("", clean_session=False)),
        lambda: codec.encode(Connect("c", username=None, password=b"p")),
        lambda: codec.encode(Connect("c", keepalive=70_000)),
        lambda: codec.encode(Subscribe(1, ())),
    ],
)
def test_what_mqtt_cannot_carry_is_refused_when_encoding(call: object) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=r"."):
        call()


def test_parse_publish_gives_the_hot_path_its_fields() -> None:
    header, body = Framer().feed(
        codec.encode_publish("dev/a/rating", b"{}", qos=1, retain=True, packet_id=7)
    )[0]
    assert codec.parse_publish(header, body) == ("dev/a/rating", b"{}", 1, 7, True)
