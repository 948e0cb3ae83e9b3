"""`KeypadLineDriver`: every HKP/1 keypad on one serial line, behind the `Driver` interface.

One driver owns one serial port (an RS-485 line may carry several keypads, told apart by ADDR). It
keeps the port open (reopening with backoff after a USB unplug), pings the keypads, reports them
online/offline/faulty, turns KEY frames into `KeyPressed` events acknowledged only once the hub has
stored them, and sends PROMPT/CANCEL/SHOW with retransmission.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import random
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from drivers.base import (
    DeviceEvent,
    DeviceFault,
    DeviceOffline,
    DeviceOnline,
    EventSink,
    FrameDropped,
    Outcome,
)
from drivers.keypad.codec import (
    BROADCAST,
    PROMPT_TEXT_MAX,
    SESSION_MAX,
    SHOW_TEXT_MAX,
    Ack,
    Cancel,
    Command,
    DroppedFrame,
    Frame,
    Key,
    Nak,
    NakCode,
    Payload,
    PayloadError,
    Ping,
    Pong,
    Prompt,
    Show,
    Status,
    encode_frame,
    fit_text,
    make_frame,
    silence_for_baud,
)
from drivers.keypad.events import KeyPressed
from drivers.keypad.protocol import HkpProtocol, open_serial
from drivers.registry import serial_baud
from drivers.reopen import open_with_backoff

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DriverContext, DriverFactory

__all__ = [
    "KeyPressed",
    "KeypadCommandError",
    "KeypadInfo",
    "KeypadLineDriver",
    "KeypadTimings",
    "from_config",
]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

_HUB_TO_KEYPAD: Final = frozenset({Command.PING, Command.PROMPT, Command.CANCEL, Command.SHOW})
_RETRYABLE_NAKS: Final = frozenset({NakCode.BAD_CRC, NakCode.BUSY})
_CLOSE_TIMEOUT_S: Final = 1.0


class KeypadCommandError(Exception):
    """A command did not reach a keypad or was refused; `str(err)` is for technicians."""

    def __init__(self, device_id: str, command: str, reason: str, *, nak_code: int | None = None) -> None:
        super().__init__(reason)
        self.device_id = device_id
        self.command = command
        self.reason = reason
        self.nak_code = nak_code


@dataclass(frozen=True, slots=True)
class KeypadTimings:
    """Protocol timings; the defaults are the contract's (CONTRACTS §3), tests shorten them."""

    ping_interval_s: float = 10.0
    offline_after_s: float = 30.0
    ack_timeout_s: float = 0.5
    command_tries: int = 3
    reopen_initial_s: float = 0.5
    reopen_max_s: float = 30.0
    silence_s: float | None = None  # None: 50 ms at 9600 baud, scaled by the baud rate

    def __post_init__(self) -> None:
        for name in ("ping_interval_s", "offline_after_s", "ack_timeout_s", "reopen_initial_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"KeypadTimings.{name} must be positive")
        if self.reopen_max_s < self.reopen_initial_s:
            raise ValueError("KeypadTimings.reopen_max_s must be at least reopen_initial_s")
        if self.command_tries < 1:
            raise ValueError("KeypadTimings.command_tries must be at least 1")
        if self.silence_s is not None and self.silence_s <= 0:
            raise ValueError("KeypadTimings.silence_s must be positive")


@dataclass(frozen=True, slots=True)
class KeypadInfo:
    """A snapshot of one keypad for status pages and `hallhub doctor`."""

    device_id: str
    address: int
    online: bool | None
    last_seen: float | None  # event-loop time of the last frame, None if never heard
    firmware: str | None
    faults: tuple[str, ...]
    prompt_session: int | None


@dataclass(slots=True)
class _ActivePrompt:
    """The prompt a keypad is showing, kept so that it can be resent after a reopen."""

    payload: Prompt
    started: float


@dataclass(eq=False, slots=True)
class _Keypad:
    """Per-keypad state, owned by the driver."""

    address: int
    device_id: str
    online: bool | None = None
    last_seen: float | None = None
    firmware: str | None = None
    flags: int = 0
    seq: int = 0
    prompt: _ActivePrompt | None = None
    replies: dict[tuple[int, int], asyncio.Future[Ack | Nak | None]] = field(default_factory=dict)
    keys_inflight: dict[tuple[int, int], asyncio.Task[Outcome]] = field(default_factory=dict)

    def next_seq(self) -> int:
        """The hub's next SEQ towards this keypad (wrapping at 255)."""
        self.seq = (self.seq + 1) & 0xFF
        return self.seq


_PORT_HINTS: Final = {
    errno.ENOENT: "no such device (is the adapter plugged in? check `port` in the config)",
    errno.EACCES: "permission denied (the hallhub user needs the dialout group)",
    errno.EBUSY: "device busy (another program has the port open)",
}


def _port_error(exc: OSError) -> str:
    """An open error in words a technician can act on (pyserial repeats the path otherwise)."""
    if exc.errno in _PORT_HINTS:
        return _PORT_HINTS[exc.errno]
    if "lock" in str(exc):
        return "port in use by another program (exclusive lock failed)"
    return str(exc)


def _count(n: int, noun: str) -> str:
    """`3 tries`, `1 try`: counts in messages a technician reads."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


class KeypadLineDriver:
    """Serves every keypad on one serial port; implements `drivers.base.Driver` and `Prompter`.

    `keypads` maps HKP/1 address (1–254) to the configured device id. `device_id` is the line's id
    (default: the device id of the lowest address), used for drops that no keypad can be blamed for.
    """

    max_prompt_s: int = 0xFF
    """PROMPT carries its timeout in one byte."""

    def __init__(
        self,
        port: str,
        baud: int,
        keypads: Mapping[int, str],
        *,
        line_id: str | None = None,
        timings: KeypadTimings | None = None,
        serial_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not keypads:
            raise ValueError(f"serial line {port}: no keypad configured")
        for address in keypads:
            if not 1 <= address < BROADCAST:
                raise ValueError(f"serial line {port}: keypad address {address} is not 1..254")
        if len(set(keypads.values())) != len(keypads):
            raise ValueError(f"serial line {port}: a device id is used for two addresses")
        if baud <= 0:
            raise ValueError(f"serial line {port}: baud must be positive, got {baud}")
        self.port = port
        self.baud = baud
        self._timings = timings if timings is not None else KeypadTimings()
        self._silence_s = (
            self._timings.silence_s if self._timings.silence_s is not None else silence_for_baud(baud)
        )
        self._serial_options: dict[str, Any] = {"exclusive": True, **(serial_options or {})}
        self._by_address = {a: _Keypad(a, d) for a, d in sorted(keypads.items())}
        self._by_id = {kp.device_id: kp for kp in self._by_address.values()}
        self.device_id = line_id if line_id is not None else next(iter(self._by_address.values())).device_id
        self._sink: EventSink | None = None
        self._proto: HkpProtocol | None = None
        self._opened_at = 0.0
        self._line_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def keypads(self) -> tuple[KeypadInfo, ...]:
        """The state of every keypad on the line, lowest address first."""
        return tuple(
            KeypadInfo(
                device_id=kp.device_id,
                address=kp.address,
                online=kp.online,
                last_seen=kp.last_seen,
                firmware=kp.firmware,
                faults=Status(kp.flags).faults,
                prompt_session=kp.prompt.payload.session if kp.prompt else None,
            )
            for kp in self._by_address.values()
        )

    @property
    def is_open(self) -> bool:
        """True while the serial port is open."""
        return self._proto is not None and self._proto.is_open

    async def run(self, sink: EventSink) -> None:
        """Serve the line until cancelled: open, ping, watch; reopen with backoff after errors."""
        if self._sink is not None:
            raise RuntimeError(f"keypad line {self.port} is already running")
        self._sink = sink
        try:
            while True:
                proto = await self._open_with_backoff()
                exc = await self._serve(proto)
                self._line_down(f"serial port {self.port} lost: {exc or 'closed'}")
                await asyncio.sleep(self._jitter(self._timings.reopen_initial_s))
        finally:
            await self._stop_tasks()
            self._sink = None
            for kp in self._by_address.values():
                kp.online = None  # unknown until a next run hears from it

    async def prompt(self, device_id: str, session: int, timeout_s: int, text: str) -> None:
        """Show a rating prompt for `session` (1..2³²-1) for `timeout_s` (0..255) seconds.

        Returns once the keypad ACKs; raises `KeypadCommandError` otherwise. Text longer than
        the frame allows is cut at a character boundary. The prompt is resent after a reopen
        until it times out, is cancelled, is replaced, or its KEY is stored.
        """
        kp = self._keypad(device_id)
        if not 1 <= session <= SESSION_MAX:
            raise ValueError(f"session must be 1..{SESSION_MAX}, got {session}")
        if not 0 <= timeout_s <= 0xFF:
            raise ValueError(f"timeout_s must be 0..255, got {timeout_s}")
        payload = Prompt(session, timeout_s, self._fit(kp, text, PROMPT_TEXT_MAX))
        kp.prompt = None
        await self._command(kp, payload, tries=self._timings.command_tries)
        kp.prompt = _ActivePrompt(payload, asyncio.get_running_loop().time())

    async def cancel(self, device_id: str, session: int) -> None:
        """End the prompt of `session`; returns once the keypad ACKs."""
        kp = self._keypad(device_id)
        if not 1 <= session <= SESSION_MAX:
            raise ValueError(f"session must be 1..{SESSION_MAX}, got {session}")
        if kp.prompt is not None and kp.prompt.payload.session == session:
            kp.prompt = None
        await self._command(kp, Cancel(session), tries=self._timings.command_tries)

    async def show(self, device_id: str, text: str) -> None:
        """Show a short message; returns once the keypad ACKs."""
        kp = self._keypad(device_id)
        payload = Show(self._fit(kp, text, SHOW_TEXT_MAX))
        await self._command(kp, payload, tries=self._timings.command_tries)

    async def ping(self, device_id: str) -> None:
        """PING one keypad; returns once it ACKs (its PONG updates `keypads[...].firmware`)."""
        await self._command(self._keypad(device_id), Ping(), tries=self._timings.command_tries)

    def _keypad(self, device_id: str) -> _Keypad:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise ValueError(f"no keypad {device_id!r} on serial line {self.port}") from None

    @staticmethod
    def _fit(kp: _Keypad, text: str, limit: int) -> str:
        fitted = fit_text(text, limit)
        if fitted != text:
            _LOG.warning("text for keypad %s cut to %d bytes UTF-8", kp.device_id, limit)
        return fitted

    @staticmethod
    def _jitter(delay: float) -> float:
        return delay * random.uniform(0.5, 1.5)

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the port ------------------------------------------------------------------------------

    async def _open_with_backoff(self) -> HkpProtocol:
        """Open the port, retrying with exponential backoff and jitter while it is missing."""
        timings = self._timings

        async def open_once() -> HkpProtocol:
            try:
                return await open_serial(
                    self.port,
                    self.baud,
                    self._on_frame,
                    self._on_drop,
                    silence_s=self._silence_s,
                    **self._serial_options,
                )
            except OSError as exc:
                self._line_down(f"cannot open serial port {self.port}: {_port_error(exc)}")
                raise

        # At least half of reopen_initial_s between tries, so a line that fails at once cannot spin.
        return await open_with_backoff(
            open_once,
            retry_on=(OSError,),
            min_s=timings.reopen_initial_s,
            max_s=timings.reopen_max_s,
            floor_s=timings.reopen_initial_s / 2,
            on_failure=lambda _error, _wait_s: None,  # reported by open_once, also on the first try
        )

    async def _serve(self, proto: HkpProtocol) -> Exception | None:
        """Run keepalive and silence watch until the port closes; return why it closed."""
        loop = asyncio.get_running_loop()
        self._proto = proto
        self._opened_at = loop.time()
        _LOG.info("serial line %s open (%d keypads)", self.port, len(self._by_address))
        helpers = [
            loop.create_task(self._keepalive()),
            loop.create_task(self._watch_silence()),
        ]
        try:
            return await proto.wait_closed()
        finally:
            self._proto = None
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._release_replies()
            proto.close()
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await proto.wait_closed()
            except TimeoutError:
                proto.abort()

    def _line_down(self, reason: str) -> None:
        """The port is closed or cannot be opened: every keypad on it is offline."""
        self._release_replies()
        for kp in self._by_address.values():
            if kp.online is not False:
                kp.online = False
                _LOG.warning("keypad %s offline: %s", kp.device_id, reason)
                self._notify(DeviceOffline(kp.device_id, reason=reason))

    def _release_replies(self) -> None:
        """Wake every command waiting for an ACK: None tells it the port went away."""
        for kp in self._by_address.values():
            for future in kp.replies.values():
                if not future.done():
                    future.set_result(None)

    async def _keepalive(self) -> None:
        """PING every keypad (resending any active prompt) on open, then every ping interval."""
        timings = self._timings
        for kp in self._by_address.values():
            await self._ping_quietly(kp, tries=timings.command_tries)
            await self._resend_prompt(kp)
        while True:
            await asyncio.sleep(timings.ping_interval_s)
            for kp in self._by_address.values():
                await self._ping_quietly(kp, tries=1)

    async def _ping_quietly(self, kp: _Keypad, *, tries: int) -> None:
        try:
            await self._command(kp, Ping(), tries=tries)
        except KeypadCommandError as exc:
            _LOG.debug("%s", exc)

    async def _resend_prompt(self, kp: _Keypad) -> None:
        """Resend the prompt a keypad showed before the port was lost, with the time it has left."""
        active = kp.prompt
        if active is None:
            return
        payload = active.payload
        if payload.timeout_s:
            elapsed = asyncio.get_running_loop().time() - active.started
            left = math.ceil(payload.timeout_s - elapsed)
            if left <= 0:
                kp.prompt = None
                return
            payload = Prompt(payload.session, left, payload.text)
        try:
            await self._command(kp, payload, tries=self._timings.command_tries)
        except KeypadCommandError as exc:
            _LOG.warning("could not resend prompt %d: %s", payload.session, exc)
        else:
            _LOG.info("resent prompt %d to keypad %s", payload.session, kp.device_id)

    async def _watch_silence(self) -> None:
        """Report a keypad offline once nothing has been heard from it for `offline_after_s`."""
        loop = asyncio.get_running_loop()
        limit = self._timings.offline_after_s
        period = min(max(limit / 10, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for kp in self._by_address.values():
                heard = max(kp.last_seen or 0.0, self._opened_at)
                if kp.online is not False and now - heard >= limit:
                    kp.online = False
                    reason = (
                        f"no frame from keypad {kp.device_id} (address {kp.address} "
                        f"on {self.port}) for {limit:g} s"
                    )
                    _LOG.warning("keypad %s offline: %s", kp.device_id, reason)
                    self._notify(DeviceOffline(kp.device_id, reason=reason))

    # -- commands ------------------------------------------------------------------------------

    async def _command(self, kp: _Keypad, payload: Payload, *, tries: int) -> None:
        """Send a command frame until the keypad ACKs it, at most `tries` times."""
        name = payload.COMMAND.name
        loop = asyncio.get_running_loop()
        last_nak: Nak | None = None
        async with self._line_lock:
            frame = make_frame(kp.address, kp.next_seq(), payload)
            wait_s = self._timings.ack_timeout_s + len(encode_frame(frame)) * 10 / self.baud
            key = (frame.seq, frame.cmd)
            try:
                for _ in range(tries):
                    proto = self._proto
                    if proto is None or not proto.send(frame):
                        raise self._offline_error(kp, name, f"serial port {self.port} is not open")
                    reply_future: asyncio.Future[Ack | Nak | None] = loop.create_future()
                    kp.replies[key] = reply_future
                    try:
                        async with asyncio.timeout(wait_s):
                            reply = await reply_future
                    except TimeoutError:
                        continue
                    if reply is None:
                        raise self._offline_error(kp, name, f"serial port {self.port} was lost")
                    if isinstance(reply, Ack):
                        return
                    last_nak = reply
                    if reply.code not in _RETRYABLE_NAKS:
                        raise KeypadCommandError(
                            kp.device_id,
                            name,
                            f"keypad {kp.device_id} refused {name}: {reply.reason}",
                            nak_code=reply.code,
                        )
                    if reply.code == NakCode.BUSY:
                        await asyncio.sleep(wait_s)
            finally:
                kp.replies.pop(key, None)
        detail = f" (last answer: NAK, {last_nak.reason})" if last_nak is not None else ""
        state = " offline:" if kp.online is False else ""
        raise KeypadCommandError(
            kp.device_id,
            name,
            f"keypad {kp.device_id}{state} did not answer {name} after {_count(tries, 'try')}{detail}",
            nak_code=last_nak.code if last_nak is not None else None,
        )

    @staticmethod
    def _offline_error(kp: _Keypad, name: str, why: str) -> KeypadCommandError:
        return KeypadCommandError(kp.device_id, name, f"keypad {kp.device_id} offline: {why}")

    # -- received frames -----------------------------------------------------------------------

    def _notify(self, event: DeviceEvent) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            sink.notify(event)
        except Exception:
            _LOG.exception("event sink failed on %r", event)

    def _send(self, frame: Frame) -> None:
        proto = self._proto
        if proto is None or not proto.send(frame):
            _LOG.debug(
                "serial port %s closed: %s to %d not sent",
                self.port,
                frame.command_name,
                frame.addr,
            )

    def _ack(self, frame: Frame) -> None:
        self._send(make_frame(frame.addr, frame.seq, Ack(frame.seq, frame.cmd)))

    def _nak(self, frame: Frame, code: NakCode) -> None:
        self._send(make_frame(frame.addr, frame.seq, Nak(frame.seq, frame.cmd, code)))

    def _on_drop(self, dropped: DroppedFrame) -> None:
        kp = self._by_address.get(dropped.addr) if dropped.addr is not None else None
        device_id = kp.device_id if kp is not None else self.device_id
        _LOG.debug("dropped %d bytes on %s: %s", dropped.size, self.port, dropped.reason)
        self._notify(FrameDropped(device_id, reason=str(dropped.reason)))

    def _bad_payload(self, kp: _Keypad, frame: Frame, exc: PayloadError, *, nak: bool) -> None:
        _LOG.info("keypad %s sent a bad %s: %s", kp.device_id, frame.command_name, exc)
        self._notify(FrameDropped(kp.device_id, reason="bad_payload"))
        if nak:
            self._nak(frame, NakCode.BAD_PAYLOAD)

    def _on_frame(self, frame: Frame) -> None:
        """Dispatch one valid frame: mark its keypad seen, answer it, route replies and events."""
        kp = self._by_address.get(frame.addr)
        command = frame.command
        if command in _HUB_TO_KEYPAD:
            _LOG.debug("ignoring %s to address %d heard on the line", frame.command_name, frame.addr)
            return
        if kp is None:
            _LOG.info("frame from unconfigured address %d on %s", frame.addr, self.port)
            self._notify(FrameDropped(self.device_id, reason="unknown_address"))
            return
        self._seen(kp)
        try:
            if command in (Command.ACK, Command.NAK):
                self._on_reply(kp, frame)
            elif command == Command.PONG:
                kp.firmware = Pong.decode(frame.payload).firmware
                self._ack(frame)
            elif command == Command.STATUS:
                self._on_status(kp, Status.decode(frame.payload))
                self._ack(frame)
            elif command == Command.KEY:
                self._spawn(self._on_key(kp, frame, Key.decode(frame.payload)))
            else:
                _LOG.info("keypad %s sent unknown command %s", kp.device_id, frame.command_name)
                self._notify(FrameDropped(kp.device_id, reason="unknown_command"))
                self._nak(frame, NakCode.UNKNOWN_COMMAND)
        except PayloadError as exc:
            self._bad_payload(kp, frame, exc, nak=command not in (Command.ACK, Command.NAK))

    def _seen(self, kp: _Keypad) -> None:
        kp.last_seen = asyncio.get_running_loop().time()
        if kp.online is not True:
            kp.online = True
            detail = f"keypad at address {kp.address} on {self.port}"
            _LOG.info("keypad %s online (%s)", kp.device_id, detail)
            self._notify(DeviceOnline(kp.device_id, detail=detail))

    def _on_reply(self, kp: _Keypad, frame: Frame) -> None:
        reply: Ack | Nak = (
            Ack.decode(frame.payload) if frame.cmd == Command.ACK else Nak.decode(frame.payload)
        )
        future = kp.replies.get((reply.seq, reply.cmd))
        if future is not None and not future.done():
            future.set_result(reply)
        else:
            _LOG.debug("unexpected %s from keypad %s", frame.command_name, kp.device_id)

    def _on_status(self, kp: _Keypad, status: Status) -> None:
        if status.flags != kp.flags:
            kp.flags = status.flags
            _LOG.info("keypad %s faults: %s", kp.device_id, ", ".join(status.faults) or "none")
            self._notify(DeviceFault(kp.device_id, faults=status.faults))

    async def _on_key(self, kp: _Keypad, frame: Frame, key: Key) -> None:
        """Submit a KEY (or join the submit of its retransmitted twin) and ACK once it is stored.

        A retransmission that arrives while its first copy is still being stored joins that submit
        instead of racing it; once stored, a repeat is the hub's to recognise (it answers DUPLICATE).
        """
        # Twins: a prompted rating repeats its session and level, a free one (session 0) its SEQ.
        twin = (key.session, key.level) if key.session else (0, frame.seq)
        pending = kp.keys_inflight.get(twin)
        if pending is None:
            event = KeyPressed(
                kp.device_id, session=key.session, level=key.level, reasons=key.reasons, seq=frame.seq
            )
            pending = self._spawn(self._submit(event))
            kp.keys_inflight[twin] = pending
            pending.add_done_callback(partial(self._key_settled, kp, twin))
        else:
            _LOG.debug("KEY %s from %s already being stored", twin, kp.device_id)
        outcome: Outcome = await asyncio.shield(pending)
        if outcome in (Outcome.STORED, Outcome.DUPLICATE):
            self._ack(frame)
            if kp.prompt is not None and kp.prompt.payload.session == key.session:
                kp.prompt = None
        elif outcome == Outcome.REJECTED:
            self._nak(frame, NakCode.BAD_PAYLOAD)
        else:
            _LOG.warning("KEY %s from %s not stored; not acked", twin, kp.device_id)

    @staticmethod
    def _key_settled(kp: _Keypad, twin: tuple[int, int], task: asyncio.Task[Outcome]) -> None:
        if kp.keys_inflight.get(twin) is task:
            del kp.keys_inflight[twin]

    async def _submit(self, event: KeyPressed) -> Outcome:
        sink = self._sink
        if sink is None:
            return Outcome.FAILED
        try:
            return await sink.submit(event)
        except Exception:
            _LOG.exception("event sink failed to store %r", event)
            return Outcome.FAILED


def from_config(devices: Sequence[DeviceConfig], context: DriverContext) -> KeypadLineDriver:
    """The registry's factory: one driver for the keypads configured on one port."""
    del context  # keypads see no card
    first = devices[0]
    return KeypadLineDriver(first.port or "", serial_baud(first), {d.address or 1: d.id for d in devices})


if TYPE_CHECKING:
    _FACTORY: DriverFactory = from_config  # mypy checks that `KeypadLineDriver` is a `drivers.base.Driver`
