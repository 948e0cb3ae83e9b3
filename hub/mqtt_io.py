"""paho's packet I/O under aiomqtt, made fit for a busy asyncio loop.

aiomqtt drives paho's `loop_read`/`loop_write` from the event loop; connecting, subscribing, the will,
keepalive and awaited publishes stay theirs. Under load, stock paho 2.x spends most of the hub's
MQTT time on bookkeeping a node does not need per message: three `recv` calls per incoming packet,
a `send` per outgoing packet plus a wake-up byte for a thread aiomqtt does not run, and for every
message a `MQTTMessage`, a `MQTTMessageInfo` with its `threading.Condition`, and a `ReasonCode` and
`Properties` per PUBACK. `FastPahoClient` keeps paho's protocol handling and removes that:

- reads: one `recv` of up to 64 KiB, split into packets here and handed to paho's `_packet_handle`;
- writes: everything queued during one turn of the event loop goes out in one `send` at its end,
  without registering the socket for writing first (only when the socket is full);
- `message_handler`: MQTT 3.1.1 PUBLISHes at QoS 0/1 go straight to it as (topic, payload, retain),
  after which the PUBACK is queued, exactly as paho orders it (aiomqtt's message queue is then unused);
- `publish_quick`: a QoS-1 publish with no message object, for acks and event mirrors that nobody
  awaits; its PUBACK is matched here. Like aiomqtt's, it is not re-sent after a reconnect (each
  connection is a new client): a device retries until it hears its ack.

It overrides private paho methods, so paho is pinned in pyproject.toml and tests/test_mqtt_io.py
fails loudly if a paho release changes what is overridden.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.client import MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket

log = logging.getLogger(__name__)

READ_SIZE = 65536
_PUBLISH, _PUBACK, _DISCONNECT = 0x30, 0x40, 0xE0
_MAX_LENGTH_BYTES = 4

# The private paho names this module overrides or relies on (checked by the tests).
PAHO_HOOKS = (
    "_sock_recv",
    "_sock_send",
    "_packet_handle",
    "_packet_queue",
    "_packet_write",
    "_handle_publish",
    "_handle_pubackcomp",
    "_send_puback",
    "_mid_generate",
    "_out_messages",
    "_loop_rc_handle",
    "_call_socket_register_write",
    "_in_packet",
    "_out_packet",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_last_msg_out",
    "_protocol",
)

# (topic, payload, retain): retain is the PUBLISH's RETAIN flag, set when the broker sends a retained
# message because of a (re)subscription; the hub refuses those on command and data topics.
MessageHandler = Callable[[str, bytes, bool], None]


class FastPahoClient(paho.Client):
    """A paho client with buffered reads, coalesced writes and a lean QoS 0/1 message path."""

    _partial: list[bytes] | None = None  # the start of a packet not yet whole, as it arrived
    _partial_size = 0
    _partial_needs = 0  # bytes to hold before parsing again
    _partial_sock: Any = None
    _quick_mids: set[int] | None = None
    _io_loop: asyncio.AbstractEventLoop | None = None
    _io_thread = 0
    _flush_pending = False
    message_handler: MessageHandler | None = None

    # -- reading ------------------------------------------------------------------------------

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has and handle every complete packet in it."""
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._sock is not self._partial_sock:  # a new connection: nothing left over belongs to it
            self._partial, self._partial_sock = None, self._sock
        try:
            data = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = paho.time_func()
        if self._partial is not None:
            # Pieces of a large packet are kept as they come and joined once it is whole: joining
            # on every read would copy a megabyte packet ~16 times over in 64 KiB reads.
            self._partial.append(data)
            self._partial_size += len(data)
            if self._partial_size < self._partial_needs:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            data, self._partial = b"".join(self._partial), None
        return self._handle_buffer(data)

    def _handle_buffer(self, buffer: bytes) -> MQTTErrorCode:
        """Handle every whole packet in `buffer`; keep the start of an incomplete last one."""
        pos, end = 0, len(buffer)
        while pos < end:
            frame = _frame_at(buffer, pos)
            if frame is None:  # even the length is not all here
                self._keep_partial(buffer[pos:], end - pos + 1)
                break
            command, start, stop = frame
            if start < 0:
                self._easy_log(paho.MQTT_LOG_ERR, "malformed packet: remaining length over 4 bytes")
                return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            if stop > end:
                self._keep_partial(buffer[pos:], stop - pos)
                break
            rc = self._handle_packet(command, buffer[start:stop])
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._loop_rc_handle(rc)
            if self._sock is None:  # the packet closed the connection
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            pos = stop
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _keep_partial(self, start: bytes, needs: int) -> None:
        self._partial, self._partial_size, self._partial_needs = [start], len(start), needs

    def _handle_packet(self, command: int, body: bytes) -> MQTTErrorCode:
        kind = command & 0xF0
        if (
            kind == _PUBLISH
            and self.message_handler is not None
            and self._protocol == MQTTProtocolVersion.MQTTv311
            and (command >> 1) & 3 < 2
        ):
            return self._handle_publish_quick(command, body)
        if kind == _PUBACK and self._quick_mids and len(body) == 2:
            mid = int.from_bytes(body, "big")
            if mid in self._quick_mids:
                self._quick_mids.discard(mid)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL

    def _handle_publish_quick(self, command: int, body: bytes) -> MQTTErrorCode:
        """A 3.1.1 QoS 0/1 PUBLISH: hand (topic, payload, retain) to `message_handler`, then PUBACK a
        QoS-1 one. The RETAIN flag is bit 0 of the command byte."""
        qos = (command >> 1) & 3
        if len(body) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        topic_end = 2 + int.from_bytes(body[:2], "big")
        payload_start = topic_end + (2 if qos else 0)
        if payload_start > len(body):
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        try:
            topic = body[2:topic_end].decode()
        except UnicodeDecodeError:
            self._easy_log(paho.MQTT_LOG_ERR, "PUBLISH with a topic that is not UTF-8 ignored")
            topic = ""
        handler = self.message_handler
        if topic and handler is not None:
            try:
                handler(topic, body[payload_start:], bool(command & 1))
            except Exception:  # one bad message must not cost the connection (and every other one)
                log.exception("mqtt: the message handler failed on a message to %s", topic)
        if qos == 1:
            return self._send_puback(int.from_bytes(body[topic_end:payload_start], "big"))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # -- writing ------------------------------------------------------------------------------

    def _mid_generate(self) -> int:
        """paho's next packet id, skipping ids still waiting for a PUBACK.

        Quick publishes are matched here and paho's own in `_out_messages`; after the 16-bit id
        wraps, one id in both would let one PUBACK answer the wrong publish.
        """
        while True:
            mid = super()._mid_generate()
            if not (self._quick_mids and mid in self._quick_mids) and mid not in self._out_messages:
                return mid

    def publish_quick(self, topic: bytes, payload: bytes) -> bool:
        """Queue a QoS-1 PUBLISH; `topic` is already UTF-8. False if not connected."""
        if self._sock is None or not self.is_connected():
            return False
        mid = self._mid_generate()
        if self._quick_mids is None:
            self._quick_mids = set()
        self._quick_mids.add(mid)
        length = 2 + len(topic) + 2 + len(payload)
        header = bytearray(b"\x32")
        while True:
            byte, length = length & 0x7F, length >> 7
            header.append(byte | 0x80 if length else byte)
            if not length:
                break
        packet = b"".join((header, len(topic).to_bytes(2, "big"), topic, mid.to_bytes(2, "big"), payload))
        return self._packet_queue(_PUBLISH, packet, mid, 1) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        self._out_packet.append(
            {
                "command": command,
                "mid": mid,
                "qos": qos,
                "pos": 0,
                "to_process": len(packet),
                "packet": packet,
                "info": info,
            }
        )
        if self._io_loop is not None and threading.get_ident() == self._io_thread:
            # On the loop: one flush at the end of this iteration sends everything queued in it.
            if not self._flush_pending:
                self._flush_pending = True
                self._io_loop.call_soon(self._flush)
        else:  # paho's CONNECT from aiomqtt's connect thread: aiomqtt's thread-safe writer path
            self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _flush(self) -> None:
        self._flush_pending = False
        if self._sock is None or not self._out_packet:
            return
        try:
            self.loop_write()  # on EAGAIN paho registers the socket with aiomqtt and finishes later
        except Exception as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to write to the socket: %s", err)
            self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)

    def _packet_write(self) -> MQTTErrorCode:
        queued = self._out_packet
        if len(queued) < 2 or any(_needs_paho_write(packet) for packet in queued):
            return super()._packet_write()
        data = b"".join(bytes(packet["packet"][packet["pos"] :]) for packet in queued)
        try:
            sent = self._sock_send(data)
        except (AttributeError, ValueError):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._easy_log(paho.MQTT_LOG_ERR, "failed to send on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        while queued and sent > 0:
            packet = queued[0]
            taken = min(sent, packet["to_process"])
            packet["pos"] += taken
            packet["to_process"] -= taken
            sent -= taken
            if packet["to_process"] == 0:
                queued.popleft()
        with self._msgtime_mutex:
            self._last_msg_out = paho.time_func()
        return MQTTErrorCode.MQTT_ERR_AGAIN if queued else MQTTErrorCode.MQTT_ERR_SUCCESS


def _frame_at(buffer: bytes, pos: int) -> tuple[int, int, int] | None:
    """(command byte, body start, body end) of the packet at `pos`; None if its length is not all here.

    The body may end beyond the buffer (the packet is not all here yet). A remaining length of more
    than four bytes (a protocol error) gives a body start of -1.
    """
    end = len(buffer)
    length, shift, index = 0, 0, pos + 1
    while index < end:
        byte = buffer[index]
        index += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return buffer[pos], index, index + length
        shift += 7
        if shift >= 7 * _MAX_LENGTH_BYTES:
            return buffer[pos], -1, -1
    return None


def _needs_paho_write(packet: Any) -> bool:
    """Packets whose completion paho acts on as they are written: QoS-0 publishes and DISCONNECT."""
    command: int = packet["command"] & 0xF0
    return command == _DISCONNECT or (command == _PUBLISH and packet["qos"] == 0)


def use_fast_io(client: aiomqtt.Client) -> FastPahoClient:
    """Switch the paho client under a not yet connected aiomqtt client to FastPahoClient.

    Call it on the event loop that will run the client.
    """
    inner = client._client  # the paho client under aiomqtt ~2.5
    if type(inner) is not paho.Client:
        raise TypeError(f"expected a paho Client under aiomqtt, found {type(inner).__name__}")
    inner.__class__ = FastPahoClient
    assert isinstance(inner, FastPahoClient)
    inner._io_loop, inner._io_thread = asyncio.get_running_loop(), threading.get_ident()
    return inner
