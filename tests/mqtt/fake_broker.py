"""A scripted MQTT broker for the faults a real Mosquitto never commits: it speaks hub.mqtt.codec.

A test gives it a `responder(broker, header, body)` called for every packet a client sends; the
default answers CONNECT, SUBSCRIBE, PUBLISH and PINGREQ as a broker would. `send` writes any bytes
to the connected client, valid or not (the zigpy-znp fake-firmware idea, for a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from hub.mqtt import MalformedPacket, codec

Responder = Callable[["FakeBroker", int, bytes], None]


def answer_like_a_broker(broker: FakeBroker, header: int, body: bytes) -> None:
    """CONNACK a CONNECT, SUBACK a SUBSCRIBE, PUBACK a QoS-1 PUBLISH, PINGRESP a PINGREQ."""
    packet = codec.decode(header, body)
    if isinstance(packet, codec.Connect):
        broker.send(codec.encode(codec.Connack(False, 0)))
    elif isinstance(packet, codec.Subscribe):
        codes = tuple(qos for _filter, qos in packet.topics)
        broker.send(codec.encode(codec.Suback(packet.packet_id, codes)))
    elif isinstance(packet, codec.Publish) and packet.qos:
        broker.send(codec.encode_puback(packet.packet_id))
    elif isinstance(packet, codec.Pingreq):
        broker.send(codec.PINGRESP_BYTES)


class FakeBroker:
    """One listening socket on 127.0.0.1; records every packet received, in order."""

    def __init__(self, responder: Responder = answer_like_a_broker) -> None:
        self.responder = responder
        self.received: list[codec.Packet] = []
        self.port = 0
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, data: bytes) -> None:
        """Write raw bytes to the client."""
        assert self._writer is not None
        self._writer.write(data)

    def close_client(self) -> None:
        """Drop the client's connection, as a crashed broker would (no DISCONNECT exists for that)."""
        if self._writer is not None:
            self._writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        framer = codec.Framer()
        try:
            while data := await reader.read(65536):
                for header, body in framer.feed(data):
                    with contextlib.suppress(MalformedPacket):
                        self.received.append(codec.decode(header, body))
                    self.responder(self, header, body)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeBroker]:
        """Listen for the block's duration; close every connection afterwards."""
        self._server = await asyncio.start_server(self._track, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            self.close_client()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
