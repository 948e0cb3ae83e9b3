"""hub.mqtt.Client against a real Mosquitto: sessions, wills, credentials, keepalive, publish paths."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.mqtt import (
    Client,
    InflightExhausted,
    MqttConnectError,
    MqttError,
    NotConnected,
    SubscribeRefused,
    Will,
)
from hub.ops.broker import MosquittoBroker, free_port
from tests.mqtt.fake_broker import FakeBroker, answer_like_a_broker

Message = tuple[str, bytes, bool]


class Inbox:
    """Messages a client's handler received, with a way to wait for a count of them."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    def __call__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages.append((topic, payload, retain))
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


def _id() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def connected(port: int, inbox: Inbox | None = None, **options: object) -> AsyncIterator[Client]:
    """A connected client (an `identifier` of its own unless given), disconnected afterwards."""
    options.setdefault("identifier", _id())
    async with Client("127.0.0.1", port, message_handler=inbox, **options) as client:  # type: ignore[arg-type]
        yield client


async def test_messages_reach_the_handler_and_publishes_are_acknowledged(broker: MosquittoBroker) -> None:
    inbox = Inbox()
    async with connected(broker.port, inbox) as sub, connected(broker.port) as pub:
        assert await sub.subscribe("dev/+/rating", qos=1) == 1
        await pub.publish("dev/a/rating", b'{"level":5}')  # waits for the PUBACK
        for n in range(100):
            pub.publish_nowait(b"dev/b/rating", b"%d" % n)
        assert pub.in_flight == 100
        await inbox.wait_for(101)
        async with asyncio.timeout(5):
            while pub.in_flight:
                await asyncio.sleep(0.01)
    assert inbox.messages[0] == ("dev/a/rating", b'{"level":5}', False)
    assert [m[1] for m in inbox.messages[1:]] == [b"%d" % n for n in range(100)], "in order, each once"


async def test_qos0_publishes_and_subscriptions_work_too(broker: MosquittoBroker) -> None:
    inbox = Inbox()
    async with connected(broker.port, inbox) as sub, connected(broker.port) as pub:
        assert await sub.subscribe("x/#", qos=0) == 0
        await pub.publish("x/1", b"a", qos=0)
        pub.publish_nowait("x/2", b"b", qos=0)
        assert pub.in_flight == 0
        await inbox.wait_for(2)


async def test_the_retain_flag_reaches_the_handler(broker: MosquittoBroker) -> None:
    async with connected(broker.port) as pub:
        await pub.publish("dev/a/state", b"on", retain=True)
    inbox = Inbox()
    async with connected(broker.port, inbox) as sub:
        await sub.subscribe("dev/#")
        assert await inbox.wait_for(1) == [("dev/a/state", b"on", True)]


async def test_a_persistent_session_delivers_what_came_while_away(broker: MosquittoBroker) -> None:
    identifier = _id()
    async with connected(broker.port, identifier=identifier, clean_session=False) as hub:
        await hub.subscribe("dev/+/rating")
    async with connected(broker.port) as pub:
        for n in range(200):
            pub.publish_nowait("dev/a/rating", b"%d" % n)
        async with asyncio.timeout(5):
            while pub.in_flight:
                await asyncio.sleep(0.01)
    inbox = Inbox()
    async with connected(broker.port, inbox, identifier=identifier, clean_session=False) as hub:
        assert hub.session_present
        await inbox.wait_for(200)  # with no new SUBSCRIBE: they come right after CONNACK
    assert [m[1] for m in inbox.messages] == [b"%d" % n for n in range(200)]


async def test_the_handler_may_publish_from_the_first_message_of_a_session(broker: MosquittoBroker) -> None:
    """Queued messages can arrive in the same read as CONNACK: the client is connected by then."""
    identifier = _id()
    async with connected(broker.port, identifier=identifier, clean_session=False) as hub:
        await hub.subscribe("in/#")
    async with connected(broker.port) as pub:
        for n in range(50):
            await pub.publish("in/x", b"%d" % n)
    acks = Inbox()
    client: Client | None = None

    def answer(topic: str, payload: bytes, _retain: bool) -> None:
        assert client is not None
        client.publish_nowait("out/" + topic, payload)

    async with connected(broker.port, acks) as watcher:
        await watcher.subscribe("out/#")
        client = Client(
            "127.0.0.1", broker.port, identifier=identifier, clean_session=False, message_handler=answer
        )
        async with client:
            await acks.wait_for(50)


async def test_the_will_is_published_when_the_connection_dies(broker: MosquittoBroker) -> None:
    inbox = Inbox()
    async with connected(broker.port, inbox) as watcher:
        await watcher.subscribe("hub/state")
        client = Client(
            "127.0.0.1", broker.port, identifier=_id(), will=Will("hub/state", b"offline", qos=1, retain=True)
        )
        await client.connect()
        assert client._transport is not None
        client._transport.abort()  # no DISCONNECT: as if the process died
        with pytest.raises(MqttError, match="connection lost"):
            await client.wait_closed()
        assert await inbox.wait_for(1) == [("hub/state", b"offline", False)]


async def test_a_clean_disconnect_sends_no_will(broker: MosquittoBroker) -> None:
    inbox = Inbox()
    async with connected(broker.port, inbox) as watcher:
        await watcher.subscribe("hub/state")
        async with connected(broker.port, will=Will("hub/state", b"offline", qos=1)) as client:
            await client.publish("hub/state", b"online")
        await client.wait_closed()  # clean: returns
        await inbox.wait_for(1)
        await watcher.publish("hub/state", b"marker")
        assert [m[1] for m in await inbox.wait_for(2)] == [b"online", b"marker"]


@pytest.fixture
def auth_broker(tmp_path: Path) -> MosquittoBroker:
    """A Mosquitto with one account (hub / s3cret), anonymous clients refused."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "hub", "s3cret"], check=True)
    passwords.chmod(0o600)
    instance = MosquittoBroker(
        workdir=tmp_path / "broker", extra=["allow_anonymous false", f"password_file {passwords}"]
    )
    instance.start()
    return instance


async def test_credentials_are_sent_and_a_refusal_keeps_its_code(auth_broker: MosquittoBroker) -> None:
    try:
        async with connected(auth_broker.port, username="hub", password="s3cret") as client:
            assert await client.subscribe("dev/#") == 1
        with pytest.raises(MqttConnectError) as error:
            async with connected(auth_broker.port, username="hub", password="wrong"):
                pass
        assert error.value.code in (4, 5)
        assert error.value.port == auth_broker.port
    finally:
        auth_broker.stop()


async def test_nothing_listening_is_a_connect_error_without_a_code() -> None:
    with pytest.raises(MqttConnectError) as error:
        async with connected(free_port()):
            pass
    assert error.value.code is None


async def test_keepalive_pings_hold_an_idle_connection(broker: MosquittoBroker) -> None:
    """Real time is the point: Mosquitto drops a client silent for 1.5 keepalives."""
    async with connected(broker.port, keepalive=1) as client:
        await asyncio.sleep(3.0)
        assert client.is_connected
        await client.publish("still/here", b"1")


async def test_a_client_is_entered_once(broker: MosquittoBroker) -> None:
    async with connected(broker.port) as client:
        with pytest.raises(MqttError, match="connects once"):
            await client.connect()
    with pytest.raises(NotConnected):
        client.publish_nowait("a", b"")
    with pytest.raises(NotConnected):
        await client.publish("a", b"")


async def test_a_failing_handler_costs_one_message_not_the_connection(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()

    def handler(topic: str, payload: bytes, retain: bool) -> None:
        if payload == b"bad":
            raise ValueError("boom")
        inbox(topic, payload, retain)

    async with connected(broker.port) as pub:
        client = Client("127.0.0.1", broker.port, identifier=_id(), message_handler=handler)
        async with client:
            await client.subscribe("t")
            with caplog.at_level(logging.ERROR, logger="hub.mqtt.client"):
                await pub.publish("t", b"bad")
                await pub.publish("t", b"good")
                assert await inbox.wait_for(1) == [("t", b"good", False)]
            assert client.is_connected
    assert "the message handler failed" in caplog.text


async def test_writes_of_one_loop_turn_leave_in_one_write(broker: MosquittoBroker) -> None:
    async with connected(broker.port) as client:
        assert client._transport is not None
        writes: list[int] = []
        original = client._transport.write

        def counting(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            original(data)

        client._transport.write = counting  # type: ignore[method-assign]
        for n in range(500):
            client.publish_nowait("t/x", b"%d" % n)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(writes) == 1
        async with asyncio.timeout(5):
            while client.in_flight:
                await asyncio.sleep(0.01)


async def test_no_packet_id_is_reused_while_in_flight() -> None:
    """A broker that PUBACKs nothing: every id is distinct until all 65,535 are taken."""
    held = FakeBroker(responder=_connack_only)
    async with held.running(), connected(held.port) as client:
        for _ in range(65_535):
            client.publish_nowait("t", b"")
        with pytest.raises(InflightExhausted):
            client.publish_nowait("t", b"")
        async with asyncio.timeout(10):
            while len(held.received) < 1 + 65_535:
                await asyncio.sleep(0.02)
        ids = [p.packet_id for p in held.received[1:] if hasattr(p, "packet_id")]
        assert sorted(ids) == list(range(1, 65_536))
        held.send(b"\x40\x02\x01\x00")  # PUBACK 256: only that id is free again
        async with asyncio.timeout(5):
            while client.in_flight == 65_535:
                await asyncio.sleep(0.01)
        client.publish_nowait("t", b"")
        async with asyncio.timeout(5):
            while len(held.received) < 2 + 65_535:
                await asyncio.sleep(0.01)
        assert getattr(held.received[-1], "packet_id", None) == 256


def _connack_only(broker: FakeBroker, header: int, _body: bytes) -> None:
    if header == 0x10:
        broker.send(b"\x20\x02\x00\x00")


async def test_a_refused_subscription_keeps_its_filter_and_code() -> None:
    """Mosquitto 2.0 grants a denied 3.1.1 subscription (and delivers nothing): a fake broker refuses."""

    def refuse(broker: FakeBroker, header: int, body: bytes) -> None:
        if header == 0x82:
            broker.send(b"\x90\x03" + body[:2] + b"\x80")
        else:
            answer_like_a_broker(broker, header, body)

    fake = FakeBroker(responder=refuse)
    async with fake.running(), connected(fake.port) as client:
        with pytest.raises(SubscribeRefused) as refused:
            await client.subscribe("secret/#")
        assert refused.value.topic_filter == "secret/#"
        assert refused.value.code == 0x80
        assert client.is_connected
