"""A simulated hall supervisor: calls back every bad review and settles it, over the hub's HTTP API.

For the demo: it reads the open follow-ups from `/v1/status` and, after a delay, takes the next
step of each (`callback`, then `rectify`) with the control token, as a supervisor at a window PC
would (§11). Now and then one waits past its deadline, so the overdue alerts show too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from drivers.tasks import raise_if_cancelling

log = logging.getLogger(__name__)

NAMES = ("王主任", "李科长", "张组长")


class SimulatedSupervisor:
    """Takes each open bad review's next step after `delay_s` (randomised), until cancelled."""

    def __init__(
        self,
        api_url: str,
        control_token: str,
        *,
        delay_s: float = 8.0,
        poll_s: float = 1.0,
        late_share: float = 0.1,
        rng: random.Random | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {control_token}"} if control_token else {}
        self.delay_s = delay_s
        self.poll_s = poll_s
        self.late_share = late_share
        self.rng = rng or random.Random()
        self.done: Counter[str] = Counter()
        self._seen: dict[tuple[str, str], float] = {}
        self._skipped: set[str] = set()

    async def run(self) -> None:
        """Poll and act until cancelled; a hub that does not answer is tried again at the next poll."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(self.api_url, timeout=timeout) as http:
            while True:
                try:
                    await self._round(http)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.debug("supervisor: %s", exc)
                raise_if_cancelling()  # a cancelled request can surface as TimeoutError
                await asyncio.sleep(self.poll_s)

    async def _round(self, http: aiohttp.ClientSession) -> None:
        async with http.get("/v1/status", headers=self.headers) as response:
            followups: list[dict[str, Any]] = (await response.json()).get("followups", [])
        now = time.monotonic()
        for item in followups:
            alert_id, step = str(item["alert_id"]), str(item["step"])
            first_seen = self._seen.setdefault((alert_id, step), now)
            if alert_id in self._skipped or now - first_seen < self.rng.uniform(0.5, 1.5) * self.delay_s:
                continue
            if step == "callback" and self.rng.random() < self.late_share:
                self._skipped.add(alert_id)  # this one is left to run late
                continue
            body: dict[str, Any] = {"by": self.rng.choice(NAMES)}
            if step == "callback":
                body["outcome"] = "reached" if self.rng.random() < 0.85 else "unreachable"
            else:
                body["substantiated"] = self.rng.random() < 0.6
            async with http.post(
                f"/v1/alerts/{alert_id}/{step}", json=body, headers=self.headers
            ) as response:
                if response.status == 200:
                    self.done[step] += 1


__all__ = ["SimulatedSupervisor"]
