"""`hallhub demo`: a whole node on this machine, no hardware and no config.

A private broker on a free loopback port, the hub, and simulated devices producing realistic
traffic, with a live view of what the hub stores and mirrors until Ctrl-C (or `--duration`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from contract.mqtt import CmdPayload
from contract.records import Record
from drivers.idcard.simulator import run_simulated_reader
from drivers.keypad.simulator import run_simulated_line
from drivers.qr.simulator import run_simulated_scanner
from drivers.tasks import cancel_and_wait, raise_if_cancelling
from hub.app import Hub
from hub.config import HubConfig, Secrets, parse_config
from hub.ops.broker import EmbeddedBroker, MosquittoBroker, free_port, mosquitto_binary
from hub.simulate.mqtt_device import NotAcked, SimulatedMqttDevice
from hub.simulate.phone import PhoneError, SimulatedPhone
from hub.simulate.supervisor import SimulatedSupervisor
from hub.simulate.window_pc import WindowPcSimulator
from sync.node import build_hub
from sync.receiver import start_receiver

NODE_ID = "demo-hall-01"
PULL_TOKEN = "demo-pull-token-loopback"  # noqa: S105 (a fixed token for a loopback-only demo)
CENTRAL_TOKEN = "demo-central-token"  # noqa: S105 (the demo's own loopback receiver)
CONTROL_TOKEN = "demo-control-token-loopback"  # noqa: S105 (the demo's window PC asks with it, §9)
LEVEL_WEIGHTS = {5: 60, 4: 20, 3: 10, 2: 6, 1: 4}
LEVEL_NAMES = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}
ITEMS = [
    ("370100-001-01", "居民身份证换领"),
    ("370100-017-03", "社保卡补办"),
    ("370100-052-02", "营业执照变更"),
]

MQTT_DEVICES = [
    {"id": "term-01", "kind": "terminal", "transport": "mqtt"},
    {"id": "pad-05", "kind": "pad", "transport": "mqtt", "window": "05"},
    {"id": "pad-06", "kind": "pad", "transport": "mqtt", "window": "06"},
]


KEYPAD_WINDOWS = {1: "01", 2: "02", 3: "03", 4: "04"}
QR_WINDOW = "06"
"""The window whose citizens rate on their own phones (§13): its pad draws each session's link."""


class DemoBroker:
    """Mosquitto when installed (the node's broker); the embedded amqtt broker otherwise."""

    def __init__(self, workdir: Path, prefer: str = "mosquitto") -> None:
        self.workdir = workdir
        self.prefer = prefer
        self.mosquitto: MosquittoBroker | None = None
        self.embedded: EmbeddedBroker | None = None

    @property
    def port(self) -> int:
        """The loopback port devices and the hub connect to."""
        if self.mosquitto is not None:
            return self.mosquitto.port
        assert self.embedded is not None
        return self.embedded.port

    async def start(self) -> None:
        """Start Mosquitto, or amqtt where Mosquitto is absent (or HALLHUB_DEMO_BROKER=amqtt)."""
        if self.prefer != "amqtt" and mosquitto_binary() is not None:
            # Started from the event loop's own thread, which lives as long as the demo: the broker
            # is terminated when that thread ends, so a demo killed with kill -9 leaves none behind.
            # It waits for the port (~50 ms) before anything else of the demo runs.
            self.mosquitto = MosquittoBroker(workdir=self.workdir, ends_with_starter=True)
            self.mosquitto.start()
            return
        self.embedded = EmbeddedBroker()
        await self.embedded.start()

    def describe(self) -> str:
        """Which broker runs, for the live view."""
        kind = "mosquitto" if self.mosquitto is not None else "embedded amqtt (fallback: install mosquitto)"
        return f"{kind} on 127.0.0.1:{self.port}"

    async def stop(self) -> None:
        """Stop whichever broker runs."""
        if self.mosquitto is not None:
            await asyncio.to_thread(self.mosquitto.stop)
        if self.embedded is not None:
            await self.embedded.stop()


def serial_devices(tty_dir: Path) -> list[dict[str, Any]]:
    """Four keypads on one simulated RS-485 line, an ID reader and a QR scanner at window 01."""
    line = str(tty_dir / "keypads")
    devices: list[dict[str, Any]] = [
        {"id": f"kp-{w}", "kind": "keypad", "transport": "serial", "port": line, "address": a, "window": w}
        for a, w in KEYPAD_WINDOWS.items()
    ]
    devices.append(
        {
            "id": "id-01",
            "kind": "idcard",
            "transport": "serial",
            "port": str(tty_dir / "idcard"),
            "baud": 115200,
            "window": "01",
        }
    )
    devices.append(
        {"id": "qr-01", "kind": "qr", "transport": "serial", "port": str(tty_dir / "qr"), "window": "01"}
    )
    return devices


def demo_config(
    broker_port: int, api_port: int, data_dir: Path, tty_dir: Path, central_url: str = ""
) -> HubConfig:
    """The embedded default node config of the demo."""
    raw: dict[str, Any] = {
        "node": {
            "id": NODE_ID,
            "hall_code": "370102",
            "data_dir": str(data_dir),
            "secret_file": str(data_dir / "secret"),
        },
        "broker": {"host": "127.0.0.1", "port": broker_port},
        "api": {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN, "control_token": CONTROL_TOKEN},
        "central": {"url": central_url, "token": CENTRAL_TOKEN if central_url else "", "batch_max": 200},
        "qr_evaluation": {"enabled": True, "base_url": f"http://127.0.0.1:{api_port}"},
        "device": serial_devices(tty_dir) + MQTT_DEVICES,
    }
    return parse_config(raw, "<demo>")


@dataclass
class DemoView:
    """What the live view shows, fed by the hub's own MQTT mirror (events/#, alerts)."""

    stored: Counter[str] = field(default_factory=Counter)
    levels: Counter[int] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=10))
    alerts: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    started: float = field(default_factory=time.monotonic)
    window_pc: WindowPcSimulator | None = None
    supervisor: SimulatedSupervisor | None = None
    central: dict[str, Any] = field(default_factory=dict)
    phone: Counter[int] = field(default_factory=Counter)
    """How the hub answered the simulated phones' ratings, by HTTP status (§13)."""
    qr_screen: str | None = None
    """What the QR window's pad shows: the current session's link as a QR code."""
    sink: Callable[[str], None] | None = None
    """Where each record's line also goes as it is committed (piped output: plain lines, no live view)."""

    def on_commit(self, records: list[Record]) -> None:
        """Outbox listener: count what the hub just committed."""
        for record in records:
            self.on_record(record.to_wire())

    def on_record(self, record: dict[str, Any]) -> None:
        """Count one record mirrored by the hub."""
        kind = record["kind"]
        data = record["data"]
        self.stored[kind] += 1
        stamp = record["created_at"][11:19]
        if kind == "evaluation":
            self.levels[data["level"]] += 1
            where = f"window {data['window']}" if data.get("window") else data["device_id"]
            level = data["level"]
            text = f"{stamp} seq {record['seq']:>5} evaluation {level} {LEVEL_NAMES[level]} ({where})"
            self.events.appendleft(text)
        elif kind == "card":
            self.events.appendleft(
                f"{stamp} seq {record['seq']:>5} card {data.get('card_type')} {data.get('citizen_masked')}"
                f" at window {data.get('window')}"
            )
        elif kind == "followup":
            what = (
                data.get("outcome")
                if data.get("step") == "callback"
                else ("substantiated" if data.get("substantiated") else "not substantiated")
            )
            self.events.appendleft(
                f"{stamp} seq {record['seq']:>5} followup {data.get('step')} by {data.get('by')} ({what}) "
                f"window {data.get('window') or '-'}"
            )
        elif kind == "alert":
            self.alerts.appendleft(
                f"{stamp} {data.get('type')} level {data.get('level')} window {data.get('window') or '-'} "
                f"case {data.get('case_no')}"
            )
        else:
            self.events.appendleft(f"{stamp} seq {record['seq']:>5} {kind} from {data.get('device_id')}")
        if self.sink is not None:
            self.sink(self.alerts[0] if kind == "alert" else self.events[0])

    def footer(self, hub: Hub) -> str:
        """The line that says where to look and how to stop."""
        elapsed = time.monotonic() - self.started
        return (
            f"{elapsed:4.0f} s · status page http://127.0.0.1:{hub.api_port}/ · "
            f"broker 127.0.0.1:{hub.config.broker.port} · Ctrl-C to stop"
        )

    def sections(self, hub: Hub) -> list[tuple[int, RenderableType]]:
        """The live view's parts as (priority, part) in screen order; 0 matters most."""
        compact: dict[str, Any] = {"expand": True, "box": box.SIMPLE_HEAD, "padding": (0, 1)}
        kinds = ("evaluation", "alert", "scan", "card", "print", "device_status")
        received = self.central.get("records_by_kind", {})
        totals = Table(title="Committed to the outbox · arrived centrally (pushed by the hub)", **compact)
        totals.add_column("")
        for name in kinds:
            totals.add_column(name, justify="right")
        totals.add_row("outbox", *(str(self.stored[n]) for n in kinds))
        totals.add_row("central", *(str(received.get(n, 0)) for n in kinds))
        levels = Table(title="Ratings by level", **compact)
        for level in (5, 4, 3, 2, 1):
            levels.add_column(f"{level} {LEVEL_NAMES[level]}", justify="right")
        levels.add_row(*(str(self.levels[level]) for level in (5, 4, 3, 2, 1)))
        devices = Table(title="Devices", **compact)
        for column in ("device", "kind", "window", "online", "sent"):
            devices.add_column(column)
        for state in hub.registry.all():
            devices.add_row(
                state.id,
                state.kind,
                state.window or "-",
                "yes" if state.online else "no",
                str(self.sent[state.id]),
            )
        sessions = Table(title="Window sessions (window PC → keypad)", **compact)
        states = ("prompted", "rated", "expired", "cancelled", "failed")
        for name in states:
            sessions.add_column(name, justify="right")
        counts = self.window_pc.states if self.window_pc else Counter()
        sessions.add_row(*(str(counts[s]) for s in states))
        windows = Table(title="Windows (上岗 / 暂停 / 离岗)", **compact)
        for column in ("window", "state", "staff"):
            windows.add_column(column)
        for window in hub.windows.status():
            staff = window["staff_name"] or window["staff_id"] or "-"
            windows.add_row(str(window["window"]), str(window["state"]), str(staff))
        follow = Table(title="Bad reviews followed up (回访 → 整改) · satisfaction 满意率", **compact)
        for name in ("bad reviews", "called back", "settled", "satisfied"):
            follow.add_column(name, justify="right")
        rated = sum(self.levels.values())
        satisfied = sum(self.levels[level] for level in (3, 4, 5))
        done = self.supervisor.done if self.supervisor else Counter()
        follow.add_row(
            str(self.levels[1] + self.levels[2]),
            str(done["callback"]),
            str(done["rectify"]),
            f"{100 * satisfied / rated:.1f}%" if rated else "-",
        )
        answered = ", ".join(f"{count} × {status}" for status, count in sorted(self.phone.items()))
        qr = Panel(
            (self.qr_screen or "waiting for a session…") + f"\nphone ratings answered: {answered or '-'}",
            title=f"QR evaluation at window {QR_WINDOW}: the pad's screen, rated by a phone (二维码评价)",
            expand=False,
        )
        events = Panel("\n".join(self.events) or "waiting…", title="Latest records")
        alerts = Panel("\n".join(self.alerts) or "none yet", title="Bad-review alerts (差评)", style="red")
        return [
            (2, totals),
            (4, levels),
            (3, sessions),
            (3, follow),
            (4, windows),
            (6, devices),
            (5, events),
            (1, alerts),
            (7, qr),
            (0, self.footer(hub)),
        ]

    def render(self, hub: Hub, console: Console) -> Group:
        """The live view, fitted to the terminal: the parts that matter most first (the footer with
        the status page, the alerts, the totals), each further part only where it still fits."""
        options = console.options
        height = options.height or console.height
        parts = self.sections(hub)
        heights = {id(part): len(console.render_lines(part, options, pad=False)) for _, part in parts}
        shown: set[int] = set()
        used = 0
        for _priority, part in sorted(parts, key=lambda item: item[0]):
            if used + heights[id(part)] <= height - 1:  # the last line stays free for the cursor
                shown.add(id(part))
                used += heights[id(part)]
        return Group(*(part for _, part in parts if id(part) in shown))


def _serial_simulators(tty_dir: Path, rate: float) -> list[asyncio.Task[Any]]:
    """Keypads answering prompts, an ID reader with demo cards, a QR scanner at window 01."""
    codes = [f"https://hcp.example.gov.cn/evaluate?case_no=SD{n:09d}" for n in range(1, 6)] + [
        "PICKUP-483920"
    ]
    return [
        asyncio.create_task(
            run_simulated_line(
                tty_dir / "keypads",
                list(KEYPAD_WINDOWS),
                duration_s=10**7,
                max_presses=10**9,
                free_ratings_per_min=rate,
                press_delay_s=(1.0, 4.0),
            )
        ),
        asyncio.create_task(
            run_simulated_reader(tty_dir / "idcard", dwell_s=3.0, gap_s=12.0 / max(rate, 0.01))
        ),
        asyncio.create_task(
            run_simulated_scanner(tty_dir / "qr", codes, interval_s=10.0 / max(rate, 0.01), rounds=10**6)
        ),
    ]


def random_rating(rng: random.Random) -> dict[str, Any]:
    """A plausible rating: mostly satisfied, sometimes a bad review with reasons."""
    level = rng.choices(list(LEVEL_WEIGHTS), weights=list(LEVEL_WEIGHTS.values()))[0]
    item_code, item_name = rng.choice(ITEMS)
    rating: dict[str, Any] = {
        "level": level,
        "case_no": f"SD{rng.randrange(10**9):09d}",
        "item_code": item_code,
        "item_name": item_name,
    }
    if level <= 2:
        rating["reasons"] = rng.sample(["R1", "R2", "R3", "R4"], k=rng.randint(1, 2))
        rating["comment"] = rng.choice(["等候时间太长", "材料要求没有一次说清", None])
    return rating


async def _device_traffic(
    device: SimulatedMqttDevice, view: DemoView, rate: float, rng: random.Random
) -> None:
    while True:
        raise_if_cancelling()  # the errors suppressed below can be a cancellation in disguise
        await asyncio.sleep(rng.expovariate(rate))
        with contextlib.suppress(NotAcked, aiomqtt.MqttError):
            if device.kind == "terminal" and rng.random() < 0.2:
                await device.send(
                    "print", {"job_id": f"J{rng.randrange(10**6)}", "state": "done", "pages": 2}
                )
            elif device.kind == "terminal" and rng.random() < 0.1:
                await device.publish_raw("health", json.dumps({"paper": rng.choice(["ok", "ok", "low"])}))
            else:
                await device.rate(**random_rating(rng))
            view.sent[device.device_id] += 1


async def _qr_window_traffic(
    api_url: str, pad: SimulatedMqttDevice, view: DemoView, rate: float, rng: random.Random
) -> None:
    """The QR window: its PC asks for an evaluation, the pad draws the link, a citizen's phone opens
    it and rates over HTTP (§13) a few seconds later, as if it had scanned the code."""
    drawn = asyncio.Event()

    async def on_command(command: CmdPayload) -> None:
        if command.cmd == "prompt" and command.qr_url:
            drawn.set()

    pad.on_command = on_command
    await asyncio.sleep(1.0)  # the first citizen comes soon, so that a short demo shows one
    while True:
        raise_if_cancelling()  # a cancelled request can surface as TimeoutError
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, PhoneError):
            await _qr_citizen(api_url, pad, drawn, view, rng)
        await asyncio.sleep(rng.expovariate(max(rate, 0.01) / 4))


async def _qr_citizen(
    api_url: str, pad: SimulatedMqttDevice, drawn: asyncio.Event, view: DemoView, rng: random.Random
) -> None:
    """One citizen at the QR window: a session asked for, its link drawn, rated on the phone."""
    rating = random_rating(rng)
    request = {
        "request_id": uuid.uuid4().hex[:12],
        "case_no": rating["case_no"],
        "item_code": rating["item_code"],
        "item_name": rating["item_name"],
        "timeout_s": 60,
    }
    drawn.clear()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(
            f"{api_url}/v1/windows/{QR_WINDOW}/evaluate",
            json=request,
            headers={"Authorization": f"Bearer {CONTROL_TOKEN}"},
        ) as answer,
    ):
        url = (await answer.json()).get("qr_url") if answer.status == 200 else None
    if url is None:
        return
    await asyncio.wait_for(drawn.wait(), 5)
    if pad.qr_url != url:
        return
    if view.qr_screen is None and view.sink is not None:
        view.sink(f"window {QR_WINDOW}'s pad shows its rating link as a QR code:\n{pad.screen}")
    view.qr_screen = pad.screen
    await asyncio.sleep(rng.uniform(1.0, 3.0))  # the citizen takes out a phone and scans
    reasons = rating.get("reasons", []) if rating["level"] <= 2 else []
    answered = await SimulatedPhone().rate(url, rating["level"], reasons, rating.get("comment"))
    view.phone[answered.status] += 1


async def run_demo(
    *,
    duration_s: float | None,
    workdir: Path | None,
    rate: float,
    console: Console,
    central_fail_rate: float = 0.0,
    keep: bool = False,
) -> DemoView:
    """Run the whole demo node; returns what the view counted (tests assert on it).

    Without `workdir` the broker, outbox and receiver live in a new temporary folder, removed at
    the end unless `keep`. On a terminal the view is live and fitted to its size; piped, each record
    is one plain line as it is committed.
    """
    base = workdir or Path(tempfile.mkdtemp(prefix="hallhub-demo-"))
    try:
        kept = workdir is not None or keep
        return await _run_demo(base, duration_s, rate, console, central_fail_rate, kept=kept)
    finally:
        if workdir is None and not keep:
            shutil.rmtree(base, ignore_errors=True)
        elif workdir is None:
            console.print(f"kept the demo's broker, outbox and receiver in {base}")


async def _run_demo(
    base: Path,
    duration_s: float | None,
    rate: float,
    console: Console,
    central_fail_rate: float,
    *,
    kept: bool,
) -> DemoView:
    """`run_demo` in the folder `base` (`kept`: the folder stays, so its pending records would be sent)."""
    broker = DemoBroker(base / "broker", prefer=os.environ.get("HALLHUB_DEMO_BROKER", "mosquitto"))
    await broker.start()
    console.print(f"broker: {broker.describe()}")
    tty_dir = base / "tty"
    tty_dir.mkdir(parents=True, exist_ok=True)
    central = contextlib.AsyncExitStack()
    receiver = await central.enter_async_context(
        start_receiver(
            "127.0.0.1:0", f"sqlite:///{base / 'central.db'}", CENTRAL_TOKEN, fail_rate=central_fail_rate
        )
    )
    console.print(f"central receiver: {receiver.url} (SQLite {base / 'central.db'})")
    config = demo_config(broker.port, free_port(), base / "data", tty_dir, central_url=receiver.url)
    secrets = Secrets(
        broker_password="", pull_token=PULL_TOKEN, central_token=CENTRAL_TOKEN, control_token=CONTROL_TOKEN
    )
    hub = build_hub(config, secrets)
    stop = asyncio.Event()  # the hub's: set once the traffic has stopped and the pending count is read
    interrupted = asyncio.Event()  # Ctrl-C or SIGTERM
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    view = DemoView()
    hub.outbox.add_listener(view.on_commit)
    rng = random.Random()
    serial = _serial_simulators(tty_dir, rate)
    pending = 0
    await asyncio.sleep(0.3)
    try:
        hub_task = asyncio.create_task(hub.run(stop))
        await asyncio.wait_for(hub.ready.wait(), 15)
        await hub.gateway.wait_connected(15)
        console.print(f"[bold]hallhub demo[/] — data in {base}")
        console.print(f"status page: http://127.0.0.1:{hub.api_port}/", highlight=False)
        if not console.is_terminal:
            view.sink = lambda line: console.print(line, highlight=False, markup=False)
        async with contextlib.AsyncExitStack() as stack:
            devices = [
                await stack.enter_async_context(
                    SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, spec["id"], kind=spec["kind"])
                )
                for spec in MQTT_DEVICES
            ]
            view.window_pc = WindowPcSimulator(
                "127.0.0.1",
                broker.port,
                NODE_ID,
                list(KEYPAD_WINDOWS.values()),
                mean_interval_s=6.0 / max(rate, 0.01),
                timeout_s=20,
                api_url=f"http://127.0.0.1:{hub.api_port}",
                control_token=CONTROL_TOKEN,
                staff=True,  # signs staff in and out and pauses now and then (§12)
            )
            view.supervisor = SimulatedSupervisor(
                f"http://127.0.0.1:{hub.api_port}", CONTROL_TOKEN, delay_s=8.0, rng=rng
            )
            tasks = [asyncio.create_task(view.window_pc.run()), asyncio.create_task(view.supervisor.run())]
            tasks += [asyncio.create_task(_device_traffic(d, view, rate, rng)) for d in devices]
            qr_pad = next(d for d in devices if d.device_id == f"pad-{QR_WINDOW}")
            api_url = f"http://127.0.0.1:{hub.api_port}"
            tasks.append(asyncio.create_task(_qr_window_traffic(api_url, qr_pad, view, rate, rng)))
            deadline = None if duration_s is None else time.monotonic() + duration_s
            live = (
                Live(view.render(hub, console), console=console, refresh_per_second=2, transient=False)
                if console.is_terminal
                else contextlib.nullcontext()
            )
            with live:
                tick = 0
                while not interrupted.is_set() and (deadline is None or time.monotonic() < deadline):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(interrupted.wait(), 0.5)
                    tick += 1
                    if tick % 4 == 0 and not interrupted.is_set():
                        view.central = dataclasses.asdict(await receiver.stats())
                    if isinstance(live, Live):
                        live.update(view.render(hub, console))
            # Traffic stops first: the devices disconnect cleanly while the broker still runs.
            await cancel_and_wait([*tasks, *serial], what="simulator")
        pending = (await hub.outbox.stats()).pending
        stop.set()
        await hub_task
        view.central = dataclasses.asdict(await receiver.stats())
    finally:
        stop.set()
        await cancel_and_wait(serial, what="simulator")
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await central.aclose()
        await broker.stop()
    arrived = view.central.get("records_by_kind", {})
    console.print(
        f"demo stopped: {view.stored['evaluation']} evaluations and {view.stored['alert']} alerts stored; "
        f"{arrived.get('evaluation', 0)} evaluations arrived centrally; "
        + (
            "nothing pending: every record was delivered"
            if not pending
            else f"{pending} records still pending in the outbox: the hub sends them on its next push"
            + (f" (run the demo again with --data-dir {base})" if kept else " (this run's outbox is removed)")
        ),
        highlight=False,
    )
    return view
