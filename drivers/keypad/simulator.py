"""Simulated HKP/1 keypads on the far end of a pseudo-terminal, for tests, the demo and the CLI.

The simulator speaks the real wire protocol through the same codec and framing as the driver. A
`PtyPort` (`drivers.pty_port`) stands in for a USB-serial adapter: a raw pty pair reachable through
a stable symlink that the driver opens like `/dev/serial/by-id/...`, which can be unplugged (pair
closed, link removed) and plugged back (new pair, same link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Self, TypeVar

from drivers.history import HISTORY_KEPT, remember
from drivers.keypad.codec import (
    BROADCAST,
    REASON_CODES,
    SILENCE_AT_9600_S,
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
    Pong,
    Prompt,
    Show,
    Status,
    encode_frame,
    make_frame,
)
from drivers.keypad.protocol import HkpProtocol
from drivers.pty_port import PtyMasterTransport, PtyPort

__all__ = [
    "KeyPress",
    "PtyPort",
    "SimulatedKeypad",
    "SimulatedLine",
    "SimulationSummary",
    "run_simulated_line",
]

_LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
_SETTLE_S: Final = 15.0  # how long run_simulated_line waits for the last presses to be acked
BAD_REVIEW_REASONS: Final = ("R1", "R2", "R3", "R4", "R5", "R8")


@dataclass(eq=False)
class KeyPress:
    """One KEY a simulated keypad is sending: how often it was sent and whether it was acked."""

    frame: Frame
    key: Key
    sends: int = 0
    refused: int | None = None  # the NAK code if the hub refused it
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, timeout_s: float = 15.0) -> bool:
        """Wait (at most `timeout_s`) until it was acked or the keypad gave up; True if acked."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.done.wait()
        return self.acked.is_set()


@dataclass(frozen=True, slots=True)
class _ShownPrompt:
    prompt: Prompt
    at: float


class SimulatedKeypad:
    """One keypad at an HKP/1 address: answers commands, records them, sends KEY and STATUS.

    Misbehaviour switches: `silent` (hears but never answers or sends), `drop_acks` (ignore the
    hub's next n ACKs), `corrupt_next` (send the next n frames with a bad CRC), `noise_bytes`
    (random bytes before every frame sent), `nak_next` (answer the next commands with these NAKs).
    """

    def __init__(
        self,
        address: int,
        *,
        firmware: str = "HKP-SIM 1.0",
        retransmit_interval_s: float = 0.5,
        max_sends: int = 20,
        status_interval_s: float | None = None,
        seed: int | None = None,
        on_prompt: Callable[[SimulatedKeypad, Prompt], None] | None = None,
    ) -> None:
        if not 1 <= address < BROADCAST:
            raise ValueError(f"keypad address must be 1..254, got {address}")
        self.address = address
        self.firmware = firmware
        self.retransmit_interval_s = retransmit_interval_s
        self.max_sends = max_sends
        self.status_interval_s = status_interval_s
        self.on_prompt = on_prompt
        self.flags = 0
        self.silent = False
        self.drop_acks = 0
        self.corrupt_next = 0
        self.noise_bytes = 0
        self.nak_next: list[NakCode] = []
        self.received: list[Frame] = []
        self.pings = 0
        self.prompts: list[Prompt] = []
        self.cancels: list[int] = []
        self.shows: list[str] = []
        self.acks_received: list[Ack] = []
        self.acks_ignored = 0
        self.naks_received: list[Nak] = []
        self.presses: list[KeyPress] = []
        self._shown: _ShownPrompt | None = None
        self._seq = 0
        self._random = random.Random(seed)
        self._line: SimulatedLine | None = None

    @property
    def active_prompt(self) -> Prompt | None:
        """The prompt on the display, if it has not timed out (timeout 0: until cancelled)."""
        shown = self._shown
        if shown is None:
            return None
        timeout = shown.prompt.timeout_s
        if timeout and asyncio.get_running_loop().time() - shown.at >= timeout:
            self._shown = None
            return None
        return shown.prompt

    def press(self, level: int, reasons: Sequence[str] = (), session: int | None = None) -> KeyPress:
        """Press a rating key: send KEY, resend it until acked (at most `max_sends` times).

        `session` defaults to the active prompt's session, or 0 (a free rating) without one.
        """
        line = self._attached()
        if session is None:
            prompt = self.active_prompt
            session = prompt.session if prompt is not None else 0
        if self._shown is not None and self._shown.prompt.session == session:
            self._shown = None
        key = Key(session, level, tuple(reasons))
        press = KeyPress(make_frame(self.address, self._next_seq(), key), key)
        if len(self.presses) >= 2 * HISTORY_KEPT:  # keep the newest, and any still being sent
            older, newest = self.presses[:-HISTORY_KEPT], self.presses[-HISTORY_KEPT:]
            self.presses = [p for p in older if not p.done.is_set()] + newest
        self.presses.append(press)
        line.spawn(self._send_until_acked(press))
        return press

    def free_rating(self, level: int, reasons: Sequence[str] = ()) -> KeyPress:
        """A rating pressed without a prompt (session 0)."""
        return self.press(level, reasons, session=0)

    def send_status(self, flags: int | None = None) -> None:
        """Send one STATUS heartbeat (with new `flags` if given)."""
        if flags is not None:
            self.flags = flags
        self._send_new(Status(self.flags))

    def attach(self, line: SimulatedLine) -> None:
        """Connect the keypad to the line it sends on (done by `SimulatedLine.add`)."""
        self._line = line

    def _attached(self) -> SimulatedLine:
        if self._line is None:
            raise RuntimeError(f"simulated keypad {self.address} is not on a line")
        return self._line

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _send(self, frame: Frame) -> None:
        if self.silent:
            return
        data = encode_frame(frame)
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            data = data[:-3] + bytes((data[-3] ^ 0xFF,)) + data[-2:]
        if self.noise_bytes:
            data = self._random.randbytes(self.noise_bytes) + data
        self._attached().write(data)

    def _send_new(self, payload: Payload) -> None:
        self._send(make_frame(self.address, self._next_seq(), payload))

    def _reply(self, frame: Frame, payload: Payload) -> None:
        """Answer `frame`; ACK and NAK carry its SEQ in the header too, as in CONTRACTS §3."""
        self._send(make_frame(self.address, frame.seq, payload))

    async def _send_until_acked(self, press: KeyPress) -> None:
        try:
            for _ in range(self.max_sends):
                if not self.silent:
                    press.sends += 1
                    self._send(press.frame)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.retransmit_interval_s):
                        await press.stop.wait()
                if press.stop.is_set():
                    return
        finally:
            press.done.set()

    async def heartbeat(self) -> None:
        """Send STATUS every `status_interval_s` until cancelled (run by the line)."""
        if self.status_interval_s is None:
            return
        while True:
            await asyncio.sleep(self.status_interval_s)
            self.send_status()

    def handle_frame(self, frame: Frame) -> None:
        """React to a frame addressed to this keypad (or to all: then nothing is answered)."""
        remember(self.received, frame)
        if self.silent:
            return
        answer = frame.addr != BROADCAST
        if frame.cmd == Command.ACK:
            self._on_ack(frame)
            return
        if frame.cmd == Command.NAK:
            self._on_nak(frame)
            return
        if self.nak_next:
            code = self.nak_next.pop(0)
            if answer:
                self._reply(frame, Nak(frame.seq, frame.cmd, code))
            return
        try:
            follow_up = self._execute(frame)
        except PayloadError:
            if answer:
                self._reply(frame, Nak(frame.seq, frame.cmd, NakCode.BAD_PAYLOAD))
            return
        if not answer:
            return
        if follow_up is False:
            self._reply(frame, Nak(frame.seq, frame.cmd, NakCode.UNKNOWN_COMMAND))
            return
        self._reply(frame, Ack(frame.seq, frame.cmd))
        if frame.cmd == Command.PING:
            self._send_new(Pong(self.firmware))

    def _execute(self, frame: Frame) -> bool:
        """Apply a hub command; False if this keypad does not know it."""
        if frame.cmd == Command.PING:
            self.pings += 1
        elif frame.cmd == Command.PROMPT:
            prompt = Prompt.decode(frame.payload)
            remember(self.prompts, prompt)
            self._shown = _ShownPrompt(prompt, asyncio.get_running_loop().time())
            if self.on_prompt is not None:
                self.on_prompt(self, prompt)
        elif frame.cmd == Command.CANCEL:
            session = Cancel.decode(frame.payload).session
            remember(self.cancels, session)
            if self._shown is not None and self._shown.prompt.session == session:
                self._shown = None
        elif frame.cmd == Command.SHOW:
            remember(self.shows, Show.decode(frame.payload).text)
        else:
            return False
        return True

    def _on_nak(self, frame: Frame) -> None:
        """Record a NAK; one refusing a KEY for good (not bad CRC or busy) ends that press."""
        try:
            nak = Nak.decode(frame.payload)
        except PayloadError:
            return
        remember(self.naks_received, nak)
        if nak.code in (NakCode.BAD_CRC, NakCode.BUSY):
            return
        for press in self.presses:
            if not press.done.is_set() and (press.frame.seq, press.frame.cmd) == (nak.seq, nak.cmd):
                press.refused = nak.code
                press.stop.set()

    def _on_ack(self, frame: Frame) -> None:
        try:
            ack = Ack.decode(frame.payload)
        except PayloadError:
            return
        remember(self.acks_received, ack)
        for press in self.presses:
            if press.done.is_set() or (press.frame.seq, press.frame.cmd) != (ack.seq, ack.cmd):
                continue
            if self.drop_acks > 0:
                self.drop_acks -= 1
                self.acks_ignored += 1
            else:
                press.acked.set()
                press.stop.set()
            return


class SimulatedLine:
    """A serial line of simulated keypads behind one `PtyPort`; an async context manager.

    `unplug`/`replug` take the pty away and bring a new one at the same path; the keypads keep
    their state (as real keypads do when only the USB-serial adapter is pulled). With `echo`, every
    byte the hub writes comes back to it, as on a two-wire RS-485 bus whose adapter keeps its
    receiver on while sending.
    """

    def __init__(
        self,
        link: str | Path,
        keypads: Iterable[SimulatedKeypad] = (),
        *,
        silence_s: float = SILENCE_AT_9600_S,
        echo: bool = False,
    ) -> None:
        self.port = PtyPort(link)
        self.silence_s = silence_s
        self.echo = echo
        self.keypads: dict[int, SimulatedKeypad] = {}
        self.drops: list[DroppedFrame] = []
        self._proto: HkpProtocol | None = None
        self._transport: PtyMasterTransport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        for keypad in keypads:
            self.add(keypad)

    @property
    def path(self) -> str:
        """The stable path the driver opens."""
        return str(self.port.link)

    @property
    def plugged(self) -> bool:
        """True while the pty exists."""
        return self.port.plugged

    def add(self, keypad: SimulatedKeypad) -> SimulatedKeypad:
        """Put a keypad on the line (before or after `start`)."""
        if keypad.address in self.keypads:
            raise ValueError(f"address {keypad.address} is already on the line")
        keypad.attach(self)
        self.keypads[keypad.address] = keypad
        if self._started:
            self.spawn(keypad.heartbeat())
        return keypad

    async def start(self) -> None:
        """Plug the pty in and start the keypads' heartbeats."""
        if self._started:
            return
        self._started = True
        self.replug()
        for keypad in self.keypads.values():
            self.spawn(keypad.heartbeat())

    async def stop(self) -> None:
        """Stop every keypad task and unplug."""
        self._started = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.unplug()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def unplug(self) -> None:
        """Pull the adapter: close the pty pair and remove the link."""
        if self._transport is not None:
            self._transport.abort()
        self._proto = self._transport = None
        if self.port.plugged:
            self.port.unplug()

    def replug(self) -> None:
        """Plug a new pty pair in at the same path."""
        if self.port.plugged:
            return
        fd = self.port.plug()
        proto = HkpProtocol(self._on_frame, self._on_drop, silence_s=self.silence_s)
        self._transport = PtyMasterTransport(fd, proto, echo=self.echo)
        self._proto = proto

    def write(self, data: bytes) -> None:
        """Put raw bytes on the line (lost while unplugged)."""
        if self._transport is not None:
            self._transport.write(data)

    def inject(self, data: bytes) -> None:
        """Write arbitrary bytes (noise, broken frames) to the hub."""
        self.write(data)

    def spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run a task owned by the line (cancelled by `stop`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_drop(self, drop: DroppedFrame) -> None:
        """A frame from the hub the line could not read: only the newest are kept (lines run for hours)."""
        remember(self.drops, drop)

    def _on_frame(self, frame: Frame) -> None:
        if frame.addr == BROADCAST:
            for keypad in self.keypads.values():
                keypad.handle_frame(frame)
            return
        target = self.keypads.get(frame.addr)
        if target is not None:
            target.handle_frame(frame)


@dataclass(slots=True)
class SimulationSummary:
    """What `run_simulated_line` did."""

    prompts: int = 0
    presses: int = 0
    free_ratings: int = 0
    acked: int = 0
    unacked: int = 0
    levels: dict[int, int] = field(default_factory=dict)


def _random_rating(rng: random.Random) -> tuple[int, tuple[str, ...]]:
    level = rng.choices((5, 4, 3, 2, 1), weights=(50, 25, 12, 8, 5))[0]
    if level > 2:
        return level, ()
    count = rng.randint(0, 2)
    return level, tuple(sorted(rng.sample(BAD_REVIEW_REASONS, count), key=REASON_CODES.index))


async def run_simulated_line(
    port: str | Path,
    addresses: Sequence[int],
    *,
    duration_s: float = 60.0,
    max_presses: int = 100,
    free_ratings_per_min: float = 0.0,
    press_delay_s: tuple[float, float] = (1.0, 5.0),
    status_interval_s: float | None = 10.0,
    seed: int | None = None,
) -> SimulationSummary:
    """Serve simulated keypads at `addresses` on a pty linked at `port` for the hub to open.

    A prompted keypad presses a random rating after a random delay; with `free_ratings_per_min`
    a random keypad also rates without a prompt. Stops after `duration_s` or `max_presses`.
    """
    if not addresses:
        raise ValueError("at least one keypad address is needed")
    rng = random.Random(seed)
    summary = SimulationSummary()
    budget = asyncio.Event()
    line = SimulatedLine(port)

    def record(press: KeyPress) -> None:
        summary.presses += 1
        summary.free_ratings += press.key.session == 0
        summary.levels[press.key.level] = summary.levels.get(press.key.level, 0) + 1
        if summary.presses >= max_presses:
            budget.set()

    async def answer(keypad: SimulatedKeypad, prompt: Prompt) -> None:
        low, high = press_delay_s
        delay = rng.uniform(low, high)
        if prompt.timeout_s:
            delay = min(delay, max(prompt.timeout_s - 0.5, 0.0))
        await asyncio.sleep(delay)
        current = keypad.active_prompt
        if current is not None and current.session == prompt.session and not budget.is_set():
            level, reasons = _random_rating(rng)
            record(keypad.press(level, reasons))

    def on_prompt(keypad: SimulatedKeypad, prompt: Prompt) -> None:
        summary.prompts += 1
        line.spawn(answer(keypad, prompt))

    async def free_ratings() -> None:
        rate = free_ratings_per_min / 60.0
        while not budget.is_set():
            await asyncio.sleep(rng.expovariate(rate))
            if budget.is_set():
                return
            keypad = rng.choice(list(line.keypads.values()))
            level, reasons = _random_rating(rng)
            record(keypad.free_rating(level, reasons))

    for address in addresses:
        line.add(
            SimulatedKeypad(
                address,
                status_interval_s=status_interval_s,
                seed=rng.randrange(1 << 30),
                on_prompt=on_prompt,
            )
        )
    async with line:
        _LOG.info("simulated keypads %s serving on %s", list(addresses), line.path)
        if free_ratings_per_min > 0:
            line.spawn(free_ratings())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration_s):
                await budget.wait()
        presses = [press for keypad in line.keypads.values() for press in keypad.presses]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_SETTLE_S):
                await asyncio.gather(*(press.done.wait() for press in presses))
    summary.acked = sum(press.acked.is_set() for press in presses)
    summary.unacked = len(presses) - summary.acked
    return summary
