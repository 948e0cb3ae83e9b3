"""A simulated window PC (or queue system): asks the hub for evaluations and hears how they end.

It asks over MQTT (`window/{w}/evaluate`), or over HTTP (`POST /v1/windows/{w}/evaluate` with the
control token, §9) when given the API's address; either way it hears the sessions over MQTT.

With `staff=True` it also reports who serves at each window (§12), on the same channel: a member of
staff signs in at every window at the start, and now and then a window pauses (and resumes a few
requests later) or changes hands (sign out, sign in). Its evaluation requests then name no staff,
so that the hub credits whoever is signed in, and it asks nothing of a paused window.
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

from contract.mqtt import SessionUpdate, WindowState
from contract.topics import Topics
from drivers.tasks import raise_if_cancelling

ITEMS = [
    ("370100-001-01", "居民身份证换领"),
    ("370100-017-03", "社保卡补办"),
    ("370100-052-02", "营业执照变更"),
]
STAFF = ["张三", "李四", "王五", "赵六"]
PAUSE_REASONS = ["暂离", "午休", "业务咨询"]
STAFF_EVENT_CHANCE = 0.15
"""In staff mode, the chance that a request is preceded by a staff event at a random window."""


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
        staff: bool = False,
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
        self.staff = staff
        self.staff_events: Counter[str] = Counter()
        """Staff events sent, by event (staff mode)."""
        self.window_states: dict[str, str] = {}
        """Each window's state as the hub last published it on `window/{w}/state` (staff mode)."""
        self._sent_state: dict[str, str | None] = dict.fromkeys(self.windows)
        """Each window's state as this simulator last set it (None: not signed in yet)."""

    async def run(self, max_requests: int | None = None) -> None:
        """Ask for evaluations until cancelled (or `max_requests`); reconnects if the broker goes."""
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    self.host, self.port, identifier=f"window-pc-{uuid.uuid4().hex[:8]}"
                ) as client:
                    await client.subscribe(f"{self.topics.root}/window/+/session", qos=1)
                    if self.staff:
                        await client.subscribe(f"{self.topics.root}/window/+/state", qos=1)
                    listener = asyncio.create_task(self._listen(client))
                    try:
                        await self._ask_forever(client, max_requests)
                        return
                    finally:
                        listener.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await listener
            raise_if_cancelling()  # aiomqtt raises MqttError when cancelled while connecting
            await asyncio.sleep(1.0)

    async def _ask_forever(self, client: aiomqtt.Client, max_requests: int | None) -> None:
        if self.staff:
            for window in self.windows:
                if self._sent_state[window] is None:
                    await self._sign_in(client, window)
        while max_requests is None or self.requests < max_requests:
            raise_if_cancelling()  # aiomqtt's publish (asyncio.wait_for in 3.11) can swallow a cancel
            await asyncio.sleep(self._rng.expovariate(len(self.windows) / self.mean_interval_s))
            if self.staff and self._rng.random() < STAFF_EVENT_CHANCE:
                await self._staff_change(client, self._rng.choice(self.windows))
            open_windows = [w for w in self.windows if self._sent_state.get(w) != "paused"]
            if not open_windows:
                continue
            window = self._rng.choice(open_windows)
            item_code, item_name = self._rng.choice(ITEMS)
            request: dict[str, object] = {
                "request_id": uuid.uuid4().hex[:12],
                "case_no": f"SD{self._rng.randrange(10**9):09d}",
                "item_code": item_code,
                "item_name": item_name,
                "timeout_s": self.timeout_s,
            }
            if not self.staff:  # in staff mode the hub credits whoever is signed in at the window
                request["staff_id"] = f"S{self._rng.randrange(1, 40):03d}"
                request["staff_name"] = self._rng.choice(STAFF)
            await self._send(client, self.topics.window_evaluate(window), "evaluate", window, request)
            self.requests += 1

    async def _sign_in(self, client: aiomqtt.Client, window: str) -> None:
        number = self._rng.randrange(1, 40)
        name = STAFF[number % len(STAFF)]
        await self._staff(client, window, "sign_in", staff_id=f"S{number:03d}", staff_name=name)
        self._sent_state[window] = "open"

    async def _staff_change(self, client: aiomqtt.Client, window: str) -> None:
        """One step of a window's day: pause or hand over an open window, resume a paused one."""
        state = self._sent_state.get(window)
        if state == "paused":
            await self._staff(client, window, "resume")
            self._sent_state[window] = "open"
        elif state is None:
            await self._sign_in(client, window)
        elif self._rng.random() < 0.6:
            await self._staff(client, window, "pause", reason=self._rng.choice(PAUSE_REASONS))
            self._sent_state[window] = "paused"
        else:
            await self._staff(client, window, "sign_out")
            await self._sign_in(client, window)

    async def _staff(self, client: aiomqtt.Client, window: str, event: str, **fields: str) -> None:
        body: dict[str, object] = {"request_id": uuid.uuid4().hex[:12], "event": event, **fields}
        await self._send(client, self.topics.window_staff(window), "staff", window, body)
        self.staff_events[event] += 1

    async def _send(
        self, client: aiomqtt.Client, topic: str, route: str, window: str, body: dict[str, object]
    ) -> None:
        """Over HTTP when given the API's address, else on MQTT."""
        if self.api_url is not None:
            await self._post(f"{self.api_url}/v1/windows/{window}/{route}", body)
        else:
            await client.publish(topic, json.dumps(body, ensure_ascii=False), qos=1)

    async def _post(self, url: str, request: dict[str, object]) -> None:
        """POST with the control token; a refusal is counted by status, not raised."""
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
            if str(message.topic).endswith("/state"):
                with contextlib.suppress(ValueError):
                    state = WindowState.decode(payload)
                    self.window_states[state.window] = state.state
                continue
            update = SessionUpdate.decode(payload)
            self.states[update.state] += 1
            self.last[str(message.topic).split("/")[-2]] = update
