"""The node at a glance: `/v1/status`, `/healthz`'s problems and the gauges refreshed before a scrape.

Built from the parts it reads, so that the API, the status page and the gateway's `hub/state` get
the node's state without being handed the whole hub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contract.records import utc_now
from hub import __version__
from hub.config import HubConfig
from hub.hall.alerts import AlertBook
from hub.hall.followup import FollowupBook
from hub.hall.sessions import SessionManager
from hub.hall.windows import WindowBook
from hub.ingest.device_alerts import DeviceAlerts
from hub.ingest.devices import DeviceRegistry
from hub.metrics import HubMetrics
from hub.privacy.redact import redact
from hub.store.outbox import Outbox, StoreUnavailable

WRITER_STALL_S = 10.0
"""No commit for this long and the writer does not answer a ping within it: the hub is degraded."""


@dataclass
class SyncState:
    """When the uplink last delivered a batch; written by the uplink, read by status and `hub/state`."""

    last_sync: str | None = None


class NodeStatus:
    """What the node's parts say about themselves, put together for people and for monitoring."""

    def __init__(
        self,
        config: HubConfig,
        *,
        outbox: Outbox,
        registry: DeviceRegistry,
        metrics: HubMetrics,
        alerts: AlertBook,
        followups: FollowupBook,
        device_alerts: DeviceAlerts,
        sessions: SessionManager,
        broker_connected: Callable[[], bool],
        sync: SyncState,
        pull_enabled: bool,
        windows: WindowBook | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.registry = registry
        self.metrics = metrics
        self.alerts = alerts
        self.followups = followups
        self.device_alerts = device_alerts
        self.sessions = sessions
        self.broker_connected = broker_connected
        self.sync = sync
        self.pull_enabled = pull_enabled
        self.windows = windows
        self.started_at = utc_now()

    async def summary(self) -> tuple[int, str | None]:
        """Pending records and the last sync, for the retained `hub/state`."""
        stats = await self.outbox.stats()
        return stats.pending, self.sync.last_sync

    async def problems(self) -> list[str]:
        """What makes the hub degraded right now (empty when healthy)."""
        problems = []
        if not self.broker_connected():
            broker = self.config.broker
            problems.append(f"not connected to the MQTT broker at {broker.host}:{broker.port}")
        outbox = self.outbox
        if time.monotonic() - outbox.last_commit_monotonic > WRITER_STALL_S:
            try:
                await asyncio.wait_for(outbox.ping(), timeout=WRITER_STALL_S)
            except (TimeoutError, StoreUnavailable) as exc:
                problems.append(f"outbox writer not answering: {exc or 'timeout'}")
        if outbox.failing_since is not None:
            problems.append(f"outbox cannot write: {outbox.last_failure} (devices are not acked and retry)")
        if outbox.recovered_from is not None:
            problems.append(
                f"outbox was damaged and moved aside to {outbox.recovered_from}; "
                f"{outbox.salvaged} pending records salvaged"
            )
        stats = await outbox.stats()
        if stats.max_bytes and stats.used_bytes >= 0.9 * stats.max_bytes:
            problems.append(
                f"outbox {stats.used_bytes // 2**20} MB of {stats.max_bytes // 2**20} MB: telemetry is shed"
            )
        return problems

    async def refresh_gauges(self) -> None:
        """Update the outbox gauges before a scrape."""
        stats = await self.outbox.stats()
        metrics = self.metrics
        metrics.outbox_pending.clear()
        for kind, count in stats.pending_by_kind.items():
            metrics.outbox_pending.labels(kind=kind).set(count)
        metrics.outbox_oldest_age.set(stats.oldest_pending_age_s())
        metrics.outbox_used_bytes.set(stats.used_bytes)
        metrics.outbox_dead_letters.set(stats.dead_letters)
        metrics.outbox_failed_writes.set(self.outbox.failed_writes)
        metrics.devices_online.set(self.registry.online_count)

    async def status(self) -> dict[str, Any]:
        """The document behind /v1/status, `hallhub status` and the status page (redacted)."""
        stats = await self.outbox.stats()
        node = self.config.node
        broker = self.config.broker
        status = {
            "node": {
                "id": node.id,
                "hall_code": node.hall_code,
                "version": __version__,
                "started_at": self.started_at,
            },
            "broker": {"host": broker.host, "port": broker.port, "connected": self.broker_connected()},
            "devices": [device.to_json() for device in self.registry.all()],
            **self.registry.unknown_status(),  # unknown_devices, unknown_devices_dropped
            "outbox": {
                "pending": stats.pending,
                "pending_by_kind": stats.pending_by_kind,
                "oldest_pending_at": stats.oldest_pending_at,
                "oldest_pending_age_s": round(stats.oldest_pending_age_s(), 1),
                "dead_letters": stats.dead_letters,
                "used_bytes": stats.used_bytes,
                "max_bytes": stats.max_bytes,
                "last_seq": stats.last_seq,
            },
            "alerts": self.alerts.open_alerts(),
            "followups": await self.followups.open_states(),
            "device_alerts": self.device_alerts.open_alerts(),
            "sessions": self.sessions.open_sessions(),
            "windows": self.windows.status() if self.windows is not None else [],
            "sync": {
                "last_sync": self.sync.last_sync,
                "push": bool(self.config.central.url),
                "pull": self.pull_enabled,
            },
        }
        return redact(status)


__all__ = ["WRITER_STALL_S", "NodeStatus", "SyncState"]
