"""An asyncio MQTT 3.1.1 client for the hub's one connection: QoS 0/1, a synchronous message path.

The shape is zigpy's: `hub.mqtt.codec` turns bytes into packets, an `asyncio.Protocol` hands what
arrives to the client, and the client keeps the session's state. Incoming PUBLISHes go straight to
`message_handler(topic, payload, retain)` in the protocol's callback, and the PUBACK of a QoS-1 one
is queued after it returns, so a message is acknowledged to the broker only once the handler took
it. Everything written during one turn of the event loop leaves in one `transport.write` at the start
of the next; the socket has TCP_NODELAY (acks are small and latency-bound).

One `Client` is one connection: enter it once (`async with`), and build a new one to reconnect. QoS-1
publishes are not re-sent on a new connection (the hub's devices retry until they hear their ack).
Every wait is bounded by `asyncio.timeout`, never `asyncio.wait_for`: in Python 3.11 wait_for returns
the result of a future that completes as its task is cancelled and drops the cancellation, which left
the gateway's task running after its TaskGroup had cancelled it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

from hub.mqtt import codec
from hub.mqtt.codec import Connack, Connect, Pingresp, Suback, Will
from hub.mqtt.errors import (
    CONNACK_REASONS,
    ConnectionLost,
    InflightExhausted,
    MalformedPacket,
    MqttConnectError,
    MqttError,
    MqttTimeout,
    NotConnected,
    SubscribeRefused,
)

log = logging.getLogger(__name__)

# (topic, payload, retain): retain is the PUBLISH's RETAIN flag, set on a retained message the broker
# sends because of a (re)subscription.
MessageHandler = Callable[[str, bytes, bool], None]

_PUBLISH, _PUBACK_HEADER = 0x30, 0x40
_MAX_PACKET_ID = 0xFFFF
_NEW, _CONNECTING, _CONNECTED, _CLOSING, _CLOSED = range(5)


class _Protocol(asyncio.Protocol):
    """The asyncio side of a connection: hands bytes and events to its Client, nothing else."""

    def __init__(self, client: Client) -> None:
        self._owner = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._owner._transport = transport

    def data_received(self, data: bytes) -> None:
        self._owner._data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connection_lost(exc)


class Client:
    """One MQTT 3.1.1 connection: connect, subscribe, receive through a callback, publish at QoS 0/1."""

    def __init__(
        self,
        hostname: str,
        port: int = 1883,
        *,
        identifier: str,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
        keepalive: int = 60,
        will: Will | None = None,
        timeout: float = 10.0,
        max_packet_size: int = codec.DEFAULT_MAX_PACKET_SIZE,
        message_handler: MessageHandler | None = None,
    ) -> None:
        self.hostname = hostname
        self.port = port
        self.timeout = timeout
        self.keepalive = keepalive
        # Set before connecting: what the broker kept for a persistent session comes right after CONNACK.
        self.message_handler = message_handler
        self.session_present = False
        self._connect = Connect(
            identifier,
            clean_session,
            keepalive,
            will,
            username,
            password.encode() if password is not None else None,
        )
        codec.encode(self._connect)  # a field MQTT cannot carry fails here, not at connect time
        self._framer = codec.Framer(max_packet_size)
        self._state = _NEW
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._inflight: dict[int, asyncio.Future[None] | None] = {}  # packet id -> waiter (None: nobody)
        self._subacks: dict[int, asyncio.Future[Suback]] = {}
        self._connack: asyncio.Future[Connack] | None = None
        self._next_id = 0
        self._error: BaseException | None = None  # what ended the connection, if not a clean close
        self._closed = asyncio.Event()
        self._last_sent = 0.0
        self._ping_sent: float | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._held: list[tuple[int, bytes]] = []  # packets read before a pause, handled on resume

    # -- state ----------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True from CONNACK until the connection ends or `disconnect` begins."""
        return self._state == _CONNECTED

    @property
    def reading_paused(self) -> bool:
        """True between `pause_reading` and `resume_reading` (or the end of the connection)."""
        return self._paused

    def pause_reading(self) -> None:
        """Stop handing messages to the handler and stop reading from the broker: backpressure for a
        receiver that is behind. Packets of the current read not yet handled are held (and not
        acknowledged) until `resume_reading`; the broker keeps the rest of the session's messages
        queued (QoS 1, a persistent session). Keep pauses shorter than the keepalive: a PINGRESP
        is not read while paused."""
        if not self._paused and self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()
            self._paused = True

    def resume_reading(self) -> None:
        """Hand on the held packets, then read from the broker again (unless the handler paused again)."""
        if not self._paused:
            return
        self._paused = False
        held, self._held = self._held, []
        if held:
            self._running_loop().call_soon(self._handle_held, held)
        else:
            self._resume_transport()

    def _handle_held(self, held: list[tuple[int, bytes]]) -> None:
        self._handle_frames(held)
        if not self._paused:
            self._resume_transport()

    def _resume_transport(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    @property
    def in_flight(self) -> int:
        """QoS-1 publishes sent and not yet acknowledged by the broker."""
        return len(self._inflight)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()

    # -- connecting -----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open TCP, send CONNECT, wait for CONNACK: MqttConnectError if refused, MqttTimeout if silent."""
        if self._state != _NEW:
            raise MqttError("a Client connects once: build a new one to connect again")
        self._state = _CONNECTING
        loop = self._loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                await loop.create_connection(lambda: _Protocol(self), self.hostname, self.port)
        except TimeoutError:
            self._state = _CLOSED
            raise MqttTimeout("TCP connection", self.timeout) from None
        except OSError as exc:
            self._state = _CLOSED
            raise MqttConnectError(self.hostname, self.port, None, str(exc)) from exc
        transport = self._transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets it already; said here because acks must not wait for a delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connack = loop.create_future()
        transport.write(codec.encode(self._connect))
        self._last_sent = loop.time()
        try:
            async with asyncio.timeout(self.timeout):
                connack = await self._connack
        except TimeoutError:
            self._abort(MqttTimeout("CONNACK", self.timeout))
            raise MqttTimeout("CONNACK", self.timeout) from None
        except BaseException:
            self._abort(None)
            raise
        if connack.return_code:
            code = connack.return_code
            self._abort(None)
            reason = CONNACK_REASONS.get(code, f"refused with code {code}")
            raise MqttConnectError(self.hostname, self.port, code, reason)
        if self.keepalive:
            self._keepalive_timer = loop.call_later(self._keepalive_tick_s, self._keepalive_tick)
        log.debug(
            "mqtt: connected to %s:%d (session present: %s)", self.hostname, self.port, self.session_present
        )

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """SUBSCRIBE one filter at QoS 0 or 1; the granted QoS, SubscribeRefused if the broker says no."""
        if qos not in (0, 1):
            raise ValueError("hub.mqtt subscribes at QoS 0 or 1")
        packet_id = self._new_packet_id()
        waiter: asyncio.Future[Suback] = self._running_loop().create_future()
        self._subacks[packet_id] = waiter
        try:
            self._write(codec.encode(codec.Subscribe(packet_id, ((topic_filter, qos),))))
            async with asyncio.timeout(self.timeout):
                suback = await waiter
        except TimeoutError:
            raise MqttTimeout("SUBACK", self.timeout) from None
        finally:
            self._subacks.pop(packet_id, None)
        code = suback.return_codes[0]
        if code == codec.SUBACK_FAILURE:
            raise SubscribeRefused(topic_filter, code)
        return code

    # -- publishing -----------------------------------------------------------------------------

    def publish_nowait(
        self, topic: str | bytes, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Queue a PUBLISH without waiting for its PUBACK (acks, mirrors); NotConnected if not connected.

        A `bytes` topic is taken as valid UTF-8 (callers cache encoded topics).
        """
        if self._state != _CONNECTED:
            raise NotConnected("not connected to the broker")
        if qos:
            packet_id = self._new_packet_id()
            packet = codec.encode_publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id)
            self._inflight[packet_id] = None
        else:
            packet = codec.encode_publish(topic, payload, retain=retain)
        self._out.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._running_loop().call_soon(self._flush)

    async def publish(
        self, topic: str | bytes, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """PUBLISH and, at QoS 1, wait for the broker's PUBACK (ConnectionLost / MqttTimeout if none)."""
        if self._state != _CONNECTED:
            raise NotConnected("not connected to the broker")
        if not qos:
            self.publish_nowait(topic, payload, qos=0, retain=retain)
            return
        packet_id = self._new_packet_id()
        packet = codec.encode_publish(topic, payload, qos=1, retain=retain, packet_id=packet_id)
        waiter: asyncio.Future[None] = self._running_loop().create_future()
        self._inflight[packet_id] = waiter
        self._write(packet)
        try:
            async with asyncio.timeout(self.timeout):
                await waiter
        except TimeoutError:
            # The id stays reserved until its PUBACK comes, if ever: it is still in flight.
            if self._inflight.get(packet_id) is waiter:
                self._inflight[packet_id] = None
            raise MqttTimeout("PUBACK", self.timeout) from None

    def _new_packet_id(self) -> int:
        """The next packet id that no publish or subscribe in flight holds (MQTT-2.3.1-4)."""
        inflight, subacks = self._inflight, self._subacks
        if len(inflight) + len(subacks) >= _MAX_PACKET_ID:
            raise InflightExhausted("65,535 packets await the broker's answer")
        packet_id = self._next_id
        while True:
            packet_id = packet_id % _MAX_PACKET_ID + 1
            if packet_id not in inflight and packet_id not in subacks:
                self._next_id = packet_id
                return packet_id

    # -- closing --------------------------------------------------------------------------------

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then drops the will), close, and wait for the socket to end."""
        if self._state in (_CONNECTED, _CONNECTING) and self._transport is not None:
            self._state = _CLOSING
            self._out.append(codec.DISCONNECT_BYTES)
            self._flush()
            self._transport.close()  # after what is buffered has been written
        elif self._state == _NEW:
            self._state = _CLOSED
            self._closed.set()
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._closed.wait()
        except TimeoutError:
            self._abort(None)

    async def wait_closed(self) -> None:
        """Return when the connection has ended cleanly (`disconnect`); ConnectionLost if it was lost."""
        await self._closed.wait()
        if self._error is not None:
            raise ConnectionLost(self._error) from self._error

    # -- the protocol's callbacks ---------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        try:
            frames = self._framer.feed(data)
        except MalformedPacket as exc:
            self._abort(exc)
            return
        if self._paused:  # read before the transport took the pause in
            self._held.extend(frames)
            return
        self._handle_frames(frames)

    def _handle_frames(self, frames: list[tuple[int, bytes]]) -> None:
        handler = self.message_handler
        out = self._out
        for index, (header, body) in enumerate(frames):
            if self._paused:  # the handler asked for a pause: the rest waits, unacknowledged
                self._held.extend(frames[index:])
                break
            kind = header & 0xF0
            if kind == _PUBLISH:
                try:
                    topic, payload, qos, packet_id, retain = codec.parse_publish(header, body)
                    if qos > 1:
                        raise MalformedPacket("PUBLISH", "QoS 2, above what this client subscribes at")
                except MalformedPacket as exc:
                    self._abort(exc)
                    return
                if handler is not None:
                    try:
                        handler(topic, payload, retain)
                    except Exception:  # one bad message must not cost the connection and every other one
                        log.exception("mqtt: the message handler failed on a message to %s", topic)
                if qos:
                    out.append(codec.encode_puback(packet_id))
            elif header == _PUBACK_HEADER and len(body) == 2:
                waiter = self._inflight.pop((body[0] << 8) | body[1], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            else:
                try:
                    self._handle_packet(codec.decode(header, body))
                except MalformedPacket as exc:
                    self._abort(exc)
                    return
        if out and not self._flush_scheduled:
            self._flush_scheduled = True
            self._running_loop().call_soon(self._flush)

    def _handle_packet(self, packet: codec.Packet) -> None:
        if isinstance(packet, Connack):
            if self._connack is None or self._connack.done():
                raise MalformedPacket("CONNACK", "a second CONNACK")
            if not packet.return_code:
                # Connected from here: messages of a persistent session may follow in the same read,
                # and their handler may publish.
                self._state = _CONNECTED
                self.session_present = packet.session_present
            self._connack.set_result(packet)
        elif isinstance(packet, Suback):
            waiter = self._subacks.get(packet.packet_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(packet)
        elif isinstance(packet, Pingresp):
            self._ping_sent = None
        elif not isinstance(packet, codec.Puback):  # a PUBACK with id 0 is ignored like an unknown id
            raise MalformedPacket(type(packet).__name__.upper(), "a broker does not send this to a client")

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._error is None and self._state != _CLOSING:
            self._error = exc if exc is not None else ConnectionResetError("the broker closed the connection")
        self._state = _CLOSED
        self._transport = None
        self._out.clear()
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        lost = ConnectionLost(self._error)
        waiters: list[asyncio.Future[None] | asyncio.Future[Suback] | asyncio.Future[Connack] | None]
        waiters = [*self._inflight.values(), *self._subacks.values(), self._connack]
        for waiter in waiters:
            if waiter is not None and not waiter.done():
                waiter.set_exception(lost)
                waiter.exception()  # its awaiter gets it; nobody awaiting must not log "never retrieved"
        self._inflight.clear()
        if self._error is not None:
            log.debug("mqtt: connection to %s:%d lost: %s", self.hostname, self.port, self._error)
        self._closed.set()

    def _abort(self, error: BaseException | None) -> None:
        """End the connection at once (a protocol error, a timeout): nothing more is sent."""
        if error is not None and self._error is None:
            self._error = error
        if self._transport is not None:
            self._state = _CLOSING  # nothing more is queued; connection_lost keeps `error` if any
            self._transport.abort()
        elif self._state != _CLOSED:
            self._state = _CLOSED
            self._closed.set()

    # -- writing and keepalive ------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise NotConnected("not connected to the broker")
        return self._loop

    def _write(self, packet: bytes) -> None:
        self._out.append(packet)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Everything queued since the last flush, in one write."""
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            out.clear()
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()
        assert self._loop is not None
        self._last_sent = self._loop.time()

    @property
    def _keepalive_tick_s(self) -> float:
        return max(0.25, self.keepalive / 2)

    def _keepalive_tick(self) -> None:
        """Send PINGREQ when nothing was sent for half the keepalive; lost if no PINGRESP in a keepalive."""
        loop = self._loop
        if self._state != _CONNECTED or loop is None:
            return
        now = loop.time()
        if self._ping_sent is not None and now - self._ping_sent >= self.keepalive:
            self._abort(MqttTimeout("PINGRESP", self.keepalive))
            return
        if self._ping_sent is None and now - self._last_sent >= self.keepalive / 2:
            self._ping_sent = now
            self._write(codec.PINGREQ_BYTES)
        self._keepalive_timer = loop.call_later(self._keepalive_tick_s, self._keepalive_tick)
