"""The hub: wires config, outbox, gateway, API and drivers, and runs them under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from contract.records import utc_now
from hub import __version__
from hub.api.access import AccessPolicy
from hub.api.routes import HubApi
from hub.api.server import ConnectionLimits, GuardedServer
from hub.api.status_page import status_page_routes
from hub.api.windows import window_and_alert_routes
from hub.config import HubConfig, Secrets, is_loopback
from hub.hall.alerts import AlertBook
from hub.hall.sessions import PromptPort, SessionManager
from hub.ingest.device_alerts import DeviceAlerts
from hub.ingest.devices import DeviceRegistry
from hub.ingest.driver_host import DriverHost
from hub.ingest.gateway import MqttGateway
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.ops.systemd import notify, watchdog_interval_s
from hub.privacy.redact import redact
from hub.privacy.sealing import NodeIdentifier, load_or_create_secret, preload_crypto
from hub.store.outbox import EvaluationHook, Outbox, StoreUnavailable, WriterDied

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 600.0
DEDUP_KEEP_S = 7 * 86400.0
WRITER_STALL_S = 10.0
CARD_READER_KINDS = frozenset({"idcard", "pcsc"})
"""Device kinds whose drivers read ID numbers through the node's `NodeIdentifier`."""

Service = Callable[[], Coroutine[Any, Any, None]]


async def cancel_and_wait(tasks: list[asyncio.Task[None]], grace_s: float = 1.0) -> None:
    """Cancel services and wait until they are gone, cancelling again any that swallowed it
    (in Python 3.11 `asyncio.wait_for` can), so that shutdown never hangs on one of them."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=grace_s)
        for task in pending:
            log.warning("hub: service %s is still running after cancel; cancelling again", task.get_name())


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's `malloc_trim`), for memory.

    Start-up (imports, building the config and message validators) frees about a megabyte that
    glibc would otherwise keep for the life of the process; the hub trims once, when it is ready.
    Takes well under a millisecond; does nothing on a libc without `malloc_trim`.
    """
    import ctypes  # noqa: PLC0415 (lazy, for memory: needed for this one call only)

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class Hub:
    """One node's hub. `run(stop)` serves until `stop` is set, then shuts down cleanly."""

    def __init__(
        self, config: HubConfig, secrets: Secrets, *, evaluation_hook: EvaluationHook | None = None
    ) -> None:
        """Build every part from the config; `evaluation_hook` annotates each evaluation as it is
        stored (the national mapping, wired in by `sync.node.build_hub`)."""
        self.config = config
        self.secrets = secrets
        self.metrics = HubMetrics()
        data_dir = Path(config.node.data_dir)
        self.outbox = Outbox(
            data_dir / "outbox.db",
            max_bytes=config.outbox.max_mb * 2**20,
            evaluation_hook=evaluation_hook,
        )
        self.registry = DeviceRegistry(config.device)
        self.intake = Intake(config, self.outbox, self.metrics)
        self.gateway = MqttGateway(
            config, secrets, self.intake, self.registry, self.metrics, self._state_summary
        )
        self.sessions = SessionManager(config, self.outbox, self.gateway.publish_session)
        self.sessions.bind("mqtt", PromptPort(self.gateway.prompt_pad, self.gateway.cancel_pad))
        self.gateway.sessions = self.sessions
        self.alerts = AlertBook(self.outbox)
        self.identifier = NodeIdentifier(
            load_or_create_secret(config.node.secret_file),
            hmac=config.privacy.hmac,
            identity_mode=config.privacy.identity,
        )
        if any(device.kind in CARD_READER_KINDS for device in config.device):
            preload_crypto()  # imported lazily for memory; a node with card readers needs it anyway
        self.drivers = DriverHost(
            config, self.intake, self.registry, self.metrics, self.sessions, self.identifier
        )
        listen_host, listen_port = config.api_host_port
        policy = AccessPolicy(
            listen_host,
            listen_port,
            control_token=secrets.control_token,
            view_token=secrets.view_token,
            allowed_hosts=config.api.allowed_hosts,
        )
        self._http: GuardedServer | None = None
        self._fatal: WriterDied | None = None
        self.api = HubApi(
            self,
            secrets.pull_token,
            policy,
            body_timeout_s=config.api.header_timeout_s,
            request_hook=self._request_started,
        )
        self.api.extra_routes += window_and_alert_routes(self)
        self.services: list[tuple[str, Service]] = list(self.drivers.runners())
        self.ready = asyncio.Event()
        self.started_at = utc_now()
        self.last_sync: str | None = None
        self.api_port: int | None = None
        self._runner: web.AppRunner | None = None
        self.device_alerts = DeviceAlerts(config, self.registry, self.intake)
        self.gateway.health_listener = self.device_alerts.on_health
        self.add_service("device-alerts", self.device_alerts.run)
        self.api.extra_routes += status_page_routes(self)

    def add_service(self, name: str, service: Service) -> None:
        """Run `service()` beside the core (drivers, sessions, uplink) until shutdown."""
        self.services.append((name, service))

    async def _state_summary(self) -> tuple[int, str | None]:
        stats = await self.outbox.stats()
        return stats.pending, self.last_sync

    def _request_started(self, request: web.Request) -> Callable[[], None] | None:
        """Clear the connection's header deadline while a request is handled (hub.api.server)."""
        connection = self._http.connection_for(request.transport) if self._http is not None else None
        if connection is None:
            return None
        connection.request_started()
        return connection.request_done

    async def start_api(self) -> None:
        """Listen on `api.listen`; port 0 picks a free port (tests, demo)."""
        host, port = self.config.api_host_port
        if not is_loopback(host):
            log.warning("api: listening on %s, not loopback: changes need api.control_token", host)
        api = self.config.api
        # Idle keep-alive connections go after the header deadline too: they hold descriptors. A
        # request whose body was not read (refused, too slow) closes its connection at once instead
        # of lingering 10 s to drain it: on a hostile network that is a task per abandoned request.
        self._runner = web.AppRunner(
            self.api.make_app(),
            access_log=None,
            keepalive_timeout=api.header_timeout_s,
            lingering_time=0,
        )
        await self._runner.setup()
        limits = ConnectionLimits(api.max_connections, api.header_timeout_s)
        self._http = GuardedServer(self._runner, host, port, limits, self._count_dropped_connection)
        self.api_port = await self._http.start()
        log.info("api: listening on http://%s:%d", host, self.api_port)

    def _count_dropped_connection(self, reason: str) -> None:
        self.metrics.rejects.labels(reason=f"http_{reason}").inc()

    async def run(self, stop: asyncio.Event) -> None:
        """Open the store, serve everything until `stop`, then shut down in order."""
        await self.outbox.open()
        self.outbox.add_listener(self.gateway.mirror)
        self.outbox.add_listener(self.alerts.on_commit)
        await self.alerts.load()
        try:
            await self.start_api()
            async with asyncio.TaskGroup() as group:
                gateway = group.create_task(self.gateway.run(), name="mqtt-gateway")
                others = [group.create_task(service(), name=name) for name, service in self.services]
                others.append(group.create_task(self._maintain(), name="maintenance"))
                others.append(group.create_task(self._watchdog(), name="watchdog"))
                others.append(group.create_task(self._fail_with_writer(stop), name="writer-watch"))
                self.ready.set()
                notify("READY=1")
                release_free_heap()
                # What start-up built (modules, validators, config) lives as long as the process:
                # keep the collector from walking it in every full collection (pauses under load).
                gc.freeze()
                log.info(
                    "hub %s ready: node %s, %d devices",
                    __version__,
                    self.config.node.id,
                    len(self.config.device),
                )
                await stop.wait()
                notify("STOPPING=1")
                log.info("hub: stopping")
                await cancel_and_wait(others)
                await self.gateway.stop()
                await gateway
            if self._fatal is not None:
                raise self._fatal
        finally:
            await self.sessions.close()
            if self._http is not None:
                await self._http.stop()
            if self._runner is not None:
                await self._runner.cleanup()
            await self.outbox.close()
            log.info("hub: stopped")

    async def _maintain(self) -> None:
        """Prune delivered records past their retention, old dedup entries, and the case ledger's
        cases past `national.case_history_days` (by their age alone, CONTRACTS §15)."""
        keep_s = self.config.outbox.retention_days * 86400
        history_s = self.config.national.case_history_days * 86400.0
        while True:
            with contextlib.suppress(StoreUnavailable):
                records, dedup = await self.outbox.prune(keep_s, max(DEDUP_KEEP_S, keep_s))
                if records or dedup:
                    log.info("outbox: pruned %d delivered records and %d dedup entries", records, dedup)
                cases = await self.outbox.prune_case_ledger(history_s)
                if cases:
                    log.info("outbox: forgot %d cases not rated for %.0f days", cases, history_s / 86400)
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)

    async def _fail_with_writer(self, stop: asyncio.Event) -> None:
        """End the hub (`run` raises WriterDied: a non-zero exit, and systemd restarts it) if the
        outbox writer ever stops: a hub that takes messages it cannot store would only look alive.
        It stops by the ordinary path, which is quick and leaves nothing half-closed."""
        assert self.outbox.writer_died is not None
        error = await self.outbox.writer_died
        log.critical("hub: stopping because the outbox writer stopped (%r); systemd restarts it", error)
        self._fatal = WriterDied(f"the outbox writer stopped: {error!r}")
        stop.set()

    async def _watchdog(self) -> None:
        """Send WATCHDOG=1 at half the interval, only while the loop and the writer are alive."""
        interval = watchdog_interval_s()
        if interval is None:
            return
        while True:
            try:
                await asyncio.wait_for(self.outbox.ping(), timeout=interval)
            except (TimeoutError, StoreUnavailable):
                log.error("watchdog: the outbox writer did not answer within %.1f s", interval)
            else:
                notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def problems(self) -> list[str]:
        """What makes the hub degraded right now (empty when healthy)."""
        problems = []
        if not self.gateway.connected:
            broker = self.config.broker
            problems.append(f"not connected to the MQTT broker at {broker.host}:{broker.port}")
        if time.monotonic() - self.outbox.last_commit_monotonic > WRITER_STALL_S:
            try:
                await asyncio.wait_for(self.outbox.ping(), timeout=WRITER_STALL_S)
            except (TimeoutError, StoreUnavailable) as exc:
                problems.append(f"outbox writer not answering: {exc or 'timeout'}")
        if self.outbox.failing_since is not None:
            failure = self.outbox.last_failure
            problems.append(f"outbox cannot write: {failure} (devices are not acked and retry)")
        if self.outbox.recovered_from is not None:
            problems.append(
                f"outbox was damaged and moved aside to {self.outbox.recovered_from}; "
                f"{self.outbox.salvaged} pending records salvaged"
            )
        stats = await self.outbox.stats()
        if stats.max_bytes and stats.used_bytes >= 0.9 * stats.max_bytes:
            problems.append(
                f"outbox {stats.used_bytes // 2**20} MB of {stats.max_bytes // 2**20} MB: telemetry is shed"
            )
        return problems

    async def refresh_gauges(self) -> None:
        """Update the outbox gauges before a scrape."""
        stats = await self.outbox.stats()
        self.metrics.outbox_pending.clear()
        for kind, count in stats.pending_by_kind.items():
            self.metrics.outbox_pending.labels(kind=kind).set(count)
        self.metrics.outbox_oldest_age.set(stats.oldest_pending_age_s())
        self.metrics.outbox_used_bytes.set(stats.used_bytes)
        self.metrics.outbox_dead_letters.set(stats.dead_letters)
        self.metrics.outbox_failed_writes.set(self.outbox.failed_writes)
        self.metrics.devices_online.set(self.registry.online_count)

    async def status(self) -> dict[str, Any]:
        """The document behind /v1/status, `hallhub status` and the status page."""
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
            "broker": {
                "host": broker.host,
                "port": broker.port,
                "connected": self.gateway.connected,
            },
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
            "device_alerts": self.device_alerts.open_alerts(),
            "sessions": self.sessions.open_sessions(),
            "sync": {
                "last_sync": self.last_sync,
                "push": bool(self.config.central.url),
                "pull": bool(self.secrets.pull_token),
            },
        }
        return redact(status)
