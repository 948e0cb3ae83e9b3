"""The `hallhub` command line (CONTRACTS §8). Every command has --help."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from typer.core import TyperGroup
from typer.main import get_group

from hub import __version__
from hub.config import DEFAULT_CONFIG_PATH, ConfigError, HubConfig, load_config, resolve_secrets

if TYPE_CHECKING:
    from rich.console import Console
    from typer._click import Command, Context

# Subcommands that `hallhub run` never uses are imported only when one of them is asked for (invoked,
# listed in help, or completed), for memory: their modules pull in rich tables, live views and
# progress bars, provisioning and the receiver's CLI. name -> (module, attribute): a Typer is added
# as a group, a function as a command. Help lists them where they were always listed: `init` and
# `central` first, `device` and `outbox` last.
_LAZY_FIRST: Final = {
    "init": ("hub.ops.init_config", "init_command"),
    "central": ("sync.central_cli", "central_command"),
}
_LAZY_LAST: Final = {
    "stats": ("hub.cli.stats", "stats_command"),
    "device": ("hub.ops.provision", "device_app"),
    "outbox": ("sync.outbox_cli", "outbox_app"),
}
_LAZY: Final = {**_LAZY_FIRST, **_LAZY_LAST}


class _LazyGroup(TyperGroup):
    """The root command group: loads the subcommands in `_LAZY` on first use."""

    def list_commands(self, ctx: Context) -> list[str]:
        eager = [name for name in super().list_commands(ctx) if name not in _LAZY]
        return [*_LAZY_FIRST, *eager, *_LAZY_LAST]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            self.commands[cmd_name] = _load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: Context, args: list[str]) -> tuple[str | None, Command | None, list[str]]:
        if args and self.get_command(ctx, args[0]) is None:
            for name in _LAZY:  # so that "Did you mean ...?" still considers every command
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


def _load_command(name: str) -> Command:
    """Build the command `name` exactly as `app.add_typer` / `app.command` would have."""
    module, attribute = _LAZY[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(
        add_completion=False,
        rich_markup_mode=app.rich_markup_mode,
        suggest_commands=app.suggest_commands,
        pretty_exceptions_short=app.pretty_exceptions_short,
    )
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return get_group(holder).commands[name]


app = typer.Typer(
    name="hallhub",
    help="Edge hub for service halls: window devices in, durable outbox, sync to the central platform.",
    no_args_is_help=True,
    add_completion=False,
    cls=_LazyGroup,
    # Plain help text, as man pages and `--help | grep` expect: rich's panels mark every flag
    # `<bool>` and box the text in at the width of the terminal.
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Check node config files.", no_args_is_help=True)
simulate_app = typer.Typer(help="Drive simulated devices against a running hub.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(simulate_app, name="simulate")


def _console(*, stderr: bool) -> Console:
    """A console for stdout or stderr, not wrapped at 80 columns when piped (`hub.cli.console`)."""
    from hub.cli.console import make_console

    return make_console(stderr=stderr)


@functools.cache
def _out() -> Console:
    """The console for output, made on first use: `hallhub run` prints nothing and never loads rich
    (for memory)."""
    return _console(stderr=False)


@functools.cache
def _err() -> Console:
    """The console for errors (stderr), made on first use like `_out`."""
    return _console(stderr=True)


ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Node config file (TOML).", show_default=True)
]


EXIT_CONFIG: Final = 1
"""Exit status of `run`, `config check` and the other commands when the config cannot be used."""


def _fail(lines: list[str]) -> typer.Exit:
    """Print each line as an error (values from the file are shown as text, never as markup)."""
    from rich.markup import escape

    for line in lines:
        _err().print(f"[red]error[/] {escape(line)}", highlight=False)
    return typer.Exit(EXIT_CONFIG)


def _load_or_exit(path: Path) -> HubConfig:
    """The validated config (`load_config`, the one validation), or its errors and exit 1."""
    try:
        return load_config(path)
    except ConfigError as exc:
        raise _fail(exc.lines()) from None


@app.command()
def version() -> None:
    """Print the hallhub version."""
    _out().print(__version__)


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the hub with a node config until SIGTERM/SIGINT (clean shutdown, exit 0)."""
    from hub.ops.lean import lean_process

    lean_process()  # before anything below imports aiohttp

    from hub.ops.logsetup import setup_logging
    from hub.ops.runner import run_hub
    from hub.privacy.sealing import SecretFileError
    from sync.node import build_hub

    setup_logging(log_level)
    cfg = _load_or_exit(config)
    try:
        secrets = resolve_secrets(cfg, str(config))
    except ConfigError as exc:
        raise _fail(exc.lines()) from None
    try:
        run_hub(cfg, secrets, build_hub)
    except SecretFileError as exc:  # raised only while the hub is built, before it serves
        raise _fail([f"{config}: node.secret_file: {exc}"]) from None


@app.command()
def demo(
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: run until Ctrl-C).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where to keep the demo's broker and outbox (default: a new temp dir)."),
    ] = None,
    rate: Annotated[float, typer.Option(help="Messages per second per simulated device.")] = 0.5,
    central_fail_rate: Annotated[
        float,
        typer.Option(min=0, max=0.9, help="Fraction of uplink requests the demo's central receiver fails."),
    ] = 0.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temp dir (broker, outbox, receiver) when it ends.")
    ] = False,
) -> None:
    """Run a whole node here: private broker, the hub, simulated devices, a central receiver, a live view."""
    from hub.cli.demo import run_demo
    from hub.ops.broker import BrokerError
    from hub.ops.logsetup import setup_logging
    from hub.ops.runner import enable_stack_dumps

    enable_stack_dumps()

    import os
    import tempfile
    import time

    base = data_dir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        log_file = base / "hallhub-demo.log"
    else:  # one log per run, kept after the run's temp dir is gone
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log_file = Path(tempfile.gettempdir()) / f"hallhub-demo-{stamp}-{os.getpid()}.log"
    setup_logging("INFO", str(log_file))
    _out().print(f"log: {log_file}", highlight=False)
    try:
        asyncio.run(
            run_demo(
                duration_s=duration,
                workdir=base,
                rate=rate,
                console=_out(),
                central_fail_rate=central_fail_rate,
                keep=keep,
            )
        )
    except BrokerError as exc:
        _err().print(f"[red]error[/] {exc}")
        raise typer.Exit(1) from None


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="The config file to check.")]) -> None:
    """Validate a config file: print every error (exit 1) or a summary of the node (exit 0)."""
    cfg = _load_or_exit(path)
    node = cfg.node
    _out().print(
        f"[green]ok[/] {path}: node [bold]{node.id}[/] (hall {node.hall_code}), data in {node.data_dir}"
    )
    _out().print(
        f"broker {cfg.broker.host}:{cfg.broker.port} · api {cfg.api.listen} · "
        f"push {'to ' + cfg.central.url if cfg.central.url else 'off'} · "
        f"pull {'on' if (cfg.api.pull_token or cfg.api.pull_token_file) else 'off'}"
    )
    from rich.table import Table

    table = Table(title=f"{len(cfg.device)} devices")
    for column in ("id", "kind", "transport", "window", "port / source"):
        table.add_column(column)
    for device in cfg.device:
        where = device.port or device.source or device.reader or "-"
        if device.kind == "keypad":
            where += f" @{device.address or 1}"
        table.add_row(device.id, device.kind, device.transport, device.window or "-", where)
    _out().print(table)


@config_app.command("extras")
def config_extras(path: Annotated[Path, typer.Argument(help="The config file to read.")]) -> None:
    """Print the hallhub extras the config's devices need (e.g. `camera pcsc`), for install-node.

    Reads the devices' kind and transport even from a config that does not validate yet, so that an
    install can bring what the devices need before the rest of the file is finished.
    """
    from drivers.registry import extras_for
    from hub.config import read_config_document

    try:
        raw = read_config_document(path)
    except ConfigError as exc:
        raise _fail(exc.lines()) from None
    devices = raw.get("device", [])
    pairs: list[tuple[str, str]] = []
    for device in devices if isinstance(devices, list) else []:
        kind, transport = (
            (device.get("kind"), device.get("transport")) if isinstance(device, dict) else (0, 0)
        )
        if isinstance(kind, str) and isinstance(transport, str):
            pairs.append((kind, transport))
    sys.stdout.write(" ".join(extras_for(pairs)) + "\n")


def _unreachable(url: str, exc: Exception, config: Path) -> str:
    """One line for a hub that did not answer: what happened, and what to check."""
    check = f"check that the hub runs (systemctl status hallhub) and that api.listen in {config} is {url}"
    if isinstance(exc, urllib.error.HTTPError):
        return f"the hub at {url} answered HTTP {exc.code} {exc.reason}: check its token and address"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ConnectionRefusedError):
        return f"no hub answers at {url} (connection refused): {check}"
    if isinstance(reason, TimeoutError):
        return f"the hub at {url} did not answer within 5 s: {check}"
    if isinstance(reason, ValueError):
        return f"{reason}: pass --url http://HOST:PORT"
    detail = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    return f"cannot reach the hub at {url} ({detail}): {check}"


def _get_json(url: str, timeout: float = 5.0) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        return json.loads(response.read())


@app.command()
def status(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    url: Annotated[
        str | None, typer.Option(help="The hub's API base URL (default: from the config).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw status document.")] = False,
) -> None:
    """Show the running hub's status: node, broker, devices, outbox."""
    if url is None:
        host, port = _load_or_exit(config).api_host_port
        url = f"http://{host}:{port}"
    try:
        doc = _get_json(url.rstrip("/") + "/v1/status")
    except (OSError, ValueError) as exc:
        from rich.markup import escape

        _err().print(f"[red]error[/] {escape(_unreachable(url, exc, config))}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return
    node, broker, outbox = doc["node"], doc["broker"], doc["outbox"]
    _out().print(f"node [bold]{node['id']}[/] (hall {node['hall_code']}) · hallhub {node['version']}")
    _out().print(
        f"broker {broker['host']}:{broker['port']} "
        + ("[green]connected[/]" if broker["connected"] else "[red]not connected[/]")
    )
    _out().print(
        f"outbox: {outbox['pending']} pending {outbox['pending_by_kind']}"
        f" · oldest {outbox['oldest_pending_age_s']} s"
        f" · {outbox['dead_letters']} dead letters · {outbox['used_bytes'] // 2**20} of"
        f" {outbox['max_bytes'] // 2**20} MB"
    )
    from rich.table import Table

    table = Table(title="devices")
    for column in ("id", "kind", "window", "online", "last seen", "errors"):
        table.add_column(column)
    for device in doc["devices"]:
        errors = ", ".join(f"{k} {v}" for k, v in device["errors"].items()) or "-"
        online = "[green]online[/]" if device["online"] else "[red]offline[/]"
        table.add_row(
            device["id"], device["kind"], device["window"] or "-", online, device["last_seen"] or "-", errors
        )
    _out().print(table)
    from hub.api.status_page import print_status_extras

    try:
        ratings = _get_json(url.rstrip("/") + "/v1/ratings/today")
    except (OSError, ValueError, urllib.error.URLError):
        ratings = None  # a hub without the ratings route: show the rest
    print_status_extras(_out(), doc, ratings)


@app.command()
def doctor(
    config: ConfigOption = DEFAULT_CONFIG_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    user: Annotated[
        str | None,
        typer.Option(help="Check permissions for this account (default: User= of hallhub.service)."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.5, max=60, help="Seconds each check may take.")] = 5.0,
) -> None:
    """Check config, ports, readers, cameras, broker, central, disk, clock and watchdog (exit 1 on error)."""
    from hub.ops.doctor import main as doctor_main

    raise typer.Exit(doctor_main(config, as_json=as_json, user=user, timeout_s=timeout))


@simulate_app.command("mqtt")
def simulate_mqtt(
    device: Annotated[str, typer.Option(help="Device id (as configured on the hub).")],
    node: Annotated[str, typer.Option(help="The hub's node id.")],
    broker: Annotated[str, typer.Option(help="Broker host:port.")] = "127.0.0.1:1883",
    kind: Annotated[str, typer.Option(help="terminal or pad.")] = "terminal",
    count: Annotated[int, typer.Option(min=1, max=1_000_000, help="Ratings to send.")] = 10,
    rate: Annotated[float, typer.Option(min=0.01, max=10_000, help="Ratings per second.")] = 2.0,
    username: Annotated[str | None, typer.Option(help="Broker username (default: the device id).")] = None,
    password: Annotated[str | None, typer.Option(help="Broker password.")] = None,
) -> None:
    """Send random ratings from a simulated MQTT device, each retried until acked."""
    import random

    from hub.cli.demo import random_rating
    from hub.config import split_host_port
    from hub.simulate.mqtt_device import NotAcked, SimulatedMqttDevice

    host, port = split_host_port(broker)

    async def go() -> None:
        rng = random.Random()
        async with SimulatedMqttDevice(
            host,
            port,
            node,
            device,
            kind=kind,
            username=username or (device if password else None),
            password=password,
        ) as sim:
            for n in range(count):
                try:
                    ack = await sim.rate(**random_rating(rng))
                except NotAcked as exc:
                    _err().print(f"[red]{exc}[/]")
                    continue
                _out().print(f"{n + 1}/{count} {ack.status} {ack.id or ''} {ack.error or ''}")
                await asyncio.sleep(1 / rate)

    asyncio.run(go())


@simulate_app.command("keypad")
def simulate_keypad(
    port: Annotated[
        Path, typer.Option(help="Where to create the pty link the hub opens (the device's `port`).")
    ],
    address: Annotated[list[int], typer.Option(help="Keypad address on the line (repeat for RS-485).")] = [1],  # noqa: B006
    duration: Annotated[float, typer.Option(min=1, help="Seconds to run.")] = 300.0,
    presses: Annotated[int, typer.Option(min=1, help="Stop after this many key presses.")] = 100,
    free_per_min: Annotated[float, typer.Option(min=0, help="Free ratings (no prompt) per minute.")] = 0.0,
) -> None:
    """Serve HKP/1 keypads on a pseudo-terminal: answer prompts with random keys, retry until acked."""
    from drivers.keypad.simulator import run_simulated_line

    _out().print(f"simulated keypads {address} at {port} (set the keypad devices' port to it)")
    summary = asyncio.run(
        run_simulated_line(
            port, address, duration_s=duration, max_presses=presses, free_ratings_per_min=free_per_min
        )
    )
    _out().print(f"done: {summary}")


@simulate_app.command("idcard")
def simulate_idcard(
    port: Annotated[Path, typer.Option(help="Where to create the pty link the hub opens.")],
    placements: Annotated[int, typer.Option(min=1, help="Cards to place, one after another.")] = 5,
    dwell: Annotated[float, typer.Option(min=0.5, help="Seconds each card stays on the reader.")] = 3.0,
    gap: Annotated[float, typer.Option(min=0.5, help="Seconds between cards.")] = 5.0,
) -> None:
    """Serve a SAM ID-card reader on a pseudo-terminal, placing fictitious demo cards in turn."""
    from drivers.idcard.simulator import run_simulated_reader

    _out().print(f"simulated ID card reader at {port}")
    asyncio.run(run_simulated_reader(port, placements=placements, dwell_s=dwell, gap_s=gap))


@simulate_app.command("qr")
def simulate_qr(
    port: Annotated[Path, typer.Option(help="Where to create the pty link the hub opens.")],
    code: Annotated[list[str], typer.Option(help="A code to scan (repeatable).")],
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between scans.")] = 2.0,
    rounds: Annotated[int, typer.Option(min=1, help="How many times to scan the list.")] = 1,
) -> None:
    """Serve a serial QR scanner on a pseudo-terminal and scan the given codes."""
    from drivers.qr.simulator import run_simulated_scanner

    _out().print(f"simulated QR scanner at {port}")
    asyncio.run(run_simulated_scanner(port, code, interval_s=interval, rounds=rounds, start_delay_s=2.0))


@simulate_app.command("window")
def simulate_window(
    node: Annotated[str, typer.Option(help="The hub's node id.")],
    window: Annotated[list[str], typer.Option(help="Window to ask evaluations for (repeatable).")],
    broker: Annotated[str, typer.Option(help="Broker host:port.")] = "127.0.0.1:1883",
    requests: Annotated[int, typer.Option(min=1, help="Evaluation requests to send.")] = 10,
    interval: Annotated[float, typer.Option(min=0.5, help="Mean seconds between requests per window.")] = 8.0,
    api: Annotated[
        str | None,
        typer.Option(help="Ask over HTTP at this API address (e.g. http://127.0.0.1:8780) instead of MQTT."),
    ] = None,
    control_token_file: Annotated[
        Path | None, typer.Option(help="File holding the hub's api.control_token (for --api).")
    ] = None,
    staff: Annotated[
        bool,
        typer.Option(
            "--staff/--no-staff",
            help="Also sign staff in and out and pause windows now and then (§12); requests then name "
            "no staff, so the hub credits whoever is signed in.",
        ),
    ] = False,
) -> None:
    """Act as a window PC: ask the hub for evaluations and print how each session ends."""
    from hub.config import split_host_port
    from hub.simulate.window_pc import WindowPcSimulator

    host, port = split_host_port(broker)
    token = ""
    if control_token_file is not None:
        try:
            token = control_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            _err().print(f"[red]error[/] --control-token-file {control_token_file}: {exc.strerror}")
            raise typer.Exit(1) from None
    pc = WindowPcSimulator(
        host, port, node, window, mean_interval_s=interval, api_url=api, control_token=token, staff=staff
    )

    async def go() -> None:
        await pc.run(max_requests=requests)
        await asyncio.sleep(5)

    asyncio.run(go())
    _out().print(f"{pc.requests} requests; session states: {dict(pc.states)}")
    if staff:
        _out().print(f"staff events: {dict(pc.staff_events)}; window states: {pc.window_states}")
    if pc.refused:
        _err().print(f"[red]refused by the hub[/] (HTTP status: count; 0 = no answer): {dict(pc.refused)}")
        raise typer.Exit(1)


def main() -> None:
    """Console entry point."""
    app()
