"""Device fault alerts: a print terminal out of paper, jammed, its door open or output full, or any
device offline longer than `[alerts] offline_after_s`.

Each condition raises one `alert` record (`data.type = "device_fault"`, `state = "raised"`) when it
starts and another (`state = "cleared"`, with `raised_id`) when it ends. Records go through the
outbox like every other record, so they are mirrored on MQTT `alerts` and sent upstream (alerts
first). What is true now (`conditions`) and what has been raised (`open`) are kept apart and
reconciled after every change and on every tick, so a raise the outbox could not store is retried
rather than lost. The open set is kept in the outbox's key-value table, so that a hub restart does
not raise a still-jammed printer a second time.

Health fields are read as reports: a fault clears only when its field says so (`"jam": false`,
`"paper": "ok"`); a report that leaves a field out changes nothing about it. Offline works the same
way: "offline long enough" raises, "online" clears, "offline for a moment" changes nothing (which is
also what a restarted hub sees before the devices' retained states arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from contract.records import Kind, Record
from hub.config import HubConfig
from hub.ingest.devices import DeviceRegistry
from hub.ingest.intake import Intake
from hub.store.outbox import Stored, StoreUnavailable

log = logging.getLogger(__name__)

ALERT_TYPE: Final = "device_fault"
KV_KEY: Final = "device_alerts.open"
OFFLINE: Final = "offline"

# Fault name → what a person reads on the status page.
FAULTS: Final[dict[str, str]] = {
    "paper_out": "out of paper",
    "jam": "paper jam",
    "door_open": "door open",
    "output_full": "output tray full",
    OFFLINE: "offline",
}

MIN_TICK_S: Final = 0.1
MAX_TICK_S: Final = 5.0

Key = tuple[str, str]  # (device_id, fault)


def health_changes(report: Mapping[str, Any]) -> dict[str, bool]:
    """Which faults a `health` report says are present (True) or absent (False); others unknown."""
    changes: dict[str, bool] = {}
    paper = report.get("paper")
    if paper is not None:
        changes["paper_out"] = paper == "out"
    for fault in ("jam", "door_open", "output_full"):
        value = report.get(fault)
        if isinstance(value, bool):
            changes[fault] = value
    return changes


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """A raised, not yet cleared device fault (persisted as JSON in the outbox's kv table)."""

    id: str
    device_id: str
    fault: str
    raised_at: str
    detail: str = ""


class DeviceAlerts:
    """Raises and clears `device_fault` alerts; `run()` is a hub service, `on_health` a gateway hook."""

    def __init__(
        self,
        config: HubConfig,
        registry: DeviceRegistry,
        intake: Intake,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registry = registry
        self.intake = intake
        self.offline_after_s = config.alerts.offline_after_s
        self._clock = clock
        self._started = clock()
        self._conditions: dict[Key, str] = {}
        self._open: dict[Key, OpenAlert] = {}
        self._lock = asyncio.Lock()
        self._loaded = False

    @property
    def tick_s(self) -> float:
        """How often offline devices are checked and failed stores retried."""
        if not self.offline_after_s:
            return MAX_TICK_S
        return min(max(self.offline_after_s / 4, MIN_TICK_S), MAX_TICK_S)

    def open_alerts(self) -> list[dict[str, Any]]:
        """Open device faults, oldest first, for /v1/status and the status page."""
        alerts = []
        for alert in sorted(self._open.values(), key=lambda a: (a.raised_at, a.device_id, a.fault)):
            device = self.registry.get(alert.device_id)
            alerts.append(
                {
                    **asdict(alert),
                    "description": FAULTS.get(alert.fault, alert.fault),
                    "window": device.window if device is not None else None,
                    "device_kind": device.kind if device is not None else None,
                }
            )
        return alerts

    async def run(self) -> None:
        """Load the open set, then check offline devices and reconcile every tick until cancelled."""
        while True:
            try:
                await self.check()
            except StoreUnavailable as exc:
                log.warning("device alerts: outbox unavailable (%s); retrying", exc)
            except Exception:  # a bug here must not stop the hub (its TaskGroup would end)
                log.exception("device alerts: check failed; retrying")
            await asyncio.sleep(self.tick_s)

    async def on_health(self, device_id: str, report: Mapping[str, Any]) -> None:
        """Gateway hook: a device's `health` report changed."""
        changes = health_changes(report)
        if not changes:
            return
        try:
            async with self._lock:
                await self._load()
                for fault, present in changes.items():
                    self._set((device_id, fault), present, "")
                await self._reconcile()
        except StoreUnavailable as exc:
            log.warning("device alerts: outbox unavailable (%s); retrying on the next tick", exc)
        except Exception:  # the health record is still stored by the gateway
            log.exception("device alerts: health report from %s not evaluated", device_id)

    async def check(self) -> None:
        """Evaluate offline devices now and store what changed."""
        async with self._lock:
            await self._load()
            now = self._clock()
            for device in self.registry.all():
                key = (device.id, OFFLINE)
                if not self.offline_after_s or device.online:
                    self._set(key, False, "")
                    continue
                since = device.last_seen_monotonic
                offline_for = now - (since if since is not None else self._started)
                if offline_for >= self.offline_after_s:
                    seen = f"last seen {device.last_seen}" if device.last_seen else "not seen since start"
                    detail = f"{seen}; {device.detail}" if device.detail else seen
                    self._set(key, True, detail)
            await self._reconcile()

    def _set(self, key: Key, present: bool, detail: str) -> None:
        if present:
            self._conditions.setdefault(key, detail)
        else:
            self._conditions.pop(key, None)

    async def _load(self) -> None:
        """Read the open set once; still-open faults count as present until reported otherwise."""
        if self._loaded:
            return
        raw = await self.intake.outbox.kv_get(KV_KEY)
        self._loaded = True
        if not raw:
            return
        try:
            entries = json.loads(raw)
            loaded = [OpenAlert(**entry) for entry in entries]
        except (ValueError, TypeError) as exc:
            log.error("device alerts: ignoring unreadable open set in the outbox (%s)", exc)
            return
        for alert in loaded:
            key = (alert.device_id, alert.fault)
            self._open[key] = alert
            if self.registry.get(alert.device_id) is not None:
                self._conditions[key] = alert.detail

    async def _reconcile(self) -> None:
        """Raise what is present but not open, clear what is open but no longer present."""
        changed = False
        try:
            for key, detail in list(self._conditions.items()):
                if key not in self._open:
                    self._open[key] = await self._raise(key, detail)
                    changed = True
            for key, alert in list(self._open.items()):
                if key not in self._conditions:
                    await self._clear(alert)
                    del self._open[key]
                    changed = True
        finally:
            if changed:
                with contextlib.suppress(StoreUnavailable):
                    entries = [asdict(alert) for alert in self._open.values()]
                    await self.intake.outbox.kv_set(KV_KEY, json.dumps(entries, ensure_ascii=False))

    def _record(self, device_id: str, fault: str, state: str, detail: str, **extra: Any) -> Record:
        device = self.registry.get(device_id)
        data: dict[str, Any] = {
            "type": ALERT_TYPE,
            "state": state,
            "device_id": device_id,
            "device_kind": device.kind if device is not None else None,
            "window": device.window if device is not None else None,
            "fault": fault,
            "detail": detail,
            "node_id": self.config.node.id,
            **extra,
        }
        return Record(kind=Kind.ALERT, data=data)

    async def _store(self, record: Record) -> None:
        result = await self.intake.store([record])
        if not isinstance(result, Stored):
            raise StoreUnavailable(f"alert not stored: {result}")

    async def _raise(self, key: Key, detail: str) -> OpenAlert:
        device_id, fault = key
        record = self._record(device_id, fault, "raised", detail)
        await self._store(record)
        log.warning("device %s: %s%s", device_id, FAULTS.get(fault, fault), f" ({detail})" if detail else "")
        return OpenAlert(record.id, device_id, fault, record.created_at, detail)

    async def _clear(self, alert: OpenAlert) -> None:
        detail = "" if self.registry.get(alert.device_id) is not None else "device no longer configured"
        record = self._record(
            alert.device_id, alert.fault, "cleared", detail, raised_id=alert.id, raised_at=alert.raised_at
        )
        await self._store(record)
        log.info("device %s: %s cleared (raised %s)", alert.device_id, alert.fault, alert.raised_at)


__all__ = ["ALERT_TYPE", "FAULTS", "DeviceAlerts", "OpenAlert", "health_changes"]
