"""The MQTT gateway: the topic contract of CONTRACTS §2 between devices and the outbox.

It subscribes with a persistent session (messages published while the hub restarts are delivered
afterwards), answers each device message only after the outbox has decided, and mirrors every stored
record on `events/{kind}` and `alerts`. Publishes are pipelined: many messages are in the outbox's
queue at once, and acks and mirrors are queued at QoS 1 without waiting for each PUBACK.

One pipeline for every acked message (rating, scan, print report): decoded, validated and turned
into records in the MQTT client's message callback, queued on the outbox writer (which commits many
messages at once) and answered from the commit's callback; the client flushes the acks and mirrors of
one loop turn in one write (`hub.mqtt`). A pad's rating in a session takes the window's session lock
around the same steps. Only what is not acked (window requests, health, state) runs in a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from contract.mqtt import (
    AckPayload,
    EvaluateRequest,
    HealthPayload,
    HubState,
    PayloadError,
    PrintPayload,
    RatingPayload,
    ScanPayload,
    SessionUpdate,
    StatePayload,
    WindowError,
    decode_object,
    parse_device_payload,
    usable_msg_id,
)
from contract.records import Record
from contract.topics import ACKED_LEAVES, LEAVES_BY_KIND
from drivers.backoff import full_jitter
from hub import __version__, mqtt
from hub.config import DeviceSection, HubConfig, Secrets
from hub.hall.sessions import SessionManager
from hub.hall.windows import WindowBook, valid_window
from hub.ingest.devices import DeviceRegistry
from hub.ingest.intake import Intake
from hub.ingest.publisher import MqttPublisher
from hub.ingest.ratelimit import RateLimiter
from hub.metrics import HubMetrics
from hub.store.outbox import DedupKey, Duplicate, Rejected, Stored, StoreResult, StoreUnavailable

log = logging.getLogger(__name__)

# Device messages being handled or stored at once. Beyond it a message is dropped unanswered (and
# counted): its device retries, and the hub's memory stays bounded however hard it is flooded.
MAX_CONCURRENT_MESSAGES = 5000
# Before that, backpressure: at PAUSE_AT messages in progress the hub stops reading from the broker
# (which keeps the session's messages queued) until they are down to RESUME_AT, or at most
# MAX_PAUSE_S (a PINGRESP is not read while paused: the pause stays well inside the keepalive).
# PAUSE_AT leaves room for the rest of one read (64 KiB: some hundreds of messages).
PAUSE_AT = 3500
RESUME_AT = 1000
MAX_PAUSE_S = 2.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STATE_INTERVAL_S = 15.0
FAILURE_ALERT_INTERVAL_S = 60.0

# Self-service kinds: nobody serves at them, so a rating from one that names staff is refused. No kind
# carries staff the hub uses: staff come from the window's session (docs/contracts.md §2).
NO_STAFF_KINDS = frozenset({"terminal"})

# Refusals that can come in floods: one log line per interval, with a count.
REFUSAL_LOG_INTERVAL_S = 60.0
RETAINED_ERROR = (
    "retained message refused: only dev/{device}/state may be retained; "
    "publish commands and data with retain false"
)
# Unknown device ids: at most one error-topic reply per id a minute, and few a second in all.
UNKNOWN_REPLY_INTERVAL_S = 60.0
UNKNOWN_REPLIES_PER_S = 5.0
UNKNOWN_REPLY_BURST = 10.0
SHOWN_ID_CHARS = 64  # a made-up id longer than any real one is kept and logged cut to this

StateProvider = Callable[[], Awaitable[tuple[int, str | None]]]
HealthListener = Callable[[str, dict[str, Any]], Awaitable[None]]


class MqttGateway:
    """Owns the hub's MQTT connection; reconnects with backoff and jitter when the broker goes."""

    def __init__(
        self,
        config: HubConfig,
        secrets: Secrets,
        *,
        intake: Intake,
        registry: DeviceRegistry,
        metrics: HubMetrics,
        sessions: SessionManager,
        publisher: MqttPublisher,
        state_provider: StateProvider,
        health_listener: HealthListener,
        windows: WindowBook | None = None,
    ) -> None:
        self.config = config
        self.secrets = secrets
        self.intake = intake
        self.registry = registry
        self.metrics = metrics
        self.topics = publisher.topics
        self.sessions = sessions
        self.publisher = publisher
        self.state_provider = state_provider
        self.health_listener = health_listener
        self.windows = windows
        self._storing: set[asyncio.Future[StoreResult]] = set()
        self._reading: mqtt.Client | None = None
        self._pause_timer: asyncio.TimerHandle | None = None
        self.paused = 0
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._stop = asyncio.Event()
        self.limiter = RateLimiter(config.limits.device_msgs_per_s, config.limits.device_burst)
        self._last_failure_alert = -FAILURE_ALERT_INTERVAL_S
        self._last_health: dict[str, dict[str, Any]] = {}
        self.connects = 0
        self.overloaded = 0
        self._retained_log = _LogThrottle(REFUSAL_LOG_INTERVAL_S)
        self._unknown_replies = RateLimiter(UNKNOWN_REPLIES_PER_S, UNKNOWN_REPLY_BURST)
        self._unknown_log = _LogThrottle(REFUSAL_LOG_INTERVAL_S)
        unknown_dropped = Counter(
            "hallhub_unknown_devices_dropped",
            "Unknown device ids forgotten to keep their table bounded (the latest are kept)",
            registry=metrics.registry,
        )
        registry.on_unknown_dropped = unknown_dropped.inc
        # Every window some device of the node serves: a rating may name only these (hallhub rule).
        self._windows = frozenset(d.window for d in config.device if d.window is not None)

    @property
    def connected(self) -> bool:
        """True while a broker session is up."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the gateway is connected and subscribed."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    def _new_client(self) -> mqtt.Client:
        """A client for one connection; messages go to `_take_message` from the first one on."""
        broker = self.config.broker
        offline = HubState(online=False, version=__version__, outbox_pending=-1, last_sync=None)
        return mqtt.Client(
            broker.host,
            broker.port,
            identifier=broker.client_id or f"hallhub-{self.config.node.id}",
            username=broker.username or None,
            password=self.secrets.broker_password or None,
            clean_session=False,
            keepalive=broker.keepalive_s,
            will=mqtt.Will(self.topics.hub_state, offline.encode(), qos=1, retain=True),
            timeout=10.0,
            message_handler=self._take_message,
        )

    async def run(self) -> None:
        """Serve until `stop()`, reconnecting after any broker error."""
        failures = 0
        while not self._stop.is_set():
            try:
                client = self._new_client()
                # Before connecting: what the broker kept for this session arrives right after CONNACK,
                # and its acks go out through this client.
                self.publisher.attach(client)
                self._reading = client
                async with client:
                    failures = 0
                    await self._serve(client)
            except mqtt.MqttError as exc:
                log.warning(
                    "mqtt: broker %s:%d unavailable (%s); retrying",
                    self.config.broker.host,
                    self.config.broker.port,
                    exc,
                )
            finally:
                self.publisher.attach(None)
                self._reading = None
                self._end_pause()
                self._connected.clear()
                self.metrics.mqtt_connected.set(0)
            if self._stop.is_set():
                return
            # Full jitter keeps a hall's devices and hub from reconnecting in lockstep.
            failures += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stop.wait(), full_jitter(failures, BACKOFF_FIRST_S, BACKOFF_MAX_S)
                )

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight, publish `hub/state` offline, disconnect."""
        self._stop.set()

    async def _serve(self, client: mqtt.Client) -> None:
        for topic in self.topics.subscriptions():
            await client.subscribe(topic, qos=1)
        self.connects += 1
        self._connected.set()
        self.metrics.mqtt_connected.set(1)
        log.info("mqtt: connected to %s:%d", self.config.broker.host, self.config.broker.port)
        if self.windows is not None:  # retained, but the broker may have lost them (§12)
            self._spawn(self.windows.publish_all())
        reader = asyncio.create_task(client.wait_closed())
        state = asyncio.create_task(self._publish_state_periodically())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all((reader, state, stopping))
        if not self._stop.is_set():
            if not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
            return
        await self.drain()
        await self.publish_state(online=False)

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run a message handler in a task of its own, tracked for `drain`."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        self._maybe_resume()
        if not task.cancelled() and task.exception() is not None:
            log.error("mqtt: message handler failed", exc_info=task.exception())

    def _maybe_pause(self) -> None:
        """Stop reading from the broker while PAUSE_AT messages are in progress (backpressure)."""
        client = self._reading
        if client is None or client.reading_paused or len(self._tasks) + len(self._storing) < PAUSE_AT:
            return
        client.pause_reading()
        self.paused += 1
        self._pause_timer = asyncio.get_running_loop().call_later(MAX_PAUSE_S, self._end_pause)

    def _maybe_resume(self) -> None:
        client = self._reading
        if (
            client is not None
            and client.reading_paused
            and len(self._tasks) + len(self._storing) <= RESUME_AT
        ):
            self._end_pause()

    def _end_pause(self) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None
        if self._reading is not None:
            self._reading.resume_reading()

    async def drain(self) -> None:
        """Wait for in-flight message handlers (used at shutdown, before the writer is flushed)."""
        while self._tasks or self._storing:
            await asyncio.gather(*list(self._tasks), *list(self._storing), return_exceptions=True)

    # -- publishing ----------------------------------------------------------------------------

    async def publish_state(self, *, online: bool) -> None:
        """Retained `hub/state`."""
        pending, last_sync = await self.state_provider()
        state = HubState(online=online, version=__version__, outbox_pending=pending, last_sync=last_sync)
        await self.publisher.hub_state(state)

    async def _publish_state_periodically(self) -> None:
        while not self._stop.is_set():
            try:
                await self.publish_state(online=True)
            except StoreUnavailable:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STATE_INTERVAL_S)

    async def _error(self, device_id: str, topic: str, reason: str, message: str) -> None:
        self.metrics.rejects.labels(reason=reason).inc()
        self.registry.count_error(device_id, reason)
        log.warning("mqtt: %s from %s rejected: %s", topic.rsplit("/", 1)[-1], device_id, message)
        await self.publisher.error(device_id, topic, message)

    # -- handling ------------------------------------------------------------------------------

    def _take_message(self, topic: str, payload: bytes, retain: bool) -> None:
        """The MQTT client's message callback: an acked message at once, anything else in a task.

        Refused at once: a message from an unknown device id, and a retained one (the broker sends
        those at every subscription, so a retained command or rating would be obeyed again after
        every reconnect) except on `dev/{device}/state`, which is retained by contract.
        """
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        area, name, leaf = parsed
        if len(self._tasks) + len(self._storing) >= MAX_CONCURRENT_MESSAGES:
            self._count_overload(name)
            return
        device = self.config.devices_by_id.get(name) if area == "dev" else None
        if device is None and area == "dev":
            self._refuse_unknown(name, topic)
            return
        if retain and not (area == "dev" and leaf == "state"):
            self._refuse_retained(device, leaf, topic)
            return
        if device is None or leaf not in ACKED_LEAVES:
            self._spawn(self._handle(topic, payload))
            return
        self._take_acked(device, topic, leaf, payload)

    def _count_overload(self, name: str) -> None:
        """A message beyond MAX_CONCURRENT_MESSAGES: not processed, not answered (it retries), counted."""
        self.metrics.rejects.labels(reason="overloaded").inc()
        self.overloaded += 1
        if self.overloaded == 1 or self.overloaded % 1000 == 0:
            log.warning(
                "mqtt: %d messages in progress; %d dropped unanswered so far (latest from %s; they retry)",
                MAX_CONCURRENT_MESSAGES,
                self.overloaded,
                name,
            )

    def _refuse_unknown(self, name: str, topic: str) -> None:
        """A message from a device id that is not configured: counted (the latest ids kept), answered
        on its error topic and logged, each within bounds, so a stream of made-up ids costs little."""
        self.metrics.inc(self.metrics.rejects, "unknown_device")
        shown = name if len(name) <= SHOWN_ID_CHARS else name[:SHOWN_ID_CHARS] + "…"
        registry = self.registry
        registry.count_error(shown, "unknown_device")
        now = time.monotonic()
        if registry.may_answer_unknown(shown, UNKNOWN_REPLY_INTERVAL_S, now) and self._unknown_replies.allow(
            "", now
        ):
            registry.answered_unknown(shown, now)
            message = f'device "{name}" is not configured on node "{self.config.node.id}"'
            self.publisher.error_nowait(name, topic, message)
        count = self._unknown_log.due(now)
        if count:
            log.warning(
                "mqtt: %d message(s) from device ids not configured on this node refused since the last "
                "report (latest from %r; %d ids kept, %d forgotten)",
                count,
                shown,
                len(registry.unknown),
                registry.unknown_dropped,
            )

    def _refuse_retained(self, device: DeviceSection | None, leaf: str, topic: str) -> None:
        """A retained command or data message: never acted on nor acked; counted, logged within
        bounds, and a device hears why on its error topic."""
        self.metrics.inc(self.metrics.rejects, "retained")
        if device is not None:
            self.registry.count_error(device.id, "retained")
            self.publisher.error_nowait(device.id, topic, RETAINED_ERROR)
        count = self._retained_log.due(time.monotonic())
        if count:
            log.warning(
                "mqtt: retained %s on %s refused (%d retained message(s) refused since the last report)",
                leaf,
                topic,
                count,
            )

    def _take_acked(self, device: DeviceSection, topic: str, leaf: str, payload: bytes) -> None:
        """A rating, scan or print report: validate, queue the store, ack from the commit's callback.

        A rating in a session (a pad's, or any naming a session) is stored under the window's session
        lock in a task, because its records depend on the session's state and end the session."""
        obj = self._admit(device, topic, leaf, payload)
        if obj is None:
            return
        msg_id = usable_msg_id(obj)
        if msg_id is None:
            self._spawn(
                self._error(device.id, topic, "no_msg_id", "msg_id: expected text of 1 to 64 characters")
            )
            return
        try:
            rating, records = self._validated(device, leaf, msg_id, obj)
        except PayloadError as exc:
            self._reject(device, leaf, msg_id, exc)
            return
        if rating is not None and (device.kind == "pad" or rating.session):
            self._spawn(self._store_session_rating(device, msg_id, rating))
            return
        future = self.intake.store_soon(records, DedupKey(device.id, msg_id))
        self._storing.add(future)
        future.add_done_callback(functools.partial(self._stored, device, leaf, msg_id, rating))
        self._maybe_pause()

    def _admit(
        self, device: DeviceSection, topic: str, leaf: str, payload: bytes
    ) -> dict[str, object] | None:
        """A message from a configured device: seen, within its rate limit, a JSON object; else None.

        An undecodable one is answered on the error topic, or with a `rejected` ack when it has a
        usable msg_id (a number no field can hold: the rest of the JSON was read).
        """
        self.registry.seen(device.id)
        if not self.limiter.allow(device.id):
            self._count_limited(device.id)
            return None
        try:
            return decode_object(payload)
        except PayloadError as exc:
            if exc.msg_id is not None and leaf in ACKED_LEAVES:
                self._reject(device, leaf, exc.msg_id, exc)
            else:
                self._spawn(self._error(device.id, topic, exc.reason, exc.message))
            return None

    def _validated(
        self, device: DeviceSection, leaf: str, msg_id: str, obj: dict[str, object]
    ) -> tuple[RatingPayload | None, list[Record]]:
        """An acked message checked against its schema and its device's rights; PayloadError if not.

        A rating comes back as its payload (its records depend on the session, built when stored);
        a scan or print report as its records."""
        if device.kind not in LEAVES_BY_KIND[leaf]:
            raise PayloadError("wrong_kind", f'a {device.kind} device cannot send "{leaf}" messages', msg_id)
        if leaf == "rating":
            rating = parse_device_payload(RatingPayload, obj)
            if rating.window is not None or rating.staff_id is not None:
                self._check_claims(device, rating, msg_id)
            if device.kind == "pad" or rating.session:
                return rating, []
            return rating, self._rating_records(device, rating)
        if leaf == "scan":
            return None, self.intake.scan(device, parse_device_payload(ScanPayload, obj))
        return None, self.intake.print_job(device, parse_device_payload(PrintPayload, obj))

    def _reject(self, device: DeviceSection, leaf: str, msg_id: str, exc: PayloadError) -> None:
        """An invalid acked message: counted, logged and answered `rejected`."""
        self.metrics.rejects.labels(reason=exc.reason).inc()
        self.registry.count_error(device.id, exc.reason)
        log.warning("mqtt: %s %s from %s rejected: %s", leaf, msg_id, device.id, exc.message)
        self.publisher.ack(
            device.id, AckPayload(msg_id=msg_id, id=None, status="rejected", error=exc.message)
        )

    def _stored(
        self,
        device: DeviceSection,
        leaf: str,
        msg_id: str,
        rating: RatingPayload | None,
        future: asyncio.Future[StoreResult],
    ) -> None:
        """The commit's callback for `_take_acked`: answer the device (nothing if not stored)."""
        self._storing.discard(future)
        self._maybe_resume()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self.intake.count_failure()
            if not isinstance(error, StoreUnavailable):
                log.error("mqtt: storing %s %s from %s failed", leaf, msg_id, device.id, exc_info=error)
                return
            log.error(
                "mqtt: %s %s from %s not stored (%s); the device will retry", leaf, msg_id, device.id, error
            )
            self._spawn(self.announce_store_failure(str(error)))
            return
        result = future.result()
        self.intake.count(result)
        if rating is not None and isinstance(result, Stored):
            self.sessions.count_free(device.id)
        self.publisher.ack(device.id, _ack_for(msg_id, result))

    async def _handle(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        area, name, leaf = parsed
        if area == "window":
            await self._handle_window(topic, name, payload)
            return
        device = self.config.devices_by_id.get(name)
        if device is None:
            self._refuse_unknown(name, topic)
            return
        obj = self._admit(device, topic, leaf, payload)
        if obj is None:
            return
        if leaf == "health":
            await self._handle_health(device, topic, obj)
        elif leaf == "state":
            await self._handle_state(device, topic, obj)

    async def _store_session_rating(self, device: DeviceSection, msg_id: str, rating: RatingPayload) -> None:
        """A rating in a session: records built, committed and the session ended under the session
        lock, then the device answered (nothing if not stored: it retries)."""
        async with self.sessions.lock_for(device.id):
            records = self._rating_records(device, rating)
            try:
                result = await self.intake.store(records, DedupKey(device.id, msg_id))
            except StoreUnavailable as exc:
                log.error(
                    "mqtt: rating %s from %s not stored (%s); the device will retry", msg_id, device.id, exc
                )
                await self.announce_store_failure(str(exc))
                return
            if isinstance(result, Stored):
                await self.sessions.rated(device.id, rating.session, rating.level, result.records[0].id)
        self.publisher.ack(device.id, _ack_for(msg_id, result))

    def _count_limited(self, device_id: str) -> None:
        """A message over the device's rate limit: not processed, not acked (it retries), counted."""
        self.metrics.rejects.labels(reason="rate_limited").inc()
        self.registry.count_error(device_id, "rate_limited")
        count = self.limiter.limited[device_id]
        if count == 1 or count % 1000 == 0:
            log.warning(
                "mqtt: %s exceeds %.0f messages/s; %d messages dropped so far (it must retry)",
                device_id,
                self.limiter.rate,
                count,
            )

    async def announce_store_failure(self, error: str) -> None:
        """The outbox cannot write (disk full): an alert on MQTT at once, since none can be stored."""
        now = time.monotonic()
        if now - self._last_failure_alert < FAILURE_ALERT_INTERVAL_S:
            return
        self._last_failure_alert = now
        alert = {
            "kind": "alert",
            "data": {
                "type": "store_unavailable",
                "state": "raised",
                "error": error,
                "node_id": self.config.node.id,
                "stored": False,
            },
        }
        await self.publisher.alert(alert)

    def _check_claims(self, device: DeviceSection, rating: RatingPayload, msg_id: str) -> None:
        """PayloadError naming `window` and `staff_id` where a rating claims what its device may not
        (a hallhub rule, docs/contracts.md §2): a device bound to a window rates only that window,
        any window named must be served by some device of the node (on a node that serves windows),
        and a self-service terminal
        names no staff. A pad's `staff_id` is not refused, but never used: staff come from the session.
        """
        problems: list[str] = []
        window = rating.window
        if window is not None:
            if device.window is not None and window != device.window:
                problems.append(
                    f"window: {device.kind} {device.id} serves window {device.window}, not {window}"
                )
            elif self._windows and window not in self._windows:
                # A node that serves no window at all (self-service terminals only) has nothing to
                # check a window against; wherever windows exist, only theirs may be named.
                problems.append(f"window: no device of this node serves window {window}")
        if rating.staff_id is not None and device.kind in NO_STAFF_KINDS:
            problems.append(
                f"staff_id: a {device.kind} is self-service and names no staff "
                "(staff come from the window's session)"
            )
        if problems:
            raise PayloadError("not_allowed", "; ".join(problems), msg_id)

    def _rating_records(self, device: DeviceSection, rating: RatingPayload) -> list[Record]:
        """A rating's records, attributed to its session, window and citizen by the session manager."""
        return self.intake.rating(
            device, rating, self.sessions.attribute(device, rating.session, rating.window)
        )

    async def _handle_health(self, device: DeviceSection, topic: str, obj: dict[str, object]) -> None:
        try:
            health = parse_device_payload(HealthPayload, obj)
        except PayloadError as exc:
            await self._error(device.id, topic, exc.reason, exc.message)
            return
        report = health.as_dict(drop_none=True)
        if self._last_health.get(device.id) == report:
            return
        self._last_health[device.id] = report
        await self.health_listener(device.id, report)
        await self._store_status(device.id, {"health": report})

    async def _handle_state(self, device: DeviceSection, topic: str, obj: dict[str, object]) -> None:
        try:
            state = parse_device_payload(StatePayload, obj)
        except PayloadError as exc:
            await self._error(device.id, topic, exc.reason, exc.message)
            return
        live = self.registry.get(device.id)
        if live is not None and state.fw:
            live.fw = state.fw
        if self.registry.set_online(device.id, state.online):
            self.metrics.devices_online.set(self.registry.online_count)
            await self._store_status(device.id, {"online": state.online, "fw": state.fw})

    async def _store_status(self, device_id: str, status: dict[str, Any]) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.intake.store([self.intake.device_status(device_id, status)])

    async def _handle_window(self, topic: str, window: str, payload: bytes) -> None:
        if topic.endswith("/staff"):
            await self._handle_staff(topic, window, payload)
            return
        if not topic.endswith("/evaluate"):
            return
        obj: dict[str, object] | None = None
        try:
            obj = decode_object(payload)
            request = parse_device_payload(EvaluateRequest, obj)
        except PayloadError as exc:
            request_id = _request_id(obj if obj is not None else exc.document)
            self.metrics.rejects.labels(reason=exc.reason).inc()
            log.warning("mqtt: evaluate request for window %s rejected: %s", window, exc.message)
            if request_id is not None:
                failed = SessionUpdate(request_id=request_id, session=0, state="failed", error=exc.message)
                await self.publisher.publish_session(window, failed)
            return
        await self.sessions.request(window, request)

    async def _handle_staff(self, topic: str, window: str, payload: bytes) -> None:
        """`window/{w}/staff` (§12): applied by the window book, which publishes the new state; a
        refusal is counted there and answered on `window/{w}/error`."""
        if self.windows is None:
            return
        answer = await self.windows.handle_payload(window, payload)
        if answer.error is not None:
            self.metrics.rejects.labels(reason="window_staff").inc()
            if valid_window(window):
                refusal = WindowError(request_id=answer.request_id, error=answer.error, topic=topic)
                await self.publisher.window_error(window, refusal)


async def _cancel_all(tasks: tuple[asyncio.Task[Any], ...]) -> None:
    """Cancel and await tasks, cancelling again if one swallowed it (asyncio.wait_for in 3.11 can)."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()


class _LogThrottle:
    """At most one log line per interval for an event that can come in floods; counts the rest."""

    __slots__ = ("_count", "_last", "interval_s")

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self._count = 0

    def due(self, now: float) -> int:
        """Count one event; the number of events to report if a line is due now, else 0."""
        self._count += 1
        if now - self._last < self.interval_s:
            return 0
        count, self._count, self._last = self._count, 0, now
        return count


def _request_id(obj: dict[str, object] | None) -> str | None:
    """The `request_id` of an evaluate request if it is one a `failed` answer can carry, else None."""
    raw_id = obj.get("request_id") if obj is not None else None
    return raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 64 else None


def _ack_for(msg_id: str, result: StoreResult) -> AckPayload:
    """The ack that answers a stored, duplicate or refused message."""
    if isinstance(result, Stored):
        return AckPayload(msg_id=msg_id, id=result.records[0].id, status="stored", error=None)
    if isinstance(result, Duplicate):
        return AckPayload(msg_id=msg_id, id=result.record_id, status="duplicate", error=None)
    assert isinstance(result, Rejected)
    return AckPayload(msg_id=msg_id, id=None, status="rejected", error=result.reason)
