"""A hall's day, compressed: the devices and people around a hub, for the soak benchmark (bench/soak.py).

Runs in its own process, as bench/loadgen.py does for ingest, so that the hub's process holds only
the hub. Everything a hall does is played at `speed` times its real rate (20 by default):

- citizens arrive at each window (one every ~4 minutes of hall time); the window PC (a queue
  system on MQTT, `window/{w}/evaluate`) asks for an evaluation; the keypad (HKP/1 on a simulated
  RS-485 line, a pty) or the rating pad (MQTT) of that window is prompted and the citizen rates it,
  walks away (the session expires) or the clerk asks again (the first session is cancelled);
- ~5 % of ratings are bad reviews; staff acknowledge most of the bad-review alerts some minutes
  later (`POST /v1/alerts/{id}/ack` with the control token), call the citizen back
  (`/callback`, §11) and settle the complaint an hour later (`/rectify`); the rest stay open and
  fall overdue;
- staff sign in at every window as the hall opens (`window/{w}/staff`, §12), pause for breaks and
  resume, hand over to a colleague (sign out, sign in), and now and then send an event the window's
  state refuses (resume a window that is not paused); half the window PCs' requests name no staff
  and take whoever is signed in;
- ID cards are read at windows 01 and 02 (SAM readers on ptys), QR codes scanned at window 01 (a
  serial scanner on a pty) and at windows 05-08 (MQTT scanners);
- two self-service terminals rate, print, scan pickup codes and report their paper running low and
  out (device fault alerts raised and cleared); now and then a pad is switched off for a few
  minutes (offline alert raised and cleared) and on again;
- the status page is open (`/v1/status` every 10 s) and a monitor polls `/healthz`; the hub
  pushes everything to a reference central receiver served by this process.

Device timers (ack retries, card dwell, keypad heartbeats) run at real speed: only the hall's
pace is compressed. Every loop is bounded in time (`duration_s`) and count.

Protocol: the spec is a JSON argument; the process prints `{"event": "ready", "central_url": ...}`
once its ptys and receiver exist, starts on a line `go` on stdin, and prints its tally as one JSON
line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import aiomqtt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contract.topics import Topics  # noqa: E402
from drivers.idcard.simulator import SimulatedSamReader, demo_cards  # noqa: E402
from drivers.keypad.codec import REASON_CODES, Prompt  # noqa: E402
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine  # noqa: E402
from drivers.qr.simulator import SimulatedSerialScanner  # noqa: E402
from sync.receiver import RunningReceiver, start_receiver  # noqa: E402

# The hall (real time, seconds); divided by the spec's speed.
CITIZEN_INTERVAL_S: Final = 240.0  # per window, exponential
RATE_DELAY_S: Final = (5.0, 20.0)  # from the prompt to the press
SESSION_TIMEOUT_S: Final = 60
WALK_AWAY_SHARE: Final = 0.07
ASK_AGAIN_SHARE: Final = 0.05
SCAN_SHARE: Final = 0.4
TERMINAL_RATING_INTERVAL_S: Final = 600.0
TERMINAL_PRINT_INTERVAL_S: Final = 300.0
TERMINAL_HEALTH_INTERVAL_S: Final = 900.0
PAD_SWITCHED_OFF_EVERY_S: Final = 3 * 3600.0  # somewhere in the hall
PAD_OFF_FOR_S: Final = 300.0
ALERT_ACK_AFTER_S: Final = 600.0
ALERT_ACK_SHARE: Final = 0.8
RECTIFY_AFTER_S: Final = 3600.0  # after the callback
SUBSTANTIATED_SHARE: Final = 0.4
STAFF_EVENT_INTERVAL_S: Final = 5400.0  # per window, exponential: a break or a hand-over
BREAK_S: Final = (600.0, 1200.0)
HANDOVER_SHARE: Final = 0.3
REFUSED_EVENT_SHARE: Final = 0.05
REQUESTS_NAMING_STAFF: Final = 0.5
LEVEL_WEIGHTS: Final = {5: 62, 4: 22, 3: 11, 2: 3, 1: 2}

# Device and network timers (not compressed).
ACK_RETRY_S: Final = 5.0
ACK_ATTEMPTS: Final = 6
CARD_DWELL_S: Final = 1.2
KEYPAD_HEARTBEAT_S: Final = 10.0
STATUS_POLL_S: Final = 10.0
HEALTHZ_POLL_S: Final = 5.0
GO_TIMEOUT_S: Final = 120.0
SETTLE_S: Final = 20.0
MAX_EVENTS_PER_LOOP: Final = 1_000_000

KEYPAD_WINDOWS: Final = ("01", "02", "03", "04")
PAD_WINDOWS: Final = ("05", "06", "07", "08", "09", "10", "11", "12")
IDCARD_WINDOWS: Final = ("01", "02")
MQTT_QR_WINDOWS: Final = ("05", "06", "07", "08")
TERMINALS: Final = ("term-1", "term-2")
ITEMS: Final = (
    ("370100-001-01", "居民身份证换领"),
    ("370100-017-03", "社保卡补办"),
    ("370100-052-02", "营业执照变更"),
    ("370100-088-01", "不动产登记"),
)
STAFF: Final = ("张三", "李四", "王五", "赵六", "钱七", "孙八")
PAD_REASONS: Final = ("R1", "R2", "R3", "R4")


def hall_devices(tty_dir: Path) -> list[dict[str, Any]]:
    """The hall's `[[device]]` entries; soak.py writes them into the hub's config."""
    line = str(tty_dir / "keypads")
    devices: list[dict[str, Any]] = [
        {"id": f"kp-{w}", "kind": "keypad", "transport": "serial", "port": line, "address": n, "window": w}
        for n, w in enumerate(KEYPAD_WINDOWS, start=1)
    ]
    devices += [{"id": f"pad-{w}", "kind": "pad", "transport": "mqtt", "window": w} for w in PAD_WINDOWS]
    devices += [
        {
            "id": f"id-{w}",
            "kind": "idcard",
            "transport": "serial",
            "port": str(tty_dir / f"idcard-{w}"),
            "baud": 115200,
            "window": w,
        }
        for w in IDCARD_WINDOWS
    ]
    devices.append(
        {"id": "qr-01", "kind": "qr", "transport": "serial", "port": str(tty_dir / "qr-01"), "window": "01"}
    )
    devices += [{"id": f"qr-{w}", "kind": "qr", "transport": "mqtt", "window": w} for w in MQTT_QR_WINDOWS]
    devices += [{"id": t, "kind": "terminal", "transport": "mqtt"} for t in TERMINALS]
    return devices


@dataclass
class Tally:
    """What the hall did, as counted on the devices' side."""

    counts: Counter[str] = field(default_factory=Counter)
    sessions: Counter[str] = field(default_factory=Counter)
    acks: Counter[str] = field(default_factory=Counter)
    http: Counter[str] = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        """The tally as printed at the end."""
        return {
            "counts": dict(self.counts),
            "sessions": dict(self.sessions),
            "acks": dict(self.acks),
            "http": dict(self.http),
        }


CommandHandler = Callable[["MqttDevice", dict[str, Any]], None]


class MqttDevice:
    """One MQTT device as firmware behaves: retained online state, a will, every message resent
    with the same msg_id until its ack comes."""

    def __init__(self, host: str, port: int, topics: Topics, device_id: str, kind: str, tally: Tally) -> None:
        self.host = host
        self.port = port
        self.topics = topics
        self.device_id = device_id
        self.kind = kind
        self.tally = tally
        self.on_command: CommandHandler | None = None
        self._mqtt: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[str]] = {}

    async def connect(self) -> None:
        """Connect, subscribe to ack/cmd/error, publish the retained online state."""
        will = aiomqtt.Will(
            self.topics.device(self.device_id, "state"), b'{"online":false}', qos=1, retain=True
        )
        client = aiomqtt.Client(
            self.host, self.port, identifier=f"hall-{self.device_id}-{uuid.uuid4().hex[:6]}", will=will
        )
        await client.__aenter__()
        self._mqtt = client
        for leaf in ("ack", "cmd", "error"):
            await client.subscribe(self.topics.device(self.device_id, leaf), qos=1)
        state = {"online": True, "kind": self.kind, "fw": "hallday-1"}
        await self.publish("state", json.dumps(state).encode(), retain=True)
        self._reader = asyncio.create_task(self._read(client))

    async def close(self) -> None:
        """Switch off cleanly: retained offline state, then disconnect."""
        client, self._mqtt = self._mqtt, None
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.topics.device(self.device_id, "state"), b'{"online":false}', qos=1, retain=True
            )
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            leaf = str(message.topic).rsplit("/", 1)[-1]
            payload = message.payload if isinstance(message.payload, bytes) else b"{}"
            body = json.loads(payload)
            if leaf == "ack":
                self.tally.acks[str(body.get("status"))] += 1
                future = self._pending.get(str(body.get("msg_id")))
                if future is not None and not future.done():
                    future.set_result(str(body.get("status")))
            elif leaf == "cmd" and self.on_command is not None:
                self.on_command(self, body)
            elif leaf == "error":
                self.tally.counts["device_errors"] += 1

    async def publish(self, leaf: str, payload: bytes, *, retain: bool = False) -> bool:
        """One QoS-1 publish on this device's topic; False while switched off or disconnected."""
        client = self._mqtt
        if client is None:
            return False
        try:
            await client.publish(self.topics.device(self.device_id, leaf), payload, qos=1, retain=retain)
        except aiomqtt.MqttError:
            return False
        return True

    async def send(self, leaf: str, body: dict[str, Any]) -> str | None:
        """Send with a fresh msg_id until acked (at most ACK_ATTEMPTS tries); the ack's status."""
        msg_id = uuid.uuid4().hex
        payload = json.dumps({"msg_id": msg_id, **body}, ensure_ascii=False).encode()
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            for attempt in range(ACK_ATTEMPTS):
                if attempt:
                    self.tally.counts["resent"] += 1
                await self.publish(leaf, payload)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), ACK_RETRY_S)
            self.tally.counts["not_acked"] += 1
            return None
        finally:
            self._pending.pop(msg_id, None)


class HallDay:
    """The whole hall, run for `duration_s` at `speed` times its real pace."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host = "127.0.0.1"
        self.port = int(spec["broker_port"])
        self.speed = max(1.0, float(spec.get("speed", 20.0)))
        self.duration_s = float(spec["duration_s"])
        self.tty_dir = Path(spec["tty_dir"])
        self.work_dir = Path(spec["work_dir"])
        self.central_token = str(spec["central_token"])
        self.control_token = str(spec.get("control_token", ""))
        self.api_url = ""
        self.topics = Topics(str(spec["node_id"]))
        self.rng = random.Random(int(spec.get("seed", 1)))
        self.tally = Tally()
        self.end = 0.0
        self.plans: dict[str, str] = {}
        self.line = SimulatedLine(self.tty_dir / "keypads")
        self.keypads = {
            w: self.line.add(
                SimulatedKeypad(
                    n, status_interval_s=KEYPAD_HEARTBEAT_S, seed=n, on_prompt=self._keypad_prompted
                )
            )
            for n, w in enumerate(KEYPAD_WINDOWS, start=1)
        }
        self.readers = {
            w: SimulatedSamReader(self.tty_dir / f"idcard-{w}", seed=i) for i, w in enumerate(IDCARD_WINDOWS)
        }
        self.scanner = SimulatedSerialScanner(self.tty_dir / "qr-01")
        self.devices: dict[str, MqttDevice] = {}
        self.window_pc: aiomqtt.Client | None = None
        self.alert_ids: asyncio.Queue[tuple[float, str]] = asyncio.Queue(maxsize=10_000)
        self.to_rectify: asyncio.Queue[tuple[float, str]] = asyncio.Queue(maxsize=10_000)
        self.signed_in: dict[str, str] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cards = demo_cards()

    # -- set-up ----------------------------------------------------------------------------------

    async def start_serial(self) -> None:
        """Plug the keypad line, the card readers and the serial scanner in (before the hub starts)."""
        self.tty_dir.mkdir(parents=True, exist_ok=True)
        await self.line.start()
        for reader in self.readers.values():
            await reader.start()
        self.scanner.plug()

    async def stop_serial(self) -> None:
        """Unplug every serial device."""
        await self.line.stop()
        for reader in self.readers.values():
            await reader.close()
        self.scanner.unplug()

    async def connect(self) -> None:
        """The MQTT devices and the window PC (queue system) connect, as at opening time."""
        for w in PAD_WINDOWS:
            pad = MqttDevice(self.host, self.port, self.topics, f"pad-{w}", "pad", self.tally)
            pad.on_command = self._pad_commanded
            self.devices[pad.device_id] = pad
        for w in MQTT_QR_WINDOWS:
            self.devices[f"qr-{w}"] = MqttDevice(
                self.host, self.port, self.topics, f"qr-{w}", "qr", self.tally
            )
        for t in TERMINALS:
            self.devices[t] = MqttDevice(self.host, self.port, self.topics, t, "terminal", self.tally)
        for device in self.devices.values():
            await device.connect()
        self.window_pc = aiomqtt.Client(
            self.host, self.port, identifier=f"queue-system-{uuid.uuid4().hex[:6]}"
        )
        await self.window_pc.__aenter__()
        await self.window_pc.subscribe(f"{self.topics.root}/window/+/session", qos=1)
        await self.window_pc.subscribe(self.topics.alerts, qos=1)
        await self.window_pc.subscribe(f"{self.topics.root}/window/+/state", qos=1)
        await self.window_pc.subscribe(f"{self.topics.root}/window/+/error", qos=1)

    async def disconnect(self) -> None:
        """Close every MQTT connection."""
        for device in self.devices.values():
            await device.close()
        if self.window_pc is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self.window_pc.__aexit__(None, None, None)

    # -- the day ---------------------------------------------------------------------------------

    def hall_s(self, seconds: float) -> float:
        """Real hall time compressed by the speed."""
        return seconds / self.speed

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run a short-lived task (a press, an answer), kept until done."""
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        """The day: every loop until `duration_s` has passed, then let the last acks come."""
        self.end = time.monotonic() + self.duration_s
        windows = (*KEYPAD_WINDOWS, *PAD_WINDOWS)
        for window in windows:
            await self._staff_event(window, "sign_in", self._next_staff())
        loops = [self._window(w) for w in windows]
        loops += [self._staff(w) for w in windows]
        loops += [self._terminal(t) for t in TERMINALS]
        loops += [
            self._when_due(self.alert_ids, self._acknowledge),
            self._when_due(self.to_rectify, self._rectify),
        ]
        loops += [self._switch_pads_off(), self._listen()]
        loops += [self._poll_api()]
        runners = [asyncio.create_task(loop) for loop in loops]
        try:
            await asyncio.sleep(self.duration_s)
        finally:
            for runner in runners:
                runner.cancel()
            await asyncio.gather(*runners, return_exceptions=True)
        settle = time.monotonic() + SETTLE_S
        while self.tasks and time.monotonic() < settle:
            await asyncio.sleep(0.2)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _running(self) -> bool:
        return time.monotonic() < self.end

    def _level(self) -> int:
        return self.rng.choices(list(LEVEL_WEIGHTS), weights=list(LEVEL_WEIGHTS.values()))[0]

    async def _window(self, window: str) -> None:
        """Citizens at one window, one after another."""
        for _ in range(MAX_EVENTS_PER_LOOP):
            await asyncio.sleep(self.rng.expovariate(1.0 / self.hall_s(CITIZEN_INTERVAL_S)))
            if not self._running():
                return
            await self._citizen(window)

    async def _citizen(self, window: str) -> None:
        """One citizen: the card is read, a code maybe scanned, the clerk asks for an evaluation."""
        self.tally.counts["citizens"] += 1
        reader = self.readers.get(window)
        if reader is not None:
            reader.place_card(self.rng.choice(self.cards))
            self.tally.counts["cards_placed"] += 1
            await asyncio.sleep(CARD_DWELL_S)
            reader.remove_card()
        if self.rng.random() < SCAN_SHARE:
            await self._scan(
                window, f"https://hcp.example.gov.cn/evaluate?case_no=SD{self.rng.randrange(10**9):09d}"
            )
        draw = self.rng.random()
        plan = (
            "walk_away"
            if draw < WALK_AWAY_SHARE
            else "ask_again"
            if draw < WALK_AWAY_SHARE + ASK_AGAIN_SHARE
            else "rate"
        )
        self.plans[window] = plan
        await self._ask(window)
        if plan == "ask_again":
            await asyncio.sleep(self.hall_s(3.0))
            self.plans[window] = "rate"
            await self._ask(window)

    async def _scan(self, window: str, code: str) -> None:
        if window == "01":
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                await self.scanner.scan(code)
                self.tally.counts["scans_serial"] += 1
            return
        device = self.devices.get(f"qr-{window}")
        if device is not None:
            self.tally.counts["scans_mqtt"] += 1
            self.spawn(device.send("scan", {"data": code, "symbology": "qr"}))

    async def _ask(self, window: str) -> None:
        """The window PC's evaluation request (`window/{w}/evaluate`)."""
        if self.window_pc is None:
            return
        item_code, item_name = self.rng.choice(ITEMS)
        request: dict[str, Any] = {
            "request_id": uuid.uuid4().hex[:16],
            "case_no": f"SD{self.rng.randrange(10**9):09d}",
            "item_code": item_code,
            "item_name": item_name,
            "timeout_s": max(1, round(self.hall_s(SESSION_TIMEOUT_S))),
        }
        if self.rng.random() < REQUESTS_NAMING_STAFF:
            request["staff_id"] = f"S{self.rng.randrange(1, 40):03d}"
            request["staff_name"] = self.rng.choice(STAFF)
        with contextlib.suppress(aiomqtt.MqttError):
            payload = json.dumps(request, ensure_ascii=False)
            await self.window_pc.publish(self.topics.window_evaluate(window), payload, qos=1)
            self.tally.counts["evaluate_requests"] += 1

    def _next_staff(self) -> str:
        return f"S{self.rng.randrange(1, 40):03d}"

    async def _staff_event(self, window: str, event: str, staff_id: str | None = None) -> None:
        """The window PC reports a staff event (`window/{w}/staff`, §12)."""
        if self.window_pc is None:
            return
        body: dict[str, Any] = {"request_id": uuid.uuid4().hex[:16], "event": event}
        if staff_id is not None:
            body["staff_id"] = staff_id
            body["staff_name"] = self.rng.choice(STAFF)
        if event == "pause":
            body["reason"] = "休息"
        with contextlib.suppress(aiomqtt.MqttError):
            payload = json.dumps(body, ensure_ascii=False)
            await self.window_pc.publish(self.topics.window_staff(window), payload, qos=1)
            self.tally.counts[f"staff_{event}"] += 1
            if event == "sign_in" and staff_id is not None:
                self.signed_in[window] = staff_id

    async def _staff(self, window: str) -> None:
        """Who serves at one window: breaks, hand-overs, and now and then a refused event."""
        for _ in range(MAX_EVENTS_PER_LOOP):
            await asyncio.sleep(self.rng.expovariate(1.0 / self.hall_s(STAFF_EVENT_INTERVAL_S)))
            if not self._running():
                return
            draw = self.rng.random()
            if draw < REFUSED_EVENT_SHARE:
                await self._staff_event(window, "resume")  # not paused: refused on window/{w}/error
            elif draw < REFUSED_EVENT_SHARE + HANDOVER_SHARE:
                await self._staff_event(window, "sign_out", self.signed_in.get(window))
                await asyncio.sleep(self.hall_s(60.0))
                await self._staff_event(window, "sign_in", self._next_staff())
            else:
                await self._staff_event(window, "pause")
                await asyncio.sleep(self.hall_s(self.rng.uniform(*BREAK_S)))
                await self._staff_event(window, "resume")

    def _answer_delay(self) -> float:
        return self.hall_s(self.rng.uniform(*RATE_DELAY_S))

    def _keypad_prompted(self, keypad: SimulatedKeypad, prompt: Prompt) -> None:
        window = KEYPAD_WINDOWS[keypad.address - 1]
        if self.plans.get(window) != "rate":
            return
        self.spawn(self._press(keypad, prompt.session))

    async def _press(self, keypad: SimulatedKeypad, session: int) -> None:
        await asyncio.sleep(self._answer_delay())
        current = keypad.active_prompt
        if current is None or current.session != session:
            return
        level = self._level()
        reasons = (
            tuple(sorted(self.rng.sample(REASON_CODES[:4], self.rng.randint(1, 2)))) if level <= 2 else ()
        )
        press = keypad.press(level, reasons, session=session)
        self.tally.counts["keypad_presses"] += 1
        self.tally.counts["bad_reviews"] += level <= 2
        if await press.wait(timeout_s=30.0):
            self.tally.counts["keypad_acked"] += 1

    def _pad_commanded(self, pad: MqttDevice, command: dict[str, Any]) -> None:
        window = pad.device_id.removeprefix("pad-")
        if command.get("cmd") == "prompt" and self.plans.get(window) == "rate":
            self.spawn(self._pad_rating(pad, int(command.get("session") or 0)))

    async def _pad_rating(self, pad: MqttDevice, session: int) -> None:
        await asyncio.sleep(self._answer_delay())
        level = self._level()
        body: dict[str, Any] = {"level": level, "session": session}
        if level <= 2:
            body["reasons"] = self.rng.sample(PAD_REASONS, self.rng.randint(1, 2))
            body["comment"] = self.rng.choice(["等候时间太长", "材料要求没有一次说清"])
        self.tally.counts["pad_ratings"] += 1
        self.tally.counts["bad_reviews"] += level <= 2
        await pad.send("rating", body)

    async def _terminal(self, device_id: str) -> None:
        """A self-service terminal: free ratings, print jobs, pickup scans, paper running out."""
        terminal = self.devices[device_id]
        intervals = {
            "rating": TERMINAL_RATING_INTERVAL_S,
            "print": TERMINAL_PRINT_INTERVAL_S,
            "health": TERMINAL_HEALTH_INTERVAL_S,
        }
        rate = sum(1.0 / self.hall_s(s) for s in intervals.values())
        paper = ("ok", "low", "low", "out", "ok")
        health_reports = 0
        for _ in range(MAX_EVENTS_PER_LOOP):
            await asyncio.sleep(self.rng.expovariate(rate))
            if not self._running():
                return
            what = self.rng.choices(list(intervals), weights=[1.0 / s for s in intervals.values()])[0]
            if what == "rating":
                item_code, _name = self.rng.choice(ITEMS)
                body = {
                    "level": self._level(),
                    "case_no": f"SD{self.rng.randrange(10**9):09d}",
                    "item_code": item_code,
                }
                self.tally.counts["terminal_ratings"] += 1
                self.spawn(terminal.send("rating", body))
            elif what == "print":
                job = {
                    "job_id": f"J{self.rng.randrange(10**6)}",
                    "state": "done",
                    "pages": self.rng.randint(1, 6),
                }
                self.tally.counts["prints"] += 1
                self.spawn(terminal.send("print", job))
                if self.rng.random() < 0.3:
                    self.tally.counts["pickup_scans"] += 1
                    self.spawn(terminal.send("scan", {"data": f"PICKUP{self.rng.randrange(10**6):06d}"}))
            else:
                report = {
                    "paper": paper[health_reports % len(paper)],
                    "temp_c": round(self.rng.uniform(25, 40), 1),
                }
                health_reports += 1
                self.tally.counts["health_reports"] += 1
                await terminal.publish("health", json.dumps(report).encode())

    async def _switch_pads_off(self) -> None:
        """Now and then a pad is switched off for a few minutes (offline alert raised, then cleared)."""
        for _ in range(MAX_EVENTS_PER_LOOP):
            await asyncio.sleep(self.rng.expovariate(1.0 / self.hall_s(PAD_SWITCHED_OFF_EVERY_S)))
            if not self._running():
                return
            pad = self.devices[f"pad-{self.rng.choice(PAD_WINDOWS)}"]
            await pad.close()
            self.tally.counts["pads_switched_off"] += 1
            await asyncio.sleep(self.hall_s(PAD_OFF_FOR_S))
            with contextlib.suppress(aiomqtt.MqttError):
                await pad.connect()

    async def _listen(self) -> None:
        """The queue system hears how sessions end, and the bad-review alerts staff will call back."""
        assert self.window_pc is not None
        async for message in self.window_pc.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b"{}"
            body = json.loads(payload)
            topic = str(message.topic)
            if topic.endswith("/session"):
                self.tally.sessions[str(body.get("state"))] += 1
            elif topic.endswith("/state"):
                self.tally.counts["window_states_heard"] += 1
            elif topic.endswith("/error"):
                self.tally.counts["window_errors_heard"] += 1
            elif body.get("kind") == "alert" and body.get("data", {}).get("type") == "bad_review":
                self.tally.counts["bad_review_alerts_heard"] += 1
                if self.rng.random() < ALERT_ACK_SHARE and not self.alert_ids.full():
                    self.alert_ids.put_nowait(
                        (time.monotonic() + self.hall_s(ALERT_ACK_AFTER_S), str(body["id"]))
                    )

    async def _when_due(
        self,
        queue: asyncio.Queue[tuple[float, str]],
        step: Callable[[aiohttp.ClientSession, str], Awaitable[None]],
    ) -> None:
        """Hand each alert id in `queue` to `step` when its time comes, until the day ends."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for _ in range(MAX_EVENTS_PER_LOOP):
                due, alert_id = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not self._running():
                    return
                await step(http, alert_id)

    async def _acknowledge(self, http: aiohttp.ClientSession, alert_id: str) -> None:
        """Staff acknowledge the alert on the status page minutes later and call the citizen back."""
        await self._post(http, f"/v1/alerts/{alert_id}/ack", {"by": "值班长"}, "alert_ack")
        callback = {"by": "值班长", "outcome": "reached", "note": "已回访"}
        called = await self._post(http, f"/v1/alerts/{alert_id}/callback", callback, "callback")
        if called and not self.to_rectify.full():
            self.to_rectify.put_nowait((time.monotonic() + self.hall_s(RECTIFY_AFTER_S), alert_id))

    async def _rectify(self, http: aiohttp.ClientSession, alert_id: str) -> None:
        """The complaint is looked into and settled (§11 `rectify`), an hour after the callback."""
        body = {"by": "科长", "substantiated": self.rng.random() < SUBSTANTIATED_SHARE}
        await self._post(http, f"/v1/alerts/{alert_id}/rectify", body, "rectify")

    async def _post(self, http: aiohttp.ClientSession, path: str, body: dict[str, Any], name: str) -> bool:
        """A control route on the hub's API with the control token; counted by its status."""
        headers = {"Authorization": f"Bearer {self.control_token}"} if self.control_token else {}
        try:
            async with http.post(f"{self.api_url}{path}", json=body, headers=headers) as answer:
                await answer.read()
                self.tally.http[f"{name}_{answer.status}"] += 1
                return answer.status == 200
        except (aiohttp.ClientError, TimeoutError):
            self.tally.http[f"{name}_failed"] += 1
            return False

    async def _poll_api(self) -> None:
        """The status page open on the hall's PC, and a monitor polling /healthz."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            next_status = time.monotonic()
            for _ in range(MAX_EVENTS_PER_LOOP):
                if not self._running():
                    return
                paths = ["/healthz"]
                if time.monotonic() >= next_status:
                    paths.append("/v1/status")
                    next_status += STATUS_POLL_S
                for path in paths:
                    try:
                        async with http.get(f"{self.api_url}{path}") as answer:
                            await answer.read()
                            self.tally.http[f"{path}_{answer.status}"] += 1
                    except (aiohttp.ClientError, TimeoutError):
                        self.tally.http[f"{path}_failed"] += 1
                await asyncio.sleep(HEALTHZ_POLL_S)


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    """Plug the serial devices, serve the receiver, report ready, wait for `go`, run the day."""
    day = HallDay(spec)
    await day.start_serial()
    try:
        db = Path(spec["work_dir"]) / "central.db"
        async with start_receiver("127.0.0.1:0", f"sqlite:///{db}", day.central_token) as receiver:
            print(json.dumps({"event": "ready", "central_url": receiver.url}), flush=True)
            loop = asyncio.get_running_loop()
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), GO_TIMEOUT_S)
            words = line.split()
            if not words or words[0] != "go" or len(words) < 2:
                raise RuntimeError(f"expected 'go <api url>' on stdin, got {line!r}")
            day.api_url = words[1]
            await day.connect()
            started = time.monotonic()
            cpu = time.process_time()
            try:
                await day.run()
            finally:
                await day.disconnect()
            return await _result(day, receiver, time.monotonic() - started, time.process_time() - cpu)
    finally:
        await day.stop_serial()


async def _result(day: HallDay, receiver: RunningReceiver, wall_s: float, cpu_s: float) -> dict[str, Any]:
    stats = await receiver.stats()
    return {
        "event": "result",
        **day.tally.to_json(),
        "speed": day.speed,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "central": {
            "records_by_kind": stats.records_by_kind,
            "batches": stats.batches,
            "duplicates": stats.duplicates,
        },
    }


def main() -> None:
    """Entry point: `python bench/hallday.py SPEC_JSON` (driven by bench/soak.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the run's spec as JSON (see bench/soak.py)")
    spec = json.loads(parser.parse_args().spec)
    result = asyncio.run(main_async(spec))
    print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
