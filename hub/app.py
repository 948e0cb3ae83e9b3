"""The hub: wires config, outbox, gateway, API and drivers, and runs them under one TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from contract.topics import Topics
from drivers.serial_errors import serial_errors_reported_plainly
from drivers.tasks import cancel_and_wait
from hub import __version__
from hub.api.access import AccessPolicy
from hub.api.followup import followup_routes
from hub.api.rating_page import RatingPage, page_reasons
from hub.api.routes import HubApi
from hub.api.server import ConnectionLimits, GuardedServer
from hub.api.stats import stats_routes
from hub.api.status_page import status_page_routes
from hub.api.windows import window_and_alert_routes, window_staff_routes
from hub.clock import SYSTEM_CLOCK, Clock
from hub.config import HubConfig, Secrets, is_loopback
from hub.hall.alerts import AlertBook
from hub.hall.deadlines import Deadlines
from hub.hall.followup import FollowupBook, hall_books
from hub.hall.sessions import PromptPort, SessionManager
from hub.hall.stats import SatisfactionStats
from hub.hall.windows import WindowBook
from hub.ingest.device_alerts import DeviceAlerts
from hub.ingest.devices import DeviceRegistry
from hub.ingest.driver_host import DriverHost
from hub.ingest.gateway import MqttGateway
from hub.ingest.intake import Intake
from hub.ingest.publisher import MqttPublisher
from hub.metrics import HubMetrics
from hub.ops.systemd import notify, watchdog_interval_s
from hub.privacy.sealing import NodeIdentifier, load_or_create_secret, preload_crypto
from hub.status import NodeStatus, SyncState
from hub.store.outbox import EvaluationHook, Outbox, StoreUnavailable, WriterDied

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 600.0
DEDUP_KEEP_S = 7 * 86400.0
CARD_READER_KINDS = frozenset({"idcard", "pcsc"})
"""Device kinds whose drivers read ID numbers through the node's `NodeIdentifier`."""

Service = Callable[[], Coroutine[Any, Any, None]]


def release_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's `malloc_trim`), for memory.

    Start-up (imports, building the config and message validators) frees about a megabyte that
    glibc would otherwise keep for the life of the process; the hub trims once, when it is ready.
    Takes well under a millisecond; does nothing on a libc without `malloc_trim`.
    """
    import ctypes  # noqa: PLC0415 (lazy, for memory: needed for this one call only)

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _phone_hosts(config: HubConfig) -> list[str]:
    """The host phones use for rating links (§13), accepted in `Host` on `/r/…` only."""
    host = urlsplit(config.qr_evaluation.base_url).hostname if config.qr_evaluation.enabled else None
    return [host] if host else []


class Hub:
    """One node's hub. `run(stop)` serves until `stop` is set, then shuts down cleanly."""

    def __init__(
        self,
        config: HubConfig,
        secrets: Secrets,
        *,
        evaluation_hook: EvaluationHook | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Build every part from the config, each given what it needs; `evaluation_hook` annotates
        each evaluation as it is stored (the national mapping, wired in by `sync.node.build_hub`);
        `clock` times the evaluation sessions (SYSTEM_CLOCK unless a test moves its own)."""
        self.config = config
        self.metrics = HubMetrics()
        self.sync = SyncState()
        deadlines = Deadlines.from_config(
            config.national.timezone,
            config.followup.callback_within_min,
            config.followup.rectify_within_days,
            config.followup.holidays,
        )
        self.outbox = Outbox(
            Path(config.node.data_dir) / "outbox.db",
            max_bytes=config.outbox.max_mb * 2**20,
            evaluation_hook=evaluation_hook,
            store_hooks=[hall_books(deadlines).on_store],
        )
        self.registry = DeviceRegistry(config.device)
        self.intake = Intake(config, self.outbox, self.metrics)
        self.publisher = MqttPublisher(Topics(config.node.id), self.registry, self.metrics)
        self.windows = WindowBook(config, self.outbox, self.metrics, self.publisher.window_state)
        self.sessions = SessionManager(
            config,
            self.outbox,
            self.publisher.publish_session,
            windows=self.windows,
            clock=SYSTEM_CLOCK if clock is None else clock,
        )
        self.sessions.bind(
            "mqtt",
            PromptPort(
                self.publisher.prompt_pad,
                self.publisher.cancel_pad,
                self.publisher.show_pad,
                prompt_link=self.publisher.prompt_pad,
            ),
        )
        self.alerts = AlertBook(self.outbox)
        self.followups = FollowupBook(
            self.outbox, deadlines, node_id=config.node.id, hall_code=config.node.hall_code
        )
        stats = SatisfactionStats(self.outbox, config.national.timezone, config.evaluation.bad_level)
        self.device_alerts = DeviceAlerts(config, self.registry, self.intake)
        self.gateway = MqttGateway(
            config,
            secrets,
            intake=self.intake,
            registry=self.registry,
            metrics=self.metrics,
            sessions=self.sessions,
            publisher=self.publisher,
            state_provider=self._hub_state,
            health_listener=self.device_alerts.on_health,
            windows=self.windows,
        )
        identifier = NodeIdentifier(
            load_or_create_secret(config.node.secret_file),
            hmac=config.privacy.hmac,
            identity_mode=config.privacy.identity,
        )
        if any(device.kind in CARD_READER_KINDS for device in config.device):
            preload_crypto()  # imported lazily for memory; a node with card readers needs it anyway
        self.drivers = DriverHost(config, self.intake, self.registry, self.metrics, self.sessions, identifier)
        self.node_status = NodeStatus(
            config,
            outbox=self.outbox,
            registry=self.registry,
            metrics=self.metrics,
            alerts=self.alerts,
            followups=self.followups,
            device_alerts=self.device_alerts,
            sessions=self.sessions,
            broker_connected=lambda: self.gateway.connected,
            sync=self.sync,
            pull_enabled=bool(secrets.pull_token),
            windows=self.windows,
        )
        listen_host, listen_port = config.api_host_port
        policy = AccessPolicy(
            listen_host,
            listen_port,
            control_token=secrets.control_token,
            view_token=secrets.view_token,
            allowed_hosts=config.api.allowed_hosts,
            phone_hosts=_phone_hosts(config),
        )
        self.api = HubApi(
            status=self.node_status,
            outbox=self.outbox,
            metrics=self.metrics,
            pull_token=secrets.pull_token,
            policy=policy,
            routes=[
                *window_and_alert_routes(self.sessions, self.alerts),
                *followup_routes(self.followups),
                *stats_routes(stats, hall_name=config.node.name or f"政务服务大厅 {config.node.hall_code}"),
                *window_staff_routes(self.windows),
                *self._rating_page_routes(),
                *status_page_routes(
                    self.node_status,
                    self.outbox,
                    stats,
                    timezone=config.national.timezone,
                    central_url=config.central.url,
                ),
            ],
            body_timeout_s=config.api.header_timeout_s,
            request_hook=self._request_started,
        )
        self.services: list[tuple[str, Service]] = [
            *self.drivers.runners(),
            ("device-alerts", self.device_alerts.run),
            ("followup-deadlines", self.followups.run),
        ]
        self.ready = asyncio.Event()
        self.api_port: int | None = None
        self._http: GuardedServer | None = None
        self._runner: web.AppRunner | None = None
        self._fatal: WriterDied | None = None

    def _rating_page_routes(self) -> list[web.RouteDef]:
        """`/r/{token}`, the rating page for phones (§13), when QR evaluation is enabled."""
        qr = self.config.qr_evaluation
        if not qr.enabled:
            return []
        host = urlsplit(qr.base_url).hostname
        if is_loopback(self.config.api_host_port[0]) and host is not None and not is_loopback(host):
            log.warning(
                "qr_evaluation: phones are sent to %s, but api.listen %s is loopback: they cannot reach it",
                qr.base_url,
                self.config.api.listen,
            )
        page = RatingPage(
            self.sessions,
            self.intake,
            self.metrics,
            reasons=page_reasons(self.config.national.reasons),
            submissions_per_minute=qr.submissions_per_minute,
            body_timeout_s=self.config.api.header_timeout_s,
        )
        return page.routes()

    def add_service(self, name: str, service: Service) -> None:
        """Run `service()` beside the core (drivers, sessions, uplink) until shutdown."""
        self.services.append((name, service))

    async def _hub_state(self) -> tuple[int, str | None]:
        return await self.node_status.summary()

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
        with serial_errors_reported_plainly(asyncio.get_running_loop()):
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        await self.outbox.open()
        self.outbox.add_listener(self.publisher.mirror)
        self.outbox.add_listener(self.alerts.on_commit)
        self.outbox.add_listener(self.followups.on_commit)
        await self.alerts.load()
        await self.windows.load()
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
                await cancel_and_wait(others, what="service")
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
        """Prune delivered records past their retention, old dedup entries, the case ledger's cases
        past `national.case_history_days` (by their age alone, CONTRACTS §15), and the tallies and
        closed follow-ups past 400 days (§14)."""
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
                books = await self.followups.prune()
                if books:
                    log.info("outbox: forgot %d tallies and closed follow-ups older than 400 days", books)
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
