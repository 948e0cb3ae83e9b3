"""A simulated window PC (or queue system): asks the hub for evaluations and hears how they end.

It asks over MQTT (`window/{w}/evaluate`), or over HTTP (`POST /v1/windows/{w}/evaluate` with the
control token, §9) when given the API's address; either way it hears the sessions over MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections import Counter
from collections.abc import Sequence

import aiohttp
import aiomqtt

from contract.mqtt import SessionUpdate
from contract.topics import Topics

ITEMS = [
    ("370100-001-01", "居民身份证换领"),
    ("370100-017-03", "社保卡补办"),
    ("370100-052-02", "营业执照变更"),
]
STAFF = ["张三", "李四", "王五", "赵六"]


class WindowPcSimulator:
    """Publishes `window/{w}/evaluate` for each window at random intervals; counts session states."""

    def __init__(
        self,
        host: str,
        port: int,
        node_id: str,
        windows: Sequence[str],
        *,
        mean_interval_s: float = 8.0,
        timeout_s: int = 30,
        seed: int | None = None,
        api_url: str | None = None,
        control_token: str = "",
    ) -> None:
        self.host = host
        self.port = port
        self.topics = Topics(node_id)
        self.windows = list(windows)
        self.mean_interval_s = mean_interval_s
        self.timeout_s = timeout_s
        self.states: Counter[str] = Counter()
        self.last: dict[str, SessionUpdate] = {}
        self.requests = 0
        self.refused: Counter[int] = Counter()
        self.api_url = api_url.rstrip("/") if api_url else None
        self._headers = {"Authorization": f"Bearer {control_token}"} if control_token else {}
        self._rng = random.Random(seed)

    async def run(self, max_requests: int | None = None) -> None:
        """Ask for evaluations until cancelled (or `max_requests`); reconnects if the broker goes."""
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"window-pc-{uuid.uuid4().hex[:8]}"
                ) as client:
                    await client.subscribe(f"{self.topics.root}/window/+/session", qos=1)
                    listener = asyncio.create_task(self._listen(client))
                    try:
                        await self._ask_forever(client, max_requests)
                        return
                    finally:
                        listener.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await listener
            await asyncio.sleep(1.0)

    async def _ask_forever(self, client: aiomqtt.Client, max_requests: int | None) -> None:
        while max_requests is None or self.requests < max_requests:
            await asyncio.sleep(self._rng.expovariate(len(self.windows) / self.mean_interval_s))
            window = self._rng.choice(self.windows)
            item_code, item_name = self._rng.choice(ITEMS)
            request = {
                "request_id": uuid.uuid4().hex[:12],
                "case_no": f"SD{self._rng.randrange(10**9):09d}",
                "item_code": item_code,
                "item_name": item_name,
                "staff_id": f"S{self._rng.randrange(1, 40):03d}",
                "staff_name": self._rng.choice(STAFF),
                "timeout_s": self.timeout_s,
            }
            if self.api_url is not None:
                await self._ask_over_http(window, request)
            else:
                await client.publish(
                    self.topics.window_evaluate(window), json.dumps(request, ensure_ascii=False), qos=1
                )
            self.requests += 1

    async def _ask_over_http(self, window: str, request: dict[str, object]) -> None:
        """POST the request with the control token; a refusal is counted by status, not raised."""
        url = f"{self.api_url}/v1/windows/{window}/evaluate"
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(url, json=request, headers=self._headers, allow_redirects=False) as answer,
            ):
                if answer.status != 200:
                    self.refused[answer.status] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.refused[0] += 1

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b"{}"
            update = SessionUpdate.model_validate(json.loads(payload))
            self.states[update.state] += 1
            self.last[str(message.topic).split("/")[-2]] = update
