"""A simulated MQTT device (terminal, rating pad, print terminal) at the real boundary: the broker.

It speaks the §2 contract with the hub's own schemas, retries every message with the same msg_id
until it is acked, as real firmware must, and keeps what it heard (acks, commands, errors). A pad
prompted with a rating link draws it as a QR code on its `screen` (§13), in text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiomqtt

from contract.mqtt import AckPayload, CmdPayload, ErrorPayload
from contract.topics import Topics
from drivers.history import remember
from drivers.tasks import raise_if_cancelling
from hub.simulate.qr_art import qr_text


class NotAcked(Exception):
    """The hub did not ack a message within the simulator's retry budget."""


@dataclass
class DeviceLog:
    """What a simulated device received."""

    acks: list[AckPayload] = field(default_factory=list)
    commands: list[CmdPayload] = field(default_factory=list)
    errors: list[ErrorPayload] = field(default_factory=list)


class SimulatedMqttDevice:
    """One device's MQTT client; use as `async with SimulatedMqttDevice(...) as device:`."""

    def __init__(
        self,
        host: str,
        port: int,
        node_id: str,
        device_id: str,
        *,
        kind: str = "terminal",
        username: str | None = None,
        password: str | None = None,
        retry_interval_s: float = 1.0,
        max_attempts: int = 30,
    ) -> None:
        self.topics = Topics(node_id)
        self.device_id = device_id
        self.kind = kind
        self.retry_interval_s = retry_interval_s
        self.max_attempts = max_attempts
        self.log = DeviceLog()
        self.on_command: Callable[[CmdPayload], Awaitable[None]] | None = None
        self.qr_url: str | None = None
        """The rating link of the session it was last prompted for (§13), None once it ends."""
        self.screen: str | None = None
        """What the pad shows for it: the link as a QR code in text (the link itself without segno)."""
        self._pending: dict[str, asyncio.Future[AckPayload]] = {}
        self._errors = asyncio.Queue[ErrorPayload]()
        self._options: dict[str, Any] = {
            "hostname": host,
            "port": port,
            "username": username,
            "password": password,
            "identifier": f"sim-{device_id}-{uuid.uuid4().hex[:8]}",
            "will": aiomqtt.Will(
                self.topics.device(device_id, "state"), b'{"online":false}', qos=1, retain=True
            ),
            "clean_session": True,
            "max_inflight_messages": 1000,
            "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        }
        self._mqtt: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._first_error: BaseException | None = None

    async def __aenter__(self) -> SimulatedMqttDevice:
        self._runner = asyncio.create_task(self._run())
        connected = asyncio.create_task(self._connected.wait())
        await asyncio.wait({self._runner, connected}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if not self._connected.is_set():
            connected.cancel()
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._runner
            raise aiomqtt.MqttError(f"{self.device_id}: cannot connect: {self._first_error}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            if self._mqtt is not None and self._connected.is_set():
                await self.publish_raw("state", b'{"online":false}', retain=True)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._runner

    async def _run(self) -> None:
        """Stay connected as firmware does: reconnect after the broker goes away."""
        while True:
            try:
                async with aiomqtt.Client(**self._options) as client:
                    for leaf in ("ack", "cmd", "error"):
                        await client.subscribe(self.topics.device(self.device_id, leaf), qos=1)
                    self._mqtt = client
                    state = {"online": True, "kind": self.kind, "fw": "sim-1.0"}
                    await client.publish(
                        self.topics.device(self.device_id, "state"), json.dumps(state), qos=1, retain=True
                    )
                    self._connected.set()
                    await self._read(client)
            except aiomqtt.MqttError as exc:
                self._first_error = self._first_error or exc
            finally:
                self._connected.clear()
                self._mqtt = None
            raise_if_cancelling()  # aiomqtt raises MqttError when cancelled while connecting
            await asyncio.sleep(0.2)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            leaf = str(message.topic).rsplit("/", 1)[-1]
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if leaf == "ack":
                ack = AckPayload.decode(payload)
                remember(self.log.acks, ack)
                future = self._pending.get(ack.msg_id)
                if future is not None and not future.done():
                    future.set_result(ack)
            elif leaf == "cmd":
                command = CmdPayload.decode(payload)
                remember(self.log.commands, command)
                self._draw(command)
                if self.on_command is not None:
                    await self.on_command(command)
            elif leaf == "error":
                error = ErrorPayload.decode(payload)
                remember(self.log.errors, error)
                self._errors.put_nowait(error)

    def _draw(self, command: CmdPayload) -> None:
        """A prompt with a link puts its QR code on the screen; the session's end takes it off."""
        if command.cmd == "prompt" and command.qr_url:
            self.qr_url = command.qr_url
            self.screen = qr_text(command.qr_url) or command.qr_url
        elif command.cmd in {"cancel", "prompt"}:
            self.qr_url = None
            self.screen = None

    async def publish_raw(self, leaf: str, payload: bytes | str, *, retain: bool = False) -> None:
        """Publish anything (also malformed payloads, for tests) on one of this device's topics."""
        data = payload.encode() if isinstance(payload, str) else payload
        client = self._mqtt
        if client is None:
            raise aiomqtt.MqttError(f"{self.device_id}: not connected")
        await client.publish(self.topics.device(self.device_id, leaf), data, qos=1, retain=retain)

    async def send(self, leaf: str, body: dict[str, Any], msg_id: str | None = None) -> AckPayload:
        """Send a message with a msg_id and resend it until acked, like firmware must."""
        msg_id = msg_id or uuid.uuid4().hex
        body = {"msg_id": msg_id, **body}
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            for _attempt in range(self.max_attempts):
                with contextlib.suppress(aiomqtt.MqttError):
                    await self.publish_raw(leaf, json.dumps(body, ensure_ascii=False))
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), self.retry_interval_s)
            raise NotAcked(f"{self.device_id}: {leaf} {msg_id} not acked after {self.max_attempts} tries")
        finally:
            self._pending.pop(msg_id, None)

    async def rate(self, level: int, msg_id: str | None = None, **fields: Any) -> AckPayload:
        """Send a rating and wait for its ack."""
        return await self.send("rating", {"level": level, **fields}, msg_id)

    async def next_error(self, timeout: float = 5.0) -> ErrorPayload:
        """The next message on this device's error topic."""
        return await asyncio.wait_for(self._errors.get(), timeout)

    async def ack_for(self, msg_id: str, timeout: float = 5.0) -> AckPayload:
        """Wait for an ack of `msg_id` without resending (for raw publishes in tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ack in reversed(self.log.acks):
                if ack.msg_id == msg_id:
                    return ack
            await asyncio.sleep(0.01)
        raise NotAcked(f"{self.device_id}: no ack for {msg_id} within {timeout} s")
