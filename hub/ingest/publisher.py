"""What the hub says on the node broker (CONTRACTS §2): acks, errors, record mirrors, session updates,
pad commands and `hub/state`.

Split from the gateway so that the parts that speak to devices (sessions, device alerts) get this in
their constructors before the gateway exists: the gateway attaches its client on each connection.
Publishes are pipelined: acks and mirrors are queued at QoS 1 without waiting for each PUBACK.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from contract.mqtt import (
    AckPayload,
    CmdPayload,
    ErrorPayload,
    HubState,
    SessionUpdate,
    WindowError,
    WindowState,
)
from contract.records import Kind, Record
from contract.topics import Topics
from hub import mqtt
from hub.config import DeviceSection
from hub.hall.sessions import PromptFailed
from hub.ingest.devices import DeviceRegistry
from hub.metrics import HubMetrics

log = logging.getLogger(__name__)

TOPIC_CACHE_SIZE = 10_000  # encoded topics kept (a node has tens of devices, each a few topics)


class MqttPublisher:
    """The outgoing side of the hub's MQTT connection; every publish is False while disconnected."""

    def __init__(self, topics: Topics, registry: DeviceRegistry, metrics: HubMetrics) -> None:
        self.topics = topics
        self.registry = registry
        self.metrics = metrics
        self._connection: mqtt.Client | None = None
        self._topic_bytes: dict[str, bytes] = {}

    @property
    def attached(self) -> bool:
        """True while a client is attached (from before CONNECT until the connection ends)."""
        return self._connection is not None

    def attach(self, client: mqtt.Client | None) -> None:
        """Publish through `client` from now on (None: the connection is gone)."""
        self._connection = client

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1 and wait for the PUBACK; False if not connected or the broker went away."""
        client = self._connection
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=retain)
        except mqtt.MqttError as exc:
            log.debug("mqtt: publish to %s failed: %s", topic, exc)
            return False
        return True

    def publish_nowait(self, topic: str, payload: bytes) -> bool:
        """Queue a QoS-1 publish without waiting for the broker's PUBACK; False if not connected.

        For acks and event mirrors, whose failure the hub never acts on (a device retries until it
        hears its ack). Awaiting each PUBACK would cost a future and a task per publish.
        """
        client = self._connection
        if client is None:
            return False
        encoded = self._topic_bytes.get(topic)
        if encoded is None:
            encoded = topic.encode()
            if len(self._topic_bytes) < TOPIC_CACHE_SIZE:
                self._topic_bytes[topic] = encoded
        try:
            client.publish_nowait(encoded, payload)
        except mqtt.MqttError as exc:  # not connected (any more), or 65,535 publishes unconfirmed
            log.debug("mqtt: publish to %s not queued: %s", topic, exc)
            return False
        return True

    def ack(self, device_id: str, ack: AckPayload) -> None:
        """`dev/{device}/ack`, counted by status."""
        self.metrics.inc(self.metrics.acks, ack.status)
        self.publish_nowait(self.topics.ack(device_id), ack.encode())

    async def error(self, device_id: str, topic: str, message: str) -> None:
        """`dev/{device}/error`: why a message on `topic` was refused."""
        await self.publish(self.topics.error(device_id), ErrorPayload(error=message, topic=topic).encode())

    def error_nowait(self, device_id: str, topic: str, message: str) -> None:
        """`dev/{device}/error` without waiting (refusals that can come in floods)."""
        self.publish_nowait(self.topics.error(device_id), ErrorPayload(error=message, topic=topic).encode())

    def mirror(self, records: list[Record]) -> None:
        """Outbox listener: publish each stored record on events/{kind}, alerts also on alerts."""
        if self._connection is None:
            return
        for record in records:
            body = _wire_bytes(record)
            self.publish_nowait(self.topics.event(str(record.kind)), body)
            if record.kind is Kind.ALERT:
                self.publish_nowait(self.topics.alerts, body)

    async def alert(self, alert: Mapping[str, object]) -> None:
        """An alert that could not be stored, straight onto `alerts`."""
        await self.publish(self.topics.alerts, json.dumps(alert, ensure_ascii=False).encode())

    async def hub_state(self, state: HubState) -> None:
        """Retained `hub/state`."""
        await self.publish(self.topics.hub_state, state.encode(), retain=True)

    async def publish_session(self, window: str, update: SessionUpdate) -> None:
        """`window/{w}/session`."""
        await self.publish(self.topics.window_session(window), update.encode())

    async def window_state(self, window: str, state: WindowState) -> bool:
        """Retained `window/{w}/state` (§12)."""
        return await self.publish(self.topics.window_state(window), state.encode(), retain=True)

    async def window_error(self, window: str, error: WindowError) -> None:
        """`window/{w}/error`: why a staff event was refused."""
        await self.publish(self.topics.window_error(window), error.encode())

    async def show_pad(self, device: DeviceSection, text: str) -> None:
        """A `show` cmd: the pad displays `text` (the window's state, §12)."""
        await self.publish(self.topics.cmd(device.id), CmdPayload(cmd="show", text=text).encode())

    async def prompt_pad(
        self, device: DeviceSection, session: int, timeout_s: int, text: str, qr_url: str | None = None
    ) -> None:
        """Prompt an MQTT rating pad with a `cmd` it answers with a rating carrying the session; with
        `qr_url`, the session's rating link for the pad to draw as a QR code (§13)."""
        state = self.registry.get(device.id)
        if state is not None and not state.online:
            raise PromptFailed(f"{device.kind} {device.id} offline")
        command = CmdPayload(cmd="prompt", session=session, timeout_s=timeout_s, text=text, qr_url=qr_url)
        if not await self.publish(self.topics.cmd(device.id), command.encode()):
            raise PromptFailed(
                f"cannot reach {device.kind} {device.id}: the hub is not connected to the broker"
            )

    async def cancel_pad(self, device: DeviceSection, session: int) -> None:
        """Tell a pad its prompt is over."""
        await self.publish(self.topics.cmd(device.id), CmdPayload(cmd="cancel", session=session).encode())


def _wire_bytes(record: Record) -> bytes:
    """The record as committed (the outbox already encoded it once)."""
    text = record.wire_json or json.dumps(record.to_wire(), ensure_ascii=False, separators=(",", ":"))
    return text.encode()


__all__ = ["MqttPublisher"]
