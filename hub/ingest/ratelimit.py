"""Per-device rate limits: a flooding device must not starve the others (DESIGN guarantee 5).

A token bucket per key on the monotonic clock. Written here because it is a dozen lines and the
libraries that offer one bring their own async machinery the gateway does not need.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """`rate` messages a second per key, with bursts up to `burst`.

    `max_keys` bounds the keys kept, for keys that come from the network (a phone's address, §13):
    when a new key would pass it, buckets that have refilled (as good as forgotten) are dropped,
    then the oldest. Devices are configured, so the gateway needs no bound."""

    rate: float
    burst: float
    max_keys: int | None = None
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    limited: dict[str, int] = field(default_factory=dict)

    def allow(self, key: str, now: float | None = None) -> bool:
        """Take a token for `key`; False (and counted) when its bucket is empty."""
        moment = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if self.max_keys is not None and len(self._buckets) >= self.max_keys:
                self._make_room(moment)
            bucket = self._buckets[key] = _Bucket(self.burst, moment)
        bucket.tokens = min(self.burst, bucket.tokens + (moment - bucket.updated) * self.rate)
        bucket.updated = moment
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        self.limited[key] = self.limited.get(key, 0) + 1
        return False

    def _make_room(self, now: float) -> None:
        """Drop refilled buckets; if none has, the oldest (its key's count of refusals goes too)."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst
        ]
        for key in full or [next(iter(self._buckets))]:
            del self._buckets[key]
            self.limited.pop(key, None)
