"""The window book (CONTRACTS §12): who serves at each window, and whether it is open, paused or closed.

Window PCs and the queue system report staff events (`sign_in`, `sign_out`, `pause`, `resume`) on
MQTT `window/{w}/staff` or `POST /v1/windows/{w}/staff`; both go through `WindowBook.handle`. Each
event that changes a window is one `window` record (never the staff name) committed in the same
transaction as the window's new state (the outbox's `kv`, key `window/{w}`), so that the state
survives restarts and `kill -9` exactly as its record does. After the commit the state is published
retained on `window/{w}/state` and the book's listeners (the session manager: prompts and displays)
are told.

The rules, in docs/contracts.md §12:
- only windows this node serves (a device's `window` in node.toml) have a state;
- `sign_in` needs `staff_id` and opens the window (from any state: a new sign-in replaces whoever
  was signed in); `pause` needs an open window, `resume` a paused one, `sign_out` a window someone is
  signed in at (and, when it names `staff_id`, that person); anything else is a conflict (HTTP 409);
- a repeated `request_id` at a window changes nothing and is answered with the window's state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import Counter

from contract.mqtt import PayloadError, StaffEvent, WindowState, decode_object, parse_device_payload
from contract.records import WINDOW_PATTERN, Kind, Record, utc_now
from hub.config import HubConfig
from hub.metrics import HubMetrics
from hub.store.outbox import DedupKey, Duplicate, Outbox, Stored, StoreUnavailable

log = logging.getLogger(__name__)

KV_PREFIX: Final = "window/"
"""The outbox kv key of a window's state is `window/{w}` (its WindowState as JSON)."""
DEDUP_PREFIX: Final = "window:"
"""Staff events are deduplicated by (`window:{w}`, `request_id`) in the outbox's dedup table."""
PAUSED_TEXT: Final = "暂停服务"

Publish = Callable[[str, WindowState], Awaitable[bool]]
Listener = Callable[[WindowState, StaffEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StaffAnswer:
    """The outcome of one staff event: HTTP status, the window's state (if it has one) or an error."""

    status: int
    request_id: str | None
    state: WindowState | None = None
    error: str | None = None

    def body(self) -> dict[str, object]:
        """The HTTP answer: the window's state, or `{"error", "request_id"}` with the window's
        state as `window_state` when it has one (a refusal by the rules)."""
        if self.error is None and self.state is not None:
            return self.state.as_dict()
        body: dict[str, object] = {"error": self.error, "request_id": self.request_id}
        if self.state is not None:
            body["window_state"] = self.state.shown()
        return body


class WindowRefused(Exception):
    """A well-formed event the window's state does not allow (409) or a window not served (404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def display_text(state: WindowState) -> str | None:
    """What the window's keypad or pad shows for a state: `暂停服务` when paused, the window and
    staff name when open, nothing when closed."""
    if state.state == "paused":
        return PAUSED_TEXT
    if state.state == "open":
        staff = state.staff_name or state.staff_id or ""
        return f"{state.window}号窗口 {staff}".rstrip()
    return None


def parse_staff_event(obj: Mapping[str, object]) -> StaffEvent:
    """A staff event checked against §12; PayloadError naming the field (`staff_id` for a sign-in)."""
    event = parse_device_payload(StaffEvent, dict(obj))
    if event.event == "sign_in" and event.staff_id is None:
        raise PayloadError("invalid_field", "staff_id: is required for sign_in")
    return event


class WindowBook:
    """Each served window's state, kept in the outbox and published retained on `window/{w}/state`."""

    def __init__(self, config: HubConfig, outbox: Outbox, metrics: HubMetrics, publish: Publish) -> None:
        self.config = config
        self.outbox = outbox
        self.publish = publish
        self.windows: tuple[str, ...] = tuple(
            sorted({device.window for device in config.device if device.window is not None})
        )
        """The windows this node serves (a device's `window`): the only ones with a state."""
        self._states: dict[str, WindowState] = {}
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self.events = Counter(
            "hallhub_window_events",
            "Staff events (§12) by channel and outcome (applied, duplicate, invalid, refused, failed)",
            ["via", "outcome"],
            registry=metrics.registry,
        )

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(state, event)` after each committed change (prompts, displays)."""
        self._listeners.append(listener)

    async def load(self) -> None:
        """Read every served window's state from the outbox (closed if it never had one)."""
        started = utc_now()
        for window in self.windows:
            raw = await self.outbox.kv_get(KV_PREFIX + window)
            state = None
            if raw is not None:
                try:
                    state = WindowState.decode(raw)
                except ValueError:
                    log.warning(
                        "windows: the stored state of window %s is unreadable; it starts closed", window
                    )
            self._states[window] = state or WindowState(
                window=window, state="closed", staff_id=None, staff_name=None, since=started
            )

    def state(self, window: str | None) -> WindowState | None:
        """The window's state, None for a window this node does not serve."""
        return self._states.get(window) if window is not None else None

    def status(self) -> list[dict[str, object]]:
        """Every window's state for /v1/status (staff names are shown; status is not a record)."""
        return [self._states[w].shown() for w in self.windows if w in self._states]

    async def publish_all(self) -> None:
        """Publish every window's state retained (on each connection to the broker)."""
        for window in self.windows:
            state = self._states.get(window)
            if state is not None:
                await self.publish(window, state)

    # -- events ------------------------------------------------------------------------------------

    async def handle_payload(self, window: str, payload: bytes) -> StaffAnswer:
        """An MQTT `window/{w}/staff` message."""
        try:
            obj = decode_object(payload)
        except PayloadError as exc:
            return self.invalid("mqtt", window, _request_id(exc.document), exc.message)
        return await self.handle(window, obj, via="mqtt")

    async def handle(self, window: str, obj: Mapping[str, object], *, via: str) -> StaffAnswer:
        """A decoded staff event from `via` (`mqtt`, `http`): checked, applied, counted."""
        request_id = _request_id(obj)
        try:
            event = parse_staff_event(obj)
        except PayloadError as exc:
            return self.invalid(via, window, request_id, exc.message)
        try:
            state, applied = await self.apply(window, event)
        except WindowRefused as exc:
            self.events.labels(via=via, outcome="refused").inc()
            log.warning("windows: %s at window %s refused: %s", event.event, window, exc.message)
            return StaffAnswer(exc.status, request_id, self._states.get(window), exc.message)
        except StoreUnavailable as exc:
            self.events.labels(via=via, outcome="failed").inc()
            log.error("windows: %s at window %s not stored: %s", event.event, window, exc)
            return StaffAnswer(503, request_id, None, f"not stored, try again: {exc}")
        self.events.labels(via=via, outcome="applied" if applied else "duplicate").inc()
        return StaffAnswer(200, request_id, state)

    def invalid(self, via: str, window: str, request_id: str | None, message: str) -> StaffAnswer:
        """A body that is not a staff event: counted, logged and answered 400 with `message`."""
        self.events.labels(via=via, outcome="invalid").inc()
        log.warning("windows: staff event for window %s rejected: %s", window[:16], message)
        return StaffAnswer(400, request_id, None, message)

    async def apply(self, window: str, event: StaffEvent) -> tuple[WindowState, bool]:
        """Commit the event's record with the window's new state, then publish it and tell the
        listeners; `(state, False)` for a repeated request_id (nothing changes).

        Raises WindowRefused (not served: 404; not allowed in this state: 409), StoreUnavailable."""
        async with self._lock:
            current = self._states.get(window)
            if current is None:
                raise WindowRefused(404, f"no device of node {self.config.node.id} serves window {window}")
            if event.request_id == current.request_id:
                return current, False  # the event that made this state, repeated
            new = _next_state(current, event)
            record = self._record(window, event, staff_id=event.staff_id or current.staff_id)
            result = await self.outbox.store(
                [record],
                DedupKey(DEDUP_PREFIX + window, event.request_id),
                kv={KV_PREFIX + window: new.encode().decode()},
            )
            if isinstance(result, Duplicate):
                return current, False
            if not isinstance(result, Stored):  # `window` records are never shed; refuse all the same
                raise StoreUnavailable(f"the outbox refused the window record: {result}")
            self._states[window] = new
            # Published under the lock, so that the retained state is always the latest one.
            await self.publish(window, new)
        log.info("windows: window %s %s (%s)", window, new.state, event.event)
        for listener in self._listeners:
            try:
                await listener(new, event)
            except Exception:
                log.exception("windows: a listener failed on window %s", window)
        return new, True

    def _record(self, window: str, event: StaffEvent, *, staff_id: str | None) -> Record:
        """The `window` record of an event: never the staff name."""
        node = self.config.node
        data = {
            "window": window,
            "event": event.event,
            "staff_id": staff_id,
            "reason": event.reason,
            "node_id": node.id,
            "hall_code": node.hall_code,
        }
        return Record(kind=Kind.WINDOW, data=data)


def _next_state(current: WindowState, event: StaffEvent) -> WindowState:
    """The state an event leads to; WindowRefused (409) if the window's state does not allow it."""
    window = current.window

    def state(
        name: Literal["open", "paused", "closed"], staff_id: str | None, staff_name: str | None
    ) -> WindowState:
        return WindowState(
            window=window,
            state=name,
            staff_id=staff_id,
            staff_name=staff_name,
            since=utc_now(),
            request_id=event.request_id,
        )

    if event.event == "sign_in":
        return state("open", event.staff_id, event.staff_name)
    if current.state == "closed":
        raise WindowRefused(409, f"window {window} is closed: nobody is signed in (sign_in first)")
    if event.event == "sign_out":
        if event.staff_id is not None and event.staff_id != current.staff_id:
            raise WindowRefused(
                409, f"staff_id: {event.staff_id} is not signed in at window {window} ({current.staff_id} is)"
            )
        return state("closed", None, None)
    if event.event == "pause":
        if current.state == "paused":
            raise WindowRefused(409, f"window {window} is already paused")
        return state("paused", current.staff_id, current.staff_name)
    if current.state != "paused":
        raise WindowRefused(409, f"window {window} is not paused")
    return state("open", current.staff_id, current.staff_name)


def _request_id(obj: Mapping[str, object] | None) -> str | None:
    """The event's `request_id` if it is one an answer can carry, else None."""
    raw = obj.get("request_id") if obj is not None else None
    return raw if isinstance(raw, str) and 0 < len(raw) <= 64 and raw.isprintable() else None


def valid_window(window: str) -> bool:
    """A window id §1 allows (only those are answered on MQTT)."""
    return WINDOW_PATTERN.match(window) is not None


__all__ = [
    "PAUSED_TEXT",
    "StaffAnswer",
    "WindowBook",
    "WindowRefused",
    "display_text",
    "parse_staff_event",
    "valid_window",
]
