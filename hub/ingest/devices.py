"""What the hub knows about each configured device right now (online, last seen, errors)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from contract.records import utc_now
from hub.config import DeviceSection

# Unknown device ids remembered (the most recently seen); older ones are forgotten and counted, so
# that a stream of made-up ids costs neither memory nor an ever longer /v1/status.
MAX_UNKNOWN_KEPT = 100


@dataclass(slots=True)
class DeviceState:
    """Live state of one device, shown on /v1/status and the status page."""

    id: str
    kind: str
    transport: str
    window: str | None
    online: bool = False
    last_seen: str | None = None
    last_seen_monotonic: float | None = None
    fw: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    faults: tuple[str, ...] = ()
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The status document of this device."""
        return {
            "id": self.id,
            "kind": self.kind,
            "transport": self.transport,
            "window": self.window,
            "online": self.online,
            "last_seen": self.last_seen,
            "fw": self.fw,
            "errors": dict(self.errors),
            "faults": list(self.faults),
            "detail": self.detail,
        }


class DeviceRegistry:
    """Configured devices and their live state; unknown ids are counted, never added."""

    def __init__(self, devices: list[DeviceSection]) -> None:
        self._devices = {
            d.id: DeviceState(id=d.id, kind=d.kind, transport=d.transport, window=d.window) for d in devices
        }
        # Messages per unknown id, the most recently seen last; at most MAX_UNKNOWN_KEPT of them.
        self.unknown: dict[str, int] = {}
        self.unknown_dropped = 0  # unknown ids forgotten to keep `unknown` bounded
        self.on_unknown_dropped: Callable[[], None] | None = None  # e.g. a metric's `inc`
        self._unknown_answered: dict[str, float] = {}  # monotonic time of the last reply, per kept id

    def get(self, device_id: str) -> DeviceState | None:
        """The device's state, or None if it is not configured."""
        return self._devices.get(device_id)

    def all(self) -> list[DeviceState]:
        """Every configured device."""
        return list(self._devices.values())

    def seen(self, device_id: str) -> None:
        """Any message from the device proves it is alive."""
        state = self._devices.get(device_id)
        if state is not None:
            state.last_seen = utc_now()
            state.last_seen_monotonic = time.monotonic()

    def set_online(self, device_id: str, online: bool, detail: str = "") -> bool:
        """Record an online/offline change; True if it changed."""
        state = self._devices.get(device_id)
        if state is None:
            return False
        changed = state.online != online
        state.online = online
        state.detail = detail
        if online:
            self.seen(device_id)
        return changed

    def count_error(self, device_id: str, reason: str) -> None:
        """Count a rejected message or dropped frame against the device (or as unknown)."""
        state = self._devices.get(device_id)
        if state is None:
            self._count_unknown(device_id)
            return
        state.errors[reason] = state.errors.get(reason, 0) + 1

    def _count_unknown(self, device_id: str) -> None:
        """Count a message from an unknown id, moving it to the newest end; forget the oldest id
        beyond MAX_UNKNOWN_KEPT (a dict keeps insertion order, so re-inserting is "seen last")."""
        unknown = self.unknown
        unknown[device_id] = unknown.pop(device_id, 0) + 1
        if len(unknown) > MAX_UNKNOWN_KEPT:
            oldest = next(iter(unknown))
            del unknown[oldest]
            self._unknown_answered.pop(oldest, None)
            self.unknown_dropped += 1
            if self.on_unknown_dropped is not None:
                self.on_unknown_dropped()

    def may_answer_unknown(self, device_id: str, interval_s: float, now: float) -> bool:
        """Whether a kept unknown id (counted first) was last answered `interval_s` or more ago."""
        last = self._unknown_answered.get(device_id)
        return device_id in self.unknown and (last is None or now - last >= interval_s)

    def answered_unknown(self, device_id: str, now: float) -> None:
        """Note a reply to a kept unknown id (forgotten with the id)."""
        if device_id in self.unknown:
            self._unknown_answered[device_id] = now

    def unknown_status(self) -> dict[str, Any]:
        """The unknown ids for /v1/status: the kept ones with their counts, and how many were dropped."""
        return {"unknown_devices": dict(self.unknown), "unknown_devices_dropped": self.unknown_dropped}

    @property
    def online_count(self) -> int:
        """Devices online now."""
        return sum(1 for d in self._devices.values() if d.online)

    def rating_device_for(self, window: str) -> DeviceState | None:
        """The keypad or pad bound to a window (config allows one)."""
        for state in self._devices.values():
            if state.window == window and state.kind in ("keypad", "pad"):
                return state
        return None
