"""The MQTT gateway: the topic contract of CONTRACTS §2 between devices and the outbox.

It subscribes with a persistent session (messages published while the hub restarts are delivered
afterwards), answers each device message only after the outbox has decided, and mirrors every stored
record on `events/{kind}` and `alerts`. Publishes are pipelined: many messages are in the outbox's
queue at once, and acks and mirrors are queued at QoS 1 without waiting for each PUBACK.

The common case, a terminal's rating, scan or print report, is handled at once in the MQTT client's
message callback and answered from the commit's callback (`hub.mqtt`); everything else (pads in sessions,
windows, health, state, errors) runs in a task of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from contract.mqtt import (
    AckPayload,
    CmdPayload,
    ErrorPayload,
    EvaluateRequest,
    HealthPayload,
    HubState,
    PayloadError,
    PrintPayload,
    RatingPayload,
    ScanPayload,
    SessionUpdate,
    StatePayload,
    decode_object,
    parse_device_payload,
    usable_msg_id,
)
from contract.records import Kind, Record
from contract.topics import ACKED_LEAVES, LEAVES_BY_KIND, Topics
from hub import __version__, mqtt
from hub.config import DeviceSection, HubConfig, Secrets
from hub.hall.sessions import PromptFailed, SessionManager
from hub.ingest.devices import DeviceRegistry
from hub.ingest.intake import Intake
from hub.ingest.ratelimit import RateLimiter
from hub.metrics import HubMetrics
from hub.store.outbox import DedupKey, Duplicate, Rejected, Stored, StoreResult, StoreUnavailable

log = logging.getLogger(__name__)

# Device messages being handled or stored at once. Beyond it a message is dropped unanswered (and
# counted): its device retries, and the hub's memory stays bounded however hard it is flooded.
MAX_CONCURRENT_MESSAGES = 5000
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STATE_INTERVAL_S = 15.0
FAILURE_ALERT_INTERVAL_S = 60.0
TOPIC_CACHE_SIZE = 10_000  # encoded topics kept (a node has tens of devices, each a few topics)

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
        intake: Intake,
        registry: DeviceRegistry,
        metrics: HubMetrics,
        state_provider: StateProvider,
    ) -> None:
        self.config = config
        self.secrets = secrets
        self.intake = intake
        self.registry = registry
        self.metrics = metrics
        self.topics = Topics(config.node.id)
        self.state_provider = state_provider
        self.sessions: SessionManager | None = None
        self._client: mqtt.Client | None = None
        self._storing: set[asyncio.Future[StoreResult]] = set()
        self._topic_bytes: dict[str, bytes] = {}
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()
        self._stop = asyncio.Event()
        self.limiter = RateLimiter(config.limits.device_msgs_per_s, config.limits.device_burst)
        self._last_failure_alert = -FAILURE_ALERT_INTERVAL_S
        self._last_health: dict[str, dict[str, Any]] = {}
        self.health_listener: HealthListener | None = None  # hub.ingest.device_alerts
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
        delay = BACKOFF_FIRST_S
        while not self._stop.is_set():
            try:
                client = self._new_client()
                # Before connecting: what the broker kept for this session arrives right after CONNACK,
                # and its acks go out through this client.
                self._client = client
                async with client:
                    delay = BACKOFF_FIRST_S
                    await self._serve(client)
            except mqtt.MqttError as exc:
                log.warning(
                    "mqtt: broker %s:%d unavailable (%s); retrying",
                    self.config.broker.host,
                    self.config.broker.port,
                    exc,
                )
            finally:
                self._client = None
                self._connected.clear()
                self.metrics.mqtt_connected.set(0)
            if self._stop.is_set():
                return
            # Full jitter keeps a hall's devices and hub from reconnecting in lockstep.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), random.uniform(0, delay))
            delay = min(BACKOFF_MAX_S, delay * 2)

    async def stop(self) -> None:
        """Stop taking messages, finish those in flight, publish `hub/state` offline, disconnect."""
        self._stop.set()

    async def _serve(self, client: mqtt.Client) -> None:
        for topic in self.topics.subscriptions():
            await client.subscribe(topic, qos=1)
        self._client = client
        self.connects += 1
        self._connected.set()
        self.metrics.mqtt_connected.set(1)
        log.info("mqtt: connected to %s:%d", self.config.broker.host, self.config.broker.port)
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
        if not task.cancelled() and task.exception() is not None:
            log.error("mqtt: message handler failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for in-flight message handlers (used at shutdown, before the writer is flushed)."""
        while self._tasks or self._storing:
            await asyncio.gather(*list(self._tasks), *list(self._storing), return_exceptions=True)

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish at QoS 1; False if not connected or the broker went away meanwhile."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=retain)
        except mqtt.MqttError as exc:
            log.debug("mqtt: publish to %s failed: %s", topic, exc)
            return False
        return True

    def mirror(self, records: list[Record]) -> None:
        """Outbox listener: publish each stored record on events/{kind}, alerts also on alerts."""
        if self._client is None:
            return
        for record in records:
            body = _wire_bytes(record)
            self.publish_nowait(self.topics.event(str(record.kind)), body)
            if record.kind is Kind.ALERT:
                self.publish_nowait(self.topics.alerts, body)

    def publish_nowait(self, topic: str, payload: bytes) -> bool:
        """Queue a QoS-1 publish without waiting for the broker's PUBACK; False if not connected.

        For acks and event mirrors, whose failure the hub never acts on (a device retries until it
        hears its ack). Awaiting each PUBACK would cost a future and a task per publish.
        """
        client = self._client
        if client is None:
            return False
        encoded = self._topic_bytes.get(topic)
        if encoded is None:
            encoded = topic.encode()
            if len(self._topic_bytes) < TOPIC_CACHE_SIZE:
                self._topic_bytes[topic] = encoded
        try:
            client.publish_nowait(encoded, payload)
        except mqtt.MqttError as exc:  # not connected (any more), or 65,535 publishes unconfirmed
            log.debug("mqtt: publish to %s not queued: %s", topic, exc)
            return False
        return True

    async def publish_state(self, *, online: bool) -> None:
        """Retained `hub/state`."""
        pending, last_sync = await self.state_provider()
        state = HubState(online=online, version=__version__, outbox_pending=pending, last_sync=last_sync)
        await self.publish(self.topics.hub_state, state.encode(), retain=True)

    async def _publish_state_periodically(self) -> None:
        while not self._stop.is_set():
            try:
                await self.publish_state(online=True)
            except StoreUnavailable:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STATE_INTERVAL_S)

    async def _ack(self, device_id: str, ack: AckPayload) -> None:
        self._ack_now(device_id, ack)

    def _ack_now(self, device_id: str, ack: AckPayload) -> None:
        self.metrics.inc(self.metrics.acks, ack.status)
        self.publish_nowait(self.topics.ack(device_id), ack.encode())

    async def _error(self, device_id: str, topic: str, reason: str, message: str) -> None:
        self.metrics.rejects.labels(reason=reason).inc()
        self.registry.count_error(device_id, reason)
        log.warning("mqtt: %s from %s rejected: %s", topic.rsplit("/", 1)[-1], device_id, message)
        await self.publish(self.topics.error(device_id), ErrorPayload(error=message, topic=topic).encode())

    # -- handling ------------------------------------------------------------------------------

    def _take_message(self, topic: str, payload: bytes, retain: bool) -> None:
        """The MQTT client's message callback: a terminal's acked message at once, anything else in a task.

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
        if device is None or leaf not in ACKED_LEAVES or (device.kind == "pad" and self.sessions is not None):
            self._spawn(self._handle(topic, payload))
            return
        self._handle_acked_now(device, topic, leaf, payload)

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
            self.publish_nowait(self.topics.error(name), ErrorPayload(error=message, topic=topic).encode())
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
            self.publish_nowait(
                self.topics.error(device.id), ErrorPayload(error=RETAINED_ERROR, topic=topic).encode()
            )
        count = self._retained_log.due(time.monotonic())
        if count:
            log.warning(
                "mqtt: retained %s on %s refused (%d retained message(s) refused since the last report)",
                leaf,
                topic,
                count,
            )

    def _handle_acked_now(self, device: DeviceSection, topic: str, leaf: str, payload: bytes) -> None:
        """`_handle` + `_handle_acked` without a task: validate, queue the store, ack from its callback."""
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
            records, rating = self._records_for(device, leaf, msg_id, obj)
        except PayloadError as exc:
            self._reject(device, leaf, msg_id, exc)
            return
        if rating is not None and rating.session and self.sessions is not None:
            self._spawn(self._store_and_ack(device, leaf, msg_id, records, rating))
            return
        future = self.intake.store_soon(records, DedupKey(device.id, msg_id))
        self._storing.add(future)
        future.add_done_callback(functools.partial(self._stored, device, leaf, msg_id, rating))

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

    def _records_for(
        self, device: DeviceSection, leaf: str, msg_id: str, obj: dict[str, object]
    ) -> tuple[list[Record], RatingPayload | None]:
        """The records of an acked message from a device outside sessions; PayloadError if invalid."""
        if device.kind not in LEAVES_BY_KIND[leaf]:
            raise PayloadError("wrong_kind", f'a {device.kind} device cannot send "{leaf}" messages', msg_id)
        if leaf == "rating":
            rating = parse_device_payload(RatingPayload, obj)
            if rating.window is not None or rating.staff_id is not None:
                self._check_claims(device, rating, msg_id)
            return self._rating_records(device, rating), rating
        if leaf == "scan":
            return self.intake.scan(device, parse_device_payload(ScanPayload, obj)), None
        return self.intake.print_job(device, parse_device_payload(PrintPayload, obj)), None

    def _reject(self, device: DeviceSection, leaf: str, msg_id: str, exc: PayloadError) -> None:
        """An invalid acked message: counted, logged and answered `rejected`."""
        self.metrics.rejects.labels(reason=exc.reason).inc()
        self.registry.count_error(device.id, exc.reason)
        log.warning("mqtt: %s %s from %s rejected: %s", leaf, msg_id, device.id, exc.message)
        self._ack_now(device.id, AckPayload(msg_id=msg_id, id=None, status="rejected", error=exc.message))

    def _stored(
        self,
        device: DeviceSection,
        leaf: str,
        msg_id: str,
        rating: RatingPayload | None,
        future: asyncio.Future[StoreResult],
    ) -> None:
        """The commit's callback for `_handle_acked_now`: answer the device (nothing if not stored)."""
        self._storing.discard(future)
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
        if rating is not None and self.sessions is not None and isinstance(result, Stored):
            self.sessions.count_free(device.id)
        self._ack_now(device.id, _ack_for(msg_id, result))

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
        if leaf in ACKED_LEAVES:
            await self._handle_acked(device, topic, leaf, obj)
        elif leaf == "health":
            await self._handle_health(device, topic, obj)
        elif leaf == "state":
            await self._handle_state(device, topic, obj)

    async def _handle_acked(
        self, device: DeviceSection, topic: str, leaf: str, obj: dict[str, object]
    ) -> None:
        msg_id = usable_msg_id(obj)
        if msg_id is None:
            await self._error(device.id, topic, "no_msg_id", "msg_id: expected text of 1 to 64 characters")
            return
        try:
            if device.kind not in LEAVES_BY_KIND[leaf]:
                raise PayloadError(
                    "wrong_kind", f'a {device.kind} device cannot send "{leaf}" messages', msg_id
                )
            rating: RatingPayload | None = None
            records: list[Record] = []
            if leaf == "rating":
                rating = parse_device_payload(RatingPayload, obj)
                if rating.window is not None or rating.staff_id is not None:
                    self._check_claims(device, rating, msg_id)
                if device.kind != "pad" or self.sessions is None:
                    records = self._rating_records(device, rating)
            elif leaf == "scan":
                records = self.intake.scan(device, parse_device_payload(ScanPayload, obj))
            else:
                records = self.intake.print_job(device, parse_device_payload(PrintPayload, obj))
        except PayloadError as exc:
            self.metrics.rejects.labels(reason=exc.reason).inc()
            self.registry.count_error(device.id, exc.reason)
            log.warning("mqtt: %s %s from %s rejected: %s", leaf, msg_id, device.id, exc.message)
            await self._ack(
                device.id, AckPayload(msg_id=msg_id, id=None, status="rejected", error=exc.message)
            )
            return
        if rating is not None and device.kind == "pad" and self.sessions is not None:
            async with self.sessions.lock_for(device.id):
                await self._store_and_ack(device, leaf, msg_id, self._rating_records(device, rating), rating)
            return
        await self._store_and_ack(device, leaf, msg_id, records, rating)

    async def _store_and_ack(
        self,
        device: DeviceSection,
        leaf: str,
        msg_id: str,
        records: list[Record],
        rating: RatingPayload | None,
    ) -> None:
        """Commit, then answer the device: stored, duplicate or rejected (no answer if not stored)."""
        try:
            result = await self.intake.store(records, DedupKey(device.id, msg_id))
        except StoreUnavailable as exc:
            log.error(
                "mqtt: %s %s from %s not stored (%s); the device will retry",
                leaf,
                msg_id,
                device.id,
                exc,
            )
            await self.announce_store_failure(str(exc))
            return
        if isinstance(result, Stored) and rating is not None and self.sessions is not None:
            await self.sessions.rated(device.id, rating.session, rating.level, result.records[0].id)
        await self._ack(device.id, _ack_for(msg_id, result))

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
        await self.publish(self.topics.alerts, json.dumps(alert, ensure_ascii=False).encode())

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
        """A rating joins its session (case, staff, window) and any citizen identified there; a pad's
        presses beyond the misuse limits are flagged (terminals are not rated per window)."""
        if self.sessions is None:
            return self.intake.rating(device, rating)
        if device.kind != "pad":
            return self.intake.rating(device, rating, citizen=self.sessions.take_citizen(device.window))
        context = self.sessions.context(device.id, rating.session)
        window = rating.window or (context.window if context else device.window)
        return self.intake.rating(
            device,
            rating,
            context=context,
            citizen=self.sessions.take_citizen(window),
            flags=self.sessions.flags_for(device.id, rating.session),
        )

    async def prompt_pad(self, device: DeviceSection, session: int, timeout_s: int, text: str) -> None:
        """Prompt an MQTT rating pad with a `cmd` it answers with a rating carrying the session."""
        state = self.registry.get(device.id)
        if state is not None and not state.online:
            raise PromptFailed(f"{device.kind} {device.id} offline")
        command = CmdPayload(cmd="prompt", session=session, timeout_s=timeout_s, text=text)
        if not await self.publish(self.topics.cmd(device.id), command.encode()):
            raise PromptFailed(
                f"cannot reach {device.kind} {device.id}: the hub is not connected to the broker"
            )

    async def cancel_pad(self, device: DeviceSection, session: int) -> None:
        """Tell a pad its prompt is over."""
        await self.publish(self.topics.cmd(device.id), CmdPayload(cmd="cancel", session=session).encode())

    async def _handle_health(self, device: DeviceSection, topic: str, obj: dict[str, object]) -> None:
        try:
            health = parse_device_payload(HealthPayload, obj)
        except PayloadError as exc:
            await self._error(device.id, topic, exc.reason, exc.message)
            return
        report = health.model_dump(exclude_none=True)
        if self._last_health.get(device.id) == report:
            return
        self._last_health[device.id] = report
        if self.health_listener is not None:
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
                await self.publish_session(window, failed)
            return
        if self.sessions is not None:
            await self.sessions.request(window, request)

    async def publish_session(self, window: str, update: SessionUpdate) -> None:
        """`window/{w}/session`."""
        await self.publish(self.topics.window_session(window), update.encode())


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


def _wire_bytes(record: Record) -> bytes:
    """The record as committed (the outbox already encoded it once)."""
    text = record.wire_json or json.dumps(record.to_wire(), ensure_ascii=False, separators=(",", ":"))
    return text.encode()
