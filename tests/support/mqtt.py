"""A plain MQTT observer for tests: subscribe, then read what arrived on each topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt


class Observer:
    """Collects JSON messages by topic."""

    def __init__(self) -> None:
        self.messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.retained: dict[str, list[bool]] = defaultdict(list)
        self._changed = asyncio.Event()

    async def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least `count` messages on `topic`."""
        async with asyncio.timeout(timeout):
            while len(self.messages[topic]) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages[topic]


@contextlib.asynccontextmanager
async def observe(port: int, *filters: str) -> AsyncIterator[Observer]:
    """Subscribe to `filters` on the broker at 127.0.0.1:`port` for the duration of the block."""
    observer = Observer()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"observer-{uuid.uuid4().hex[:8]}") as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b"null"
                observer.messages[str(message.topic)].append(json.loads(payload))
                observer.retained[str(message.topic)].append(bool(message.retain))
                observer._changed.set()

        task = asyncio.create_task(read())
        try:
            yield observer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task
