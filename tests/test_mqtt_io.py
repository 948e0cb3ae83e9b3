"""hub.mqtt_io: paho's packet I/O tuned for the hub, on real sockets and a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from hub.broker import MosquittoBroker
from hub.mqtt_io import PAHO_HOOKS, FastPahoClient, _frame_at, use_fast_io
from tests.support.mqtt import observe


def _publish_packet(topic: str, payload: bytes, mid: int, *, retain: bool = False) -> bytes:
    body = len(topic.encode()).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big") + payload
    length, header = len(body), bytearray(b"\x33" if retain else b"\x32")
    while True:
        byte, length = length & 0x7F, length >> 7
        header.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(header) + body


def test_every_paho_internal_it_relies_on_is_there() -> None:
    """A paho upgrade that renames what FastPahoClient overrides must fail here, not in the field."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    missing = [name for name in PAHO_HOOKS if not hasattr(client, name)]
    assert not missing, f"paho {paho.__name__} no longer has {missing}: re-check hub/mqtt_io.py"


def test_a_frame_is_known_once_its_length_is_here() -> None:
    packet = _publish_packet("a/b", b"x" * 200, 7)  # a two-byte remaining length
    assert _frame_at(packet, 0) == (0x32, 3, len(packet))
    for cut in range(3):
        assert _frame_at(packet[:cut], 0) is None, "the remaining length is not all here"
    for cut in range(3, len(packet)):
        assert _frame_at(packet[:cut], 0) == (0x32, 3, len(packet)), "the body ends beyond the buffer"
    assert _frame_at(b"\x30\xff\xff\xff\xff\x01", 0) == (0x30, -1, -1), "5 length bytes: malformed"


@pytest.fixture
def wired_client() -> Iterator[tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]]]:
    """A FastPahoClient reading one end of a real socket pair, as if connected to a broker."""
    ours, broker_side = socket.socketpair()
    ours.setblocking(False)
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.__class__ = FastPahoClient
    assert isinstance(client, FastPahoClient)
    got: list[tuple[str, bytes]] = []
    client.message_handler = lambda topic, payload, _retain: got.append((topic, payload))
    client._sock = ours
    try:
        yield client, broker_side, got
    finally:
        ours.close()
        broker_side.close()


def test_the_retain_flag_reaches_the_handler(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, broker_side, _ = wired_client
    flags: list[tuple[str, bool]] = []
    client.message_handler = lambda topic, _payload, retain: flags.append((topic, retain))
    broker_side.sendall(_publish_packet("a", b"{}", 1, retain=True) + _publish_packet("b", b"{}", 2))
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert flags == [("a", True), ("b", False)]


def test_packets_split_anywhere_are_reassembled(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, broker_side, got = wired_client
    stream = b"".join(
        _publish_packet(f"n/dev/t{i}/rating", f'{{"n":{i}}}'.encode(), i + 1) for i in range(50)
    )
    for start in range(0, len(stream), 7):  # 7-byte pieces cut through headers, lengths and bodies
        broker_side.sendall(stream[start : start + 7])
        assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert got == [(f"n/dev/t{i}/rating", f'{{"n":{i}}}'.encode()) for i in range(50)]
    pubacks = [bytes(p["packet"]) for p in client._out_packet]
    assert pubacks == [b"\x40\x02" + (i + 1).to_bytes(2, "big") for i in range(50)], "one PUBACK each"


def test_a_packet_larger_than_many_reads_is_handled_once_whole(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, broker_side, got = wired_client
    big = bytes(range(256)) * 8192  # 2 MiB: the demo broker's message size limit
    stream = _publish_packet("n/dev/big", big, 9) + _publish_packet("n/dev/small", b"{}", 10)
    broker_side.setblocking(False)
    sent = 0
    while len(got) < 2:
        with contextlib.suppress(BlockingIOError):
            sent += broker_side.send(stream[sent : sent + 100_000])
        assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        if len(got) == 0:
            assert client._partial is not None, "the start of the big packet is kept"
    assert got == [("n/dev/big", big), ("n/dev/small", b"{}")]
    assert client._partial is None


def test_packet_ids_still_waiting_for_a_puback_are_not_reused(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, _, _ = wired_client
    client._state = paho._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]
    assert client.publish_quick(b"a", b"1")
    waiting = next(iter(client._quick_mids or ()))
    client._last_mid = waiting - 1 if waiting > 1 else 65535  # as if the ids had wrapped around
    assert client.publish_quick(b"a", b"2")
    assert client._quick_mids == {waiting, waiting + 1}, "the waiting id was skipped"


def test_a_burst_in_one_read_is_all_handled(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, broker_side, got = wired_client
    broker_side.sendall(b"".join(_publish_packet("t", b"%d" % i, i % 65535 + 1) for i in range(2000)))
    while len(got) < 2000:
        assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
    assert [payload for _, payload in got] == [b"%d" % i for i in range(2000)]


def test_a_malformed_length_drops_the_connection(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, broker_side, got = wired_client
    broker_side.sendall(b"\x32\xff\xff\xff\xff\x01")
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert client._sock is None, "the socket is closed"
    assert got == []


def test_a_closed_socket_is_a_lost_connection(
    wired_client: tuple[FastPahoClient, socket.socket, list[tuple[str, bytes]]],
) -> None:
    client, broker_side, _ = wired_client
    broker_side.close()
    assert client.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST


@contextlib.asynccontextmanager
async def fast_client(
    broker: MosquittoBroker, received: list[tuple[str, bytes]], retained: list[bool] | None = None
) -> AsyncIterator[aiomqtt.Client]:
    client = aiomqtt.Client("127.0.0.1", broker.port, identifier="fast-io-test")

    def handle(topic: str, payload: bytes, retain: bool) -> None:
        received.append((topic, payload))
        if retained is not None:
            retained.append(retain)

    use_fast_io(client).message_handler = handle
    async with client:
        yield client


async def test_quick_publishes_and_awaited_ones_share_a_connection(broker: MosquittoBroker) -> None:
    received: list[tuple[str, bytes]] = []
    async with observe(broker.port, "quick/#", "awaited/#") as seen, fast_client(broker, received) as client:
        fast = client._client
        assert isinstance(fast, FastPahoClient)
        for n in range(500):
            assert fast.publish_quick(b"quick/%d" % (n % 5), json.dumps({"n": n}).encode())
        await client.publish("awaited/x", b'{"n": -1}', qos=1)  # paho's own PUBACK path still works
        for topic in (f"quick/{k}" for k in range(5)):
            await seen.wait_for(topic, 100)
        await seen.wait_for("awaited/x")
        async with asyncio.timeout(5):
            while fast._quick_mids:
                await asyncio.sleep(0.02)
    assert sorted(m["n"] for k in range(5) for m in seen.messages[f"quick/{k}"]) == list(range(500))


async def test_messages_reach_the_handler_in_order_over_a_real_broker(broker: MosquittoBroker) -> None:
    received: list[tuple[str, bytes]] = []
    async with fast_client(broker, received) as client:
        await client.subscribe("in/#", qos=1)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="sender") as sender:
            for n in range(300):
                await sender.publish("in/rating", b"%d" % n, qos=1)
        async with asyncio.timeout(10):
            while len(received) < 300:
                await asyncio.sleep(0.02)
    assert received == [("in/rating", b"%d" % n) for n in range(300)]


async def test_a_retained_message_is_flagged_when_a_subscription_brings_it(broker: MosquittoBroker) -> None:
    """MQTT 3.1.1: the broker sets RETAIN on what it sends because of a (re)subscription only."""
    received: list[tuple[str, bytes]] = []
    retained: list[bool] = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="sender") as sender:
        await sender.publish("kept/cmd", b"old", qos=1, retain=True)
        async with fast_client(broker, received, retained) as client:
            await client.subscribe("kept/#", qos=1)
            await sender.publish("kept/cmd", b"live", qos=1, retain=True)
            async with asyncio.timeout(10):
                while len(received) < 2:
                    await asyncio.sleep(0.02)
    assert list(zip(received, retained, strict=True)) == [
        (("kept/cmd", b"old"), True),
        (("kept/cmd", b"live"), False),
    ]


def test_only_a_plain_paho_client_is_switched() -> None:
    async def switch_twice() -> None:
        client = aiomqtt.Client("127.0.0.1", 1, identifier="x")
        use_fast_io(client)
        with pytest.raises(TypeError, match="expected a paho Client"):
            use_fast_io(client)

    asyncio.run(switch_twice())
