"""MQTT 3.1.1 packets to and from bytes, with no I/O (sans-I/O): the one place MQTT framing is written.

What the hub's client sends and receives (CONNECT, CONNACK, PUBLISH at QoS 0/1, PUBACK, SUBSCRIBE,
SUBACK, PINGREQ, PINGRESP, DISCONNECT) as typed packets, plus a `Framer` that splits a byte stream
into packets. Decoding is strict: every length is checked against what is there, every reserved bit
and flag against the standard, and anything else raises `MalformedPacket` (never IndexError, never a
silent misread), because these bytes come from the network. The client's hot path uses the same
functions as everything else (`Framer.feed`, `parse_publish`, `encode_publish`, `encode_puback`).
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.mqtt.errors import MalformedPacket

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}
MAX_REMAINING_LENGTH = 268_435_455  # four length bytes (§2.2.3)
# What the hub accepts by default: Mosquitto's message_size_limit on the node is 2 MiB of payload,
# plus a topic of up to 64 KiB; anything larger is refused before it is buffered.
DEFAULT_MAX_PACKET_SIZE = 4 * 1024 * 1024
PROTOCOL_NAME = b"\x00\x04MQTT"
PROTOCOL_LEVEL = 4  # MQTT 3.1.1
SUBACK_FAILURE = 0x80

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"
_SHORT_LENGTHS = tuple(bytes((n,)) for n in range(128))


# -- packets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client that goes away without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (§3.1)."""

    client_id: str
    clean_session: bool = True
    keepalive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (§3.2): `return_code` 0 accepts, 1-5 refuse."""

    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (§3.3); `packet_id` is 0 at QoS 0."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK (§3.4)."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (§3.8): (topic filter, requested QoS) pairs."""

    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (§3.9): one code per filter, the granted QoS or 0x80 for a refusal."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (§3.12)."""


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (§3.13)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (§3.14)."""


Packet = Connect | Connack | Publish | Puback | Subscribe | Suback | Pingreq | Pingresp | Disconnect


# -- framing ------------------------------------------------------------------------------------


def encode_remaining_length(length: int) -> bytes:
    """The variable-length integer of the fixed header (§2.2.3); ValueError beyond four bytes."""
    if length < 128:
        if length < 0:
            raise ValueError(f"remaining length {length} is negative")
        return _SHORT_LENGTHS[length]
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {length} exceeds MQTT's {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def frame_at(buffer: bytes, pos: int, max_size: int = DEFAULT_MAX_PACKET_SIZE) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at `pos`; None while its length is incomplete.

    The body may end beyond the buffer (the rest has not arrived). MalformedPacket for a length of
    more than four bytes (§2.2.3), a non-minimal one (a trailing zero continuation), or a packet
    over `max_size`.
    """
    end = len(buffer)
    length, shift, index = 0, 0, pos + 1
    while index < end:
        byte = buffer[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and shift:
                raise MalformedPacket("packet", "remaining length not in its shortest form")
            if length > max_size:
                raise MalformedPacket("packet", f"remaining length {length} over the limit of {max_size}")
            return buffer[pos], index, index + length
        shift += 7
        if shift >= 28:
            raise MalformedPacket("packet", "remaining length of more than four bytes")
    return None


class Framer:
    """Splits a byte stream into packets: feed it what arrives, get back every whole (first byte, body).

    A packet that arrives in pieces is kept as pieces and joined once whole, so a megabyte packet read
    in 64 KiB chunks is copied once, not once per chunk. After a MalformedPacket the stream is lost.
    """

    __slots__ = ("_chunks", "_need", "_size", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.max_size = max_size
        self._chunks: list[bytes] = []
        self._size = 0
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held of a packet not yet whole."""
        return self._size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every packet completed by `data`, in order; MalformedPacket if the stream is not MQTT."""
        if self._chunks:
            self._chunks.append(data)
            self._size += len(data)
            if self._size < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks, self._size = [], 0
        frames: list[tuple[int, bytes]] = []
        pos, end = 0, len(data)
        max_size = self.max_size
        while pos < end:
            frame = frame_at(data, pos, max_size)
            if frame is None:  # not even the length is all here
                self._keep(data[pos:], end - pos + 1)
                break
            header, start, stop = frame
            if stop > end:
                self._keep(data[pos:], stop - pos)
                break
            frames.append((header, data[start:stop]))
            pos = stop
        return frames

    def _keep(self, start: bytes, need: int) -> None:
        self._chunks, self._size, self._need = [start], len(start), need


# -- encoding -----------------------------------------------------------------------------------


def _string(text: str, field: str) -> bytes:
    data = text.encode()
    if len(data) > 0xFFFF:
        raise ValueError(f"{field}: {len(data)} bytes, over MQTT's 65,535")
    if "\x00" in text:
        raise ValueError(f"{field}: contains U+0000, which MQTT forbids")
    return len(data).to_bytes(2, "big") + data


def _binary(data: bytes, field: str) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{field}: {len(data)} bytes, over MQTT's 65,535")
    return len(data).to_bytes(2, "big") + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _check_topic(topic: str) -> None:
    if not topic or "+" in topic or "#" in topic:
        raise ValueError(f"topic {topic!r}: a topic name is not empty and has no wildcard")


def _check_packet_id(packet_id: int) -> None:
    if not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"packet id {packet_id} not in 1..65535")


def encode_publish(
    topic: str | bytes,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    packet_id: int = 0,
    dup: bool = False,
) -> bytes:
    """A PUBLISH at QoS 0 or 1 (the hub uses no QoS 2). A `bytes` topic is taken as valid UTF-8."""
    if type(topic) is bytes:
        if not topic or b"+" in topic or b"#" in topic:
            raise ValueError(f"topic {topic!r}: a topic name is not empty and has no wildcard")
    else:
        assert isinstance(topic, str)
        _check_topic(topic)
        topic = topic.encode()
    size = len(topic)
    if size > 0xFFFF:
        raise ValueError(f"topic: {size} bytes, over MQTT's 65,535")
    if qos == 1:
        if not 0 < packet_id <= 0xFFFF:
            raise ValueError(f"packet id {packet_id} not in 1..65535")
        length = 4 + size + len(payload)
        first = 0x32 | retain | (dup << 3)
        tail = bytes((packet_id >> 8, packet_id & 0xFF))
    elif qos == 0 and not packet_id and not dup:
        length = 2 + size + len(payload)
        first = 0x30 | retain
        tail = b""
    else:
        raise ValueError("PUBLISH: QoS 0 or 1; a QoS-0 one has no packet id and no DUP flag")
    # The fixed header with the topic's length in one bytes(): one or two length bytes cover 16 KiB.
    if length < 128:
        head = bytes((first, length, size >> 8, size & 0xFF))
    elif length < 16384:
        head = bytes((first, length & 0x7F | 0x80, length >> 7, size >> 8, size & 0xFF))
    else:
        head = bytes((first,)) + encode_remaining_length(length) + bytes((size >> 8, size & 0xFF))
    return b"".join((head, topic, tail, payload))


def encode_puback(packet_id: int) -> bytes:
    """PUBACK for `packet_id`."""
    return bytes((0x40, 2, packet_id >> 8, packet_id & 0xFF))


def encode(packet: Packet) -> bytes:
    """Any packet as bytes; ValueError for a field MQTT cannot carry."""
    if isinstance(packet, Publish):
        return encode_publish(
            packet.topic,
            packet.payload,
            qos=packet.qos,
            retain=packet.retain,
            packet_id=packet.packet_id,
            dup=packet.dup,
        )
    if isinstance(packet, Puback):
        _check_packet_id(packet.packet_id)
        return encode_puback(packet.packet_id)
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    if isinstance(packet, Connack):
        if not 0 <= packet.return_code <= 0xFF:
            raise ValueError(f"CONNACK return code {packet.return_code} not a byte")
        return bytes((0x20, 2, int(packet.session_present), packet.return_code))
    if isinstance(packet, Subscribe):
        _check_packet_id(packet.packet_id)
        if not packet.topics:
            raise ValueError("SUBSCRIBE: at least one topic filter")
        body = [packet.packet_id.to_bytes(2, "big")]
        for topic_filter, qos in packet.topics:
            if not topic_filter or qos not in (0, 1, 2):
                raise ValueError(f"SUBSCRIBE: filter {topic_filter!r} at QoS {qos}")
            body += [_string(topic_filter, "topic filter"), bytes((qos,))]
        return _packet(0x82, b"".join(body))
    if isinstance(packet, Suback):
        _check_packet_id(packet.packet_id)
        if not packet.return_codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in packet.return_codes):
            raise ValueError(f"SUBACK: return codes {packet.return_codes}")
        return _packet(0x90, packet.packet_id.to_bytes(2, "big") + bytes(packet.return_codes))
    if isinstance(packet, Pingreq):
        return PINGREQ_BYTES
    if isinstance(packet, Pingresp):
        return PINGRESP_BYTES
    return DISCONNECT_BYTES


def _encode_connect(packet: Connect) -> bytes:
    if not 0 <= packet.keepalive <= 0xFFFF:
        raise ValueError(f"keepalive {packet.keepalive} not in 0..65535 s")
    if packet.password is not None and packet.username is None:
        raise ValueError("MQTT 3.1.1 sends a password only with a user name")
    if not packet.client_id and not packet.clean_session:
        raise ValueError("an empty client id needs a clean session (§3.1.3.1)")
    flags = 0x02 if packet.clean_session else 0
    payload = [_string(packet.client_id, "client id")]
    will = packet.will
    if will is not None:
        _check_topic(will.topic)
        if will.qos not in (0, 1, 2):
            raise ValueError(f"will QoS {will.qos}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += [_string(will.topic, "will topic"), _binary(will.payload, "will payload")]
    if packet.username is not None:
        flags |= 0x80
        payload.append(_string(packet.username, "user name"))
    if packet.password is not None:
        flags |= 0x40
        payload.append(_binary(packet.password, "password"))
    head = PROTOCOL_NAME + bytes((PROTOCOL_LEVEL, flags)) + packet.keepalive.to_bytes(2, "big")
    return _packet(0x10, head + b"".join(payload))


# -- decoding -----------------------------------------------------------------------------------


def _read_u16(body: bytes, pos: int, packet: str, field: str) -> int:
    if pos + 2 > len(body):
        raise MalformedPacket(packet, f"{field}: cut short")
    return (body[pos] << 8) | body[pos + 1]


def _read_binary(body: bytes, pos: int, packet: str, field: str) -> tuple[bytes, int]:
    size = _read_u16(body, pos, packet, field)
    stop = pos + 2 + size
    if stop > len(body):
        raise MalformedPacket(packet, f"{field}: {size} bytes announced, {len(body) - pos - 2} there")
    return body[pos + 2 : stop], stop


def _read_string(body: bytes, pos: int, packet: str, field: str) -> tuple[str, int]:
    raw, stop = _read_binary(body, pos, packet, field)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise MalformedPacket(packet, f"{field}: not UTF-8") from None
    if "\x00" in text:
        raise MalformedPacket(packet, f"{field}: contains U+0000")
    return text, stop


def parse_publish(header: int, body: bytes) -> tuple[str, bytes, int, int, bool]:
    """(topic, payload, qos, packet id, retain) of a PUBLISH; the client's hot path, no object built."""
    qos = (header >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH", "QoS 3")
    if not qos and header & 0x08:
        raise MalformedPacket("PUBLISH", "DUP set at QoS 0")
    size = len(body)
    if size < 2:
        raise MalformedPacket("PUBLISH", "topic: cut short")
    topic_end = 2 + ((body[0] << 8) | body[1])
    start = topic_end + 2 if qos else topic_end
    if start > size:
        raise MalformedPacket("PUBLISH", "topic or packet id beyond the packet")
    try:
        topic = body[2:topic_end].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH", "topic: not UTF-8") from None
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise MalformedPacket("PUBLISH", "topic: empty, a wildcard or U+0000")
    packet_id = 0
    if qos:
        packet_id = (body[topic_end] << 8) | body[topic_end + 1]
        if not packet_id:
            raise MalformedPacket("PUBLISH", "packet id 0")
    return topic, body[start:], qos, packet_id, bool(header & 1)


def _no_flags(header: int, name: str) -> None:
    if header & 0x0F:
        raise MalformedPacket(name, f"reserved flags {header & 0x0F:#x} set")


def _nonzero_id(body: bytes, name: str) -> int:
    packet_id = _read_u16(body, 0, name, "packet id")
    if not packet_id:
        raise MalformedPacket(name, "packet id 0")
    return packet_id


def decode(header: int, body: bytes) -> Packet:
    """The typed packet of a (first byte, body) from `Framer.feed`; MalformedPacket if invalid."""
    kind = header >> 4
    name = NAMES.get(kind, f"packet type {kind}")
    if kind == PUBLISH:
        topic, payload, qos, packet_id, retain = parse_publish(header, body)
        return Publish(topic, payload, qos, retain, bool(header & 0x08), packet_id)
    if kind == PUBACK:
        _no_flags(header, name)
        if len(body) != 2:
            raise MalformedPacket(name, f"{len(body)} bytes, not 2")
        return Puback(_nonzero_id(body, name))
    if kind == CONNACK:
        _no_flags(header, name)
        if len(body) != 2:
            raise MalformedPacket(name, f"{len(body)} bytes, not 2")
        if body[0] & 0xFE:
            raise MalformedPacket(name, "reserved acknowledge flags set")
        if body[0] and body[1]:
            raise MalformedPacket(name, "session present with a refusal")
        return Connack(bool(body[0]), body[1])
    if kind == SUBACK:
        _no_flags(header, name)
        packet_id = _nonzero_id(body, name)
        codes = tuple(body[2:])
        if not codes or any(c not in (0, 1, 2, SUBACK_FAILURE) for c in codes):
            raise MalformedPacket(name, f"return codes {codes}")
        return Suback(packet_id, codes)
    if kind in (PINGREQ, PINGRESP, DISCONNECT):
        _no_flags(header, name)
        if body:
            raise MalformedPacket(name, f"{len(body)} bytes of body, none allowed")
        return Pingreq() if kind == PINGREQ else Pingresp() if kind == PINGRESP else Disconnect()
    if kind == SUBSCRIBE:
        if header & 0x0F != 0x02:
            raise MalformedPacket(name, "flags not 0x2")
        return _decode_subscribe(body)
    if kind == CONNECT:
        _no_flags(header, name)
        return _decode_connect(body)
    raise MalformedPacket(name, "not part of what this client speaks (QoS 0/1, no unsubscribe)")


def _decode_subscribe(body: bytes) -> Subscribe:
    packet_id = _nonzero_id(body, "SUBSCRIBE")
    topics: list[tuple[str, int]] = []
    pos = 2
    while pos < len(body):
        topic_filter, pos = _read_string(body, pos, "SUBSCRIBE", "topic filter")
        if not topic_filter:
            raise MalformedPacket("SUBSCRIBE", "empty topic filter")
        if pos >= len(body) or body[pos] > 2:
            raise MalformedPacket("SUBSCRIBE", "requested QoS missing or not 0-2")
        topics.append((topic_filter, body[pos]))
        pos += 1
    if not topics:
        raise MalformedPacket("SUBSCRIBE", "no topic filter")
    return Subscribe(packet_id, tuple(topics))


def _decode_connect(body: bytes) -> Connect:
    name = "CONNECT"
    if body[:6] != PROTOCOL_NAME:
        raise MalformedPacket(name, "protocol name not MQTT")
    if len(body) < 10:
        raise MalformedPacket(name, "variable header cut short")
    if body[6] != PROTOCOL_LEVEL:
        raise MalformedPacket(name, f"protocol level {body[6]}, not 4 (3.1.1)")
    flags = body[7]
    if flags & 0x01:
        raise MalformedPacket(name, "reserved flag set")
    will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 3, bool(flags & 0x20)
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise MalformedPacket(name, "will QoS/retain inconsistent with the will flag")
    if flags & 0x40 and not flags & 0x80:
        raise MalformedPacket(name, "password without user name")
    keepalive = (body[8] << 8) | body[9]
    client_id, pos = _read_string(body, 10, name, "client id")
    will = None
    if will_flag:
        topic, pos = _read_string(body, pos, name, "will topic")
        payload, pos = _read_binary(body, pos, name, "will payload")
        if not topic or "+" in topic or "#" in topic:
            raise MalformedPacket(name, "will topic empty or a wildcard")
        will = Will(topic, payload, will_qos, will_retain)
    username = password = None
    if flags & 0x80:
        username, pos = _read_string(body, pos, name, "user name")
    if flags & 0x40:
        password, pos = _read_binary(body, pos, name, "password")
    if pos != len(body):
        raise MalformedPacket(name, f"{len(body) - pos} bytes after the payload")
    clean = bool(flags & 0x02)
    if not client_id and not clean:
        raise MalformedPacket(name, "empty client id without a clean session")
    return Connect(client_id, clean, keepalive, will, username, password)
