"""hub.mqtt.Client when things break: the broker dies, lies or goes silent. It reports; nothing hangs."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from hub.mqtt import Client, ConnectionLost, MalformedPacket, MqttTimeout, NotConnected, codec
from hub.ops.broker import MosquittoBroker
from tests.mqtt.fake_broker import FakeBroker, answer_like_a_broker


def _client(port: int, **options: object) -> Client:
    return Client("127.0.0.1", port, identifier=f"t-{uuid.uuid4().hex[:8]}", **options)  # type: ignore[arg-type]


async def test_a_broker_killed_mid_stream_ends_every_wait(broker: MosquittoBroker) -> None:
    received: list[bytes] = []
    sub = _client(broker.port, message_handler=lambda _t, payload, _r: received.append(payload))
    pub = _client(broker.port)
    async with asyncio.timeout(15):
        await sub.connect()
        await sub.subscribe("stream/#")
        await pub.connect()

        async def stream() -> None:
            n = 0
            while True:
                pub.publish_nowait("stream/x", b"%d" % n)
                n += 1
                if n % 100 == 0:
                    await asyncio.sleep(0.001)

        streaming = asyncio.create_task(stream())
        while len(received) < 500:
            await asyncio.sleep(0.005)
        waiting = asyncio.create_task(pub.publish("stream/y", b"awaited"))
        broker.kill()
        with pytest.raises(NotConnected):
            await streaming
        with pytest.raises(ConnectionLost):
            await sub.wait_closed()
        with pytest.raises(ConnectionLost):
            await pub.wait_closed()
        with pytest.raises((ConnectionLost, NotConnected)):
            await waiting
        assert not sub.is_connected
        assert pub.in_flight == 0
        await sub.disconnect()  # after a loss: returns at once
        await pub.disconnect()


async def test_a_malformed_packet_ends_the_connection_with_its_reason() -> None:
    def no_pubacks(broker: FakeBroker, header: int, body: bytes) -> None:
        if header >> 4 != codec.PUBLISH:
            answer_like_a_broker(broker, header, body)

    fake = FakeBroker(responder=no_pubacks)
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port)
        await client.connect()
        waiting = asyncio.create_task(client.publish("a", b"x"))
        await asyncio.sleep(0.05)
        fake.send(b"\x30\x05\x00\x09abc")  # a topic longer than its packet
        with pytest.raises(ConnectionLost) as lost:
            await client.wait_closed()
        assert isinstance(lost.value.cause, MalformedPacket)
        assert lost.value.cause.packet == "PUBLISH"
        with pytest.raises(ConnectionLost):
            await waiting


async def test_an_oversized_packet_is_refused_before_it_is_buffered() -> None:
    fake = FakeBroker()
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port, max_packet_size=1024)
        await client.connect()
        fake.send(b"\x30" + codec.encode_remaining_length(10_000_000))
        with pytest.raises(ConnectionLost) as lost:
            await client.wait_closed()
        assert "over the limit" in str(lost.value.cause)


async def test_a_qos2_publish_the_client_never_asked_for_is_a_protocol_error() -> None:
    fake = FakeBroker()
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port, message_handler=lambda *_: None)
        await client.connect()
        fake.send(b"\x34\x05\x00\x01a\x00\x01")
        with pytest.raises(ConnectionLost, match="QoS 2"):
            await client.wait_closed()


async def test_a_broker_that_stops_answering_pings_is_reported_lost() -> None:
    def no_pings(broker: FakeBroker, header: int, body: bytes) -> None:
        if header != 0xC0:
            answer_like_a_broker(broker, header, body)

    fake = FakeBroker(responder=no_pings)
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port, keepalive=1)
        await client.connect()
        with pytest.raises(ConnectionLost) as lost:
            await client.wait_closed()
        assert isinstance(lost.value.cause, MqttTimeout)
        assert lost.value.cause.operation == "PINGRESP"
        assert any(isinstance(p, codec.Pingreq) for p in fake.received)


async def test_a_broker_that_never_answers_connect_times_out() -> None:
    fake = FakeBroker(responder=lambda *_: None)
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port, timeout=0.3)
        with pytest.raises(MqttTimeout) as timeout:
            await client.connect()
        assert timeout.value.operation == "CONNACK"


async def test_a_broker_that_drops_the_connection_is_reported_lost() -> None:
    fake = FakeBroker()
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port)
        await client.connect()
        fake.close_client()
        with pytest.raises(ConnectionLost):
            await client.wait_closed()
        with pytest.raises(NotConnected):
            client.publish_nowait("a", b"")


async def test_packets_arriving_byte_by_byte_are_all_delivered() -> None:
    got: list[tuple[str, bytes, bool]] = []
    fake = FakeBroker()
    async with fake.running(), asyncio.timeout(10):
        client = _client(fake.port, message_handler=lambda *m: got.append(m))
        await client.connect()
        stream = b"".join(
            codec.encode_publish(f"t/{n}", b"p" * n, qos=1, packet_id=n + 1, retain=n == 3) for n in range(5)
        )
        for byte in stream:
            fake.send(bytes((byte,)))
            await asyncio.sleep(0)
        while len(got) < 5 or sum(isinstance(p, codec.Puback) for p in fake.received) < 5:
            await asyncio.sleep(0.01)
        assert got == [(f"t/{n}", b"p" * n, n == 3) for n in range(5)]
        await client.disconnect()
