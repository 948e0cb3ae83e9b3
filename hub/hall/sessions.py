"""Evaluation sessions (CONTRACTS §2 window topics): one per window, prompted on its rating device.

A window PC asks for an evaluation; the keypad or pad bound to that window is prompted; the state
changes (`prompted`, `rated`, `expired`, `cancelled`, `failed`) are published on
`window/{w}/session`. A session that expires stores nothing: a rating is never invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from contract.mqtt import EvaluateRequest, SessionUpdate, StaffEvent, WindowState
from drivers.base import CitizenIdentity
from hub.clock import SYSTEM_CLOCK, Clock, Timer
from hub.config import DeviceSection, HubConfig
from hub.hall.links import PHONE_DEVICE_ID, Link, LinkState, RatingLinks, phone_device
from hub.hall.windows import WindowBook, display_text
from hub.store.outbox import Duplicate, Outbox, Rejected, StoreResult

log = logging.getLogger(__name__)

SESSION_BLOCK = 100
RECENT_SESSIONS_KEPT_S = 600.0
MAX_RECENT_SESSIONS = 1000
"""Ended sessions kept for late ratings: those of the last RECENT_SESSIONS_KEPT_S, at most this many.

A hall of 100 windows ends ~500 sessions in ten minutes; by time alone, a busier stream of requests
(a queue system gone wrong, a flood) would hold every session of the last ten minutes."""
CITIZEN_KEPT_S = 600.0
MAX_SESSION = 2**32 - 1


class PromptFailed(Exception):
    """The rating device could not be prompted; the message is for the window PC and technicians."""


@dataclass(slots=True)
class Session:
    """One evaluation request and what the citizen is rating."""

    number: int
    window: str
    request: EvaluateRequest
    device_id: str
    started: float
    """When it was requested, on its manager's clock."""
    ratings: int = 0
    timer: Timer | None = None
    link: str | None = None
    """The token of its rating link (§13), when QR evaluation is enabled."""


@dataclass(frozen=True, slots=True)
class SessionContext:
    """The case a rating belongs to, copied onto the Evaluation."""

    session: int
    window: str
    case_no: str | None
    item_code: str | None
    item_name: str | None
    staff_id: str | None
    user_prop: int = 1


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a rating takes from where it was given: its session's case and staff, its window, the
    citizen identified at that window, and the misuse flags."""

    context: SessionContext | None
    window: str | None
    citizen: CitizenIdentity | None
    flags: list[str]


SELF_SERVICE_KINDS = frozenset({"terminal"})
"""Kinds nobody serves at: their ratings join no session and are not held to the misuse limits."""


class PromptPort:
    """How a session reaches a device: the hub plugs in the keypad driver and the MQTT gateway.

    `show` puts a short text on the device's display (a keypad's SHOW, a pad's `show` cmd), for the
    window's state (§12); a transport without one shows nothing. `prompt_link` prompts with the
    session's rating link as well (a pad draws it as a QR code, §13); without one, `prompt`."""

    prompt: Callable[[DeviceSection, int, int, str], Awaitable[None]]
    cancel: Callable[[DeviceSection, int], Awaitable[None]]
    show: Callable[[DeviceSection, str], Awaitable[None]] | None
    prompt_link: Callable[[DeviceSection, int, int, str, str], Awaitable[None]] | None

    def __init__(
        self,
        prompt: Callable[[DeviceSection, int, int, str], Awaitable[None]],
        cancel: Callable[[DeviceSection, int], Awaitable[None]],
        show: Callable[[DeviceSection, str], Awaitable[None]] | None = None,
        prompt_link: Callable[[DeviceSection, int, int, str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.prompt = prompt
        self.cancel = cancel
        self.show = show
        self.prompt_link = prompt_link


Publisher = Callable[[str, SessionUpdate], Awaitable[None]]


def _link_end(state: str, *, by_link: bool) -> LinkState:
    """What a session's end means for its rating link: used by the phone, rated on the keypad or
    pad, expired, or cancelled (replaced, paused, failed)."""
    if state == "rated":
        return LinkState.USED if by_link else LinkState.RATED_ELSEWHERE
    return LinkState.EXPIRED if state == "expired" else LinkState.CANCELLED


def _credited(request: EvaluateRequest, staffed: WindowState | None) -> EvaluateRequest:
    """The request as its session keeps it: one naming no staff takes the staff signed in at the
    window (§12), so the rating is credited to them and their name is prompted."""
    if request.staff_id is not None or staffed is None or staffed.staff_id is None:
        return request
    return msgspec.structs.replace(
        request, staff_id=staffed.staff_id, staff_name=request.staff_name or staffed.staff_name
    )


class SessionManager:
    """Owns the open session of every window, the session counter and the misuse limits."""

    def __init__(
        self,
        config: HubConfig,
        outbox: Outbox,
        publish: Publisher,
        *,
        windows: WindowBook | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`windows`, when given, is read for each request (paused windows refuse, the signed-in
        staff are credited) and tells this manager of each change (displays, §12). `clock` times
        the sessions' expiry and every window kept here (tests move it instead of sleeping)."""
        self.config = config
        self.clock = clock
        self.outbox = outbox
        self.publish = publish
        self.windows = windows
        if windows is not None:
            windows.add_listener(self._window_changed)
        self.ports: dict[str, PromptPort] = {}
        self._open: dict[str, Session] = {}
        self._by_number: dict[int, Session] = {}
        self._recent: dict[int, tuple[float, Session]] = {}
        self._next = 0
        self._reserved_until = 0
        self._lock = asyncio.Lock()
        self._free: dict[str, deque[float]] = {}
        self._citizens: dict[str, tuple[float, CitizenIdentity]] = {}
        self._device_locks: dict[str, asyncio.Lock] = {}
        qr = config.qr_evaluation
        self.links = RatingLinks(qr.base_url, qr.ttl_s, clock=clock.monotonic) if qr.enabled else None
        """Rating links for phones (§13), None while `qr_evaluation.enabled` is false."""
        self.recent_dropped = 0
        """Ended sessions forgotten before RECENT_SESSIONS_KEPT_S because MAX_RECENT_SESSIONS were kept."""

    def bind(self, transport: str, port: PromptPort) -> None:
        """Register how devices of a transport (`serial`, `mqtt`) are prompted."""
        self.ports[transport] = port

    async def _new_number(self) -> int:
        """A session number unique across restarts: the counter is reserved in blocks in the outbox."""
        if self._next == 0 or self._next >= self._reserved_until:
            stored = await self.outbox.kv_get("session_next")
            start = max(int(stored) if stored else 1, self._next, 1)
            if start + SESSION_BLOCK > MAX_SESSION:
                start = 1
            self._reserved_until = start + SESSION_BLOCK
            await self.outbox.kv_set("session_next", str(self._reserved_until))
            self._next = start
        number = self._next
        self._next += 1
        return number

    async def show(self, window: str, text: str) -> bool:
        """Show `text` on the window's keypad or pad; False if it has none, or no way to show it."""
        device = self.rating_device(window)
        port = self.ports.get(device.transport) if device is not None else None
        if device is None or port is None or port.show is None:
            return False
        try:
            await port.show(device, text)
        except Exception as exc:  # a display is a courtesy: its failure changes nothing
            log.warning("sessions: cannot show %r on %s: %s", text, device.id, exc)
            return False
        return True

    async def _window_changed(self, state: WindowState, event: StaffEvent) -> None:
        """A window's staff changed (§12): a pause cancels its open session; its device shows
        `暂停服务` on a pause and the window and staff on a sign-in or resume."""
        window = state.window
        if state.state == "paused":
            session = self._open.get(window)
            if session is not None:
                await self._end(session, "cancelled", notify_device=True, error=f"window {window} is paused")
        text = display_text(state)
        if text is not None and event.event != "sign_out":
            await self.show(window, text)

    def rating_device(self, window: str) -> DeviceSection | None:
        """The keypad or pad that serves `window`."""
        for device in self.config.device:
            if device.window == window and device.kind in ("keypad", "pad"):
                return device
        return None

    async def request(self, window: str, request: EvaluateRequest) -> SessionUpdate:
        """Start a session (cancelling the window's current one) and prompt its device."""
        async with self._lock:
            phone_only = request.channel == "qr"
            device = None if phone_only else self.rating_device(window)
            number = await self._new_number()
            staffed = self.windows.state(window) if self.windows is not None else None
            refusal = None
            if phone_only and self.links is None:
                refusal = "QR evaluation is off on this node (set qr_evaluation.enabled and base_url)"
            elif device is None and not phone_only:
                refusal = f"no keypad or rating pad is configured for window {window}"
            elif staffed is not None and staffed.state == "paused":
                refusal = f"window {window} is paused"
            if refusal is not None:
                update = SessionUpdate(
                    request_id=request.request_id, session=number, state="failed", error=refusal
                )
                await self.publish(window, update)
                return update
            request = _credited(request, staffed)
            old = self._open.pop(window, None)
            # A phone-only session has no device: "" is no device id (ids have at least one character).
            device_id = device.id if device is not None else ""
            session = Session(
                number=number,
                window=window,
                request=request,
                device_id=device_id,
                started=self.clock.monotonic(),
            )
            if self.links is not None:
                session.link = self.links.issue(number, window)
            self._open[window] = session
            self._by_number[number] = session
        if old is not None:
            await self._end(old, "cancelled", notify_device=True, error="replaced by a new request")
        qr_url = self.links.url(session.link) if self.links is not None and session.link else None
        default_timeout = self.config.evaluation.timeout_s
        if phone_only and self.links is not None:
            default_timeout = int(self.links.ttl_s)  # a phone needs longer than a key press
        timeout = request.timeout_s or default_timeout
        try:
            if device is not None:
                await self._prompt(device, number, timeout, request, qr_url)
        except Exception as exc:  # every prompt failure becomes a `failed` session
            reason = str(exc) or type(exc).__name__
            await self._end(session, "failed", notify_device=False, error=reason)
            return SessionUpdate(request_id=request.request_id, session=number, state="failed", error=reason)
        if self._by_number.get(number) is not session:
            return SessionUpdate(request_id=request.request_id, session=number, state="cancelled")
        session.timer = self.clock.call_later(timeout, lambda: asyncio.ensure_future(self._expire(session)))
        update = SessionUpdate(request_id=request.request_id, session=number, state="prompted", qr_url=qr_url)
        await self.publish(window, update)
        return update

    async def _prompt(
        self, device: DeviceSection, number: int, timeout: int, request: EvaluateRequest, qr_url: str | None
    ) -> None:
        """Prompt the window's keypad or pad, with the rating link where its transport can show one."""
        text = f"{device.window}号窗口" + (f" {request.staff_name}" if request.staff_name else "")
        port = self.ports.get(device.transport)
        if port is None:
            raise PromptFailed(f"{device.kind} {device.id} cannot be prompted (transport {device.transport})")
        if qr_url is not None and port.prompt_link is not None:
            await port.prompt_link(device, number, timeout, text, qr_url)
        else:
            await port.prompt(device, number, timeout, text)

    async def _expire(self, session: Session) -> None:
        if self._by_number.get(session.number) is session:
            await self._end(session, "expired", notify_device=True)

    async def _end(
        self,
        session: Session,
        state: str,
        *,
        notify_device: bool,
        error: str | None = None,
        level: int | None = None,
        record_id: str | None = None,
        by_link: bool = False,
    ) -> None:
        """Report the session's end and forget it; its rating link ends with it (`by_link`: the
        phone rated, any other channel is told the session is over)."""
        if session.link is not None and self.links is not None:
            self.links.end(session.link, _link_end(state, by_link=by_link))
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None  # the handle holds the loop and a closure over the session
        if self._open.get(session.window) is session:
            del self._open[session.window]
        self._by_number.pop(session.number, None)
        self._recent.pop(session.number, None)  # a number reused after wrapping goes to the end
        self._recent[session.number] = (self.clock.monotonic(), session)
        self._forget_old()
        update = SessionUpdate(
            request_id=session.request.request_id,
            session=session.number,
            state=state,  # type: ignore[arg-type]
            level=level,
            id=record_id,
            error=error,
        )
        await self.publish(session.window, update)
        if notify_device:
            device = self.config.devices_by_id.get(session.device_id)
            port = self.ports.get(device.transport) if device else None
            if device is not None and port is not None:
                with contextlib.suppress(Exception):
                    await port.cancel(device, session.number)

    def _forget_old(self) -> None:
        """Drop ended sessions older than RECENT_SESSIONS_KEPT_S, and the oldest beyond
        MAX_RECENT_SESSIONS (counted in `recent_dropped`). The dict is in the order sessions ended."""
        cutoff = self.clock.monotonic() - RECENT_SESSIONS_KEPT_S
        recent = self._recent
        while recent:
            number = next(iter(recent))
            expired = recent[number][0] < cutoff
            if not expired and len(recent) <= MAX_RECENT_SESSIONS:
                return
            if not expired:
                self.recent_dropped += 1
                if self.recent_dropped == 1 or self.recent_dropped % 1000 == 0:
                    log.info(
                        "sessions: %d ended sessions forgotten early (more than %d ended within %.0f s);"
                        " a late rating for one is stored without its case",
                        self.recent_dropped,
                        MAX_RECENT_SESSIONS,
                        RECENT_SESSIONS_KEPT_S,
                    )
            del recent[number]

    def _session(self, number: int) -> Session | None:
        """The open session `number`, or the ended one still kept for late ratings.

        Old ended sessions are forgotten here too, not only when another one ends: in a quiet hall
        a press an hour later must not take a case that ended long ago."""
        session = self._by_number.get(number)
        if session is not None:
            return session
        self._forget_old()
        entry = self._recent.get(number)
        return entry[1] if entry is not None else None

    @property
    def recent_count(self) -> int:
        """Ended sessions still kept for late ratings (at most MAX_RECENT_SESSIONS)."""
        return len(self._recent)

    def context(self, device_id: str, number: int | None, *, by_link: bool = False) -> SessionContext | None:
        """The case context of a session this device was prompted for (open or recently ended);
        `by_link`: of the session whose rating link was used, whatever its device (§13)."""
        if not number:
            return None
        session = self._session(number)
        if session is None or (session.device_id != device_id and not by_link):
            return None
        request = session.request
        return SessionContext(
            session=number,
            window=session.window,
            case_no=request.case_no,
            item_code=request.item_code,
            item_name=request.item_name,
            staff_id=request.staff_id,
            user_prop=request.user_prop,
        )

    def attribute(
        self,
        device: DeviceSection,
        number: int | None,
        claimed_window: str | None = None,
        *,
        by_link: bool = False,
    ) -> Attribution:
        """The one place a rating is attributed, for every device that rates (pads, keypads, terminals,
        and phones through a session's rating link, `by_link`).

        A terminal is self-service: its citizen is the one identified at its own window. Any other
        device's rating joins the session it was prompted for (or, by link, the link's session; or
        none), at the window it names, that of its session, or its own; presses beyond the misuse
        limits are flagged."""
        if device.kind in SELF_SERVICE_KINDS:
            return Attribution(None, claimed_window, self.take_citizen(device.window), [])
        context = self.context(device.id, number, by_link=by_link)
        window = claimed_window or (context.window if context else device.window)
        return Attribution(context, window, self.take_citizen(window), self.flags_for(device.id, number))

    def flags_for(self, device_id: str, number: int | None) -> list[str]:
        """`suspect` for presses beyond the misuse limits (N per session, M free ratings a minute)."""
        limits = self.config.evaluation
        if number:
            session = self._session(number)
            if (
                session is not None
                and session.device_id == device_id
                and session.ratings >= limits.max_per_session
            ):
                return ["suspect"]
            return []
        window = self._free_window(device_id)
        now = self.clock.monotonic()
        while window and window[0] < now - 60:
            window.popleft()
        return ["suspect"] if len(window) >= limits.max_free_per_minute else []

    async def rated(self, device_id: str, number: int | None, level: int, record_id: str) -> None:
        """A rating was stored: count it and, for an open session, report `rated`."""
        if not number:
            self.count_free(device_id)
            return
        session = self._by_number.get(number)
        if session is None:
            ended = self._session(number)
            if ended is not None:
                ended.ratings += 1
            return
        if session.device_id != device_id:
            return
        session.ratings += 1
        await self._end(session, "rated", notify_device=False, level=level, record_id=record_id)

    def link_session(self, token: str) -> tuple[Link, SessionContext | None, str | None] | None:
        """A rating link (§13) with its session's case and the staff name shown to the citizen, or
        None for a token this hub does not know (never issued, or forgotten)."""
        link = self.links.get(token) if self.links is not None else None
        if link is None:
            return None
        session = self._session(link.session)
        if session is None:
            return link, None, None
        context = self.context(session.device_id, link.session, by_link=True)
        return link, context, session.request.staff_name

    async def rate_by_link(
        self, token: str, level: int, store: Callable[[Attribution], Awaitable[StoreResult]]
    ) -> tuple[LinkState | None, str | None]:
        """Rate the session of a link (§13): the first channel to rate wins.

        Taken under the lock of the session's keypad or pad, so a key press being stored for the
        same session is decided first. `store` gets the rating's attribution and stores its records
        (the intake path every rating takes). Answers the link's state (USED: this rating was stored;
        None: no such link) and the evaluation's id; a store that failed leaves the link open."""
        links = self.links
        link = links.get(token) if links is not None else None
        if links is None or link is None:
            return None, None
        session = self._by_number.get(link.session)
        if link.state is not LinkState.OPEN or session is None:
            return link.state, None
        async with self.lock_for(session.device_id or PHONE_DEVICE_ID):
            if self._by_number.get(link.session) is not session or not links.claim(link):
                return link.state, None
            try:
                attribution = self.attribute(phone_device(session.window), link.session, by_link=True)
                result = await store(attribution)
            except BaseException:
                links.release(link)
                raise
            if isinstance(result, Rejected):
                links.release(link)
                return LinkState.OPEN, None
            record_id = result.record_id if isinstance(result, Duplicate) else result.records[0].id
            session.ratings += 1
            await self._end(
                session, "rated", notify_device=True, level=level, record_id=record_id, by_link=True
            )
        return LinkState.USED, record_id

    def count_free(self, device_id: str) -> None:
        """A rating outside any session was stored (for the free-rating misuse limit)."""
        self._free_window(device_id).append(self.clock.monotonic())

    def _free_window(self, device_id: str) -> deque[float]:
        """The times of a device's latest free ratings: only as many as the limit needs to be judged.

        Unbounded, a busy terminal's minute of ratings was kept (100 bytes each: 15 MB at 2,500/s).
        """
        window = self._free.get(device_id)
        if window is None:
            window = self._free[device_id] = deque(maxlen=self.config.evaluation.max_free_per_minute)
        return window

    def lock_for(self, device_id: str) -> asyncio.Lock:
        """Serialises "flag, store, count" per rating device, so concurrent presses are judged in turn."""
        lock = self._device_locks.get(device_id)
        if lock is None:
            lock = self._device_locks[device_id] = asyncio.Lock()
        return lock

    def remember_citizen(self, window: str, identity: CitizenIdentity) -> None:
        """A card was read at `window`: the next evaluation there is linked to this citizen."""
        self._citizens[window] = (self.clock.monotonic(), identity)

    def take_citizen(self, window: str | None) -> CitizenIdentity | None:
        """The citizen identified at `window` in the last minutes, used once."""
        if window is None:
            return None
        entry = self._citizens.pop(window, None)
        if entry is None or entry[0] < self.clock.monotonic() - CITIZEN_KEPT_S:
            return None
        return entry[1]

    def open_sessions(self) -> list[dict[str, object]]:
        """Open sessions for the status document."""
        return [
            {
                "window": s.window,
                "session": s.number,
                "device_id": s.device_id or PHONE_DEVICE_ID,  # a phone-only session (§13) has no device
                "request_id": s.request.request_id,
                "age_s": round(self.clock.monotonic() - s.started, 1),
            }
            for s in self._open.values()
        ]

    async def close(self) -> None:
        """Stop timers (shutdown); open sessions are simply forgotten."""
        for session in list(self._open.values()):
            if session.timer is not None:
                session.timer.cancel()
