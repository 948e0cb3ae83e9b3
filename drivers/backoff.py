"""The one backoff policy of the node: full jitter.

Every reconnect and retry loop (the drivers' reopen loop, the MQTT gateway, the uplink) draws its
waits from `full_jitter`, so that many devices or nodes that failed at the same moment (a USB hub
reset, pcscd restarting, a broker or the platform coming back) do not retry in step. The gateway
and the uplink keep loops of their own (a stop event ends the gateway's wait; the uplink's wait also
honours `Retry-After`); the drivers use tenacity's loop (`drivers.reopen`). Standard library only,
so that a node with only MQTT devices loads nothing more for it.
"""

from __future__ import annotations

import random

_RNG = random.Random()


def full_jitter(
    attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None, *, floor_s: float = 0.0
) -> float:
    """The wait before retry `attempt` (1, 2, …): uniform in [floor, min(cap, base × 2^(attempt-1))]."""
    exponent = min(max(attempt, 1) - 1, 62)
    high = max(floor_s, min(cap_s, base_s * 2.0**exponent))
    return (rng or _RNG).uniform(floor_s, high)


__all__ = ["full_jitter"]
