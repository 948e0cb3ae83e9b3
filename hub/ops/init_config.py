"""`hallhub init`: a starter node.toml from the devices plugged into this node.

What is found, and how it is written:
- `/dev/hallhub/<kind>-<window>` (the stable names of config/udev/99-hallhub.rules): a keypad,
  ID-card reader or QR scanner of a known kind and window, written as a ready `[[device]]`.
- other serial ports under `/dev/serial/by-id/`: the kind cannot be told from the port, so each is
  written as a commented-out `[[device]]` with its port filled in, for the technician to complete.
- PC/SC readers that pcscd lists (through pyscard): a `pcsc` device each, by reader name.
- cameras (`/dev/videoN` whose V4L2 index is 0, i.e. the capture node, not a metadata node):
  a camera QR scanner each.
The file always passes `hallhub config check`; it is validated before it is written.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from drivers.registry import missing_for
from hub.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config, read_config_document

HUB_BROKER_PORT = 1884
STABLE_NAME = re.compile(r"^(keypad|idcard|qr)-([A-Za-z0-9_-]{1,16})$")
# pcscd names a reader "<name> <reader index> <slot>", e.g. "ACS ACR122U PICC Interface 00 00".
_READER_SUFFIX = re.compile(r"( [0-9A-Fa-f]{2}){2}$")
_PCSC_TIMEOUT_S = 5.0
_U32 = 0xFFFFFFFF
_ID_PREFIX = {"keypad": "kp", "idcard": "id", "qr": "qr"}
_BAUD = {"keypad": 9600, "idcard": 115200, "qr": 9600}

ReaderLister = Callable[[], list[str] | None]


@dataclass(frozen=True, slots=True)
class NamedPort:
    """A serial device under its stable udev name."""

    kind: str
    window: str
    path: Path


@dataclass(frozen=True, slots=True)
class Camera:
    """A V4L2 capture device."""

    index: int
    name: str


@dataclass
class Found:
    """Everything `discover` saw."""

    named: list[NamedPort] = field(default_factory=list)
    serial: list[Path] = field(default_factory=list)
    readers: list[str] | None = None
    cameras: list[Camera] = field(default_factory=list)


def list_pcsc_readers() -> list[str] | None:
    """pcscd's reader names, or None when pcscd does not answer (within 5 s)."""
    result: list[list[str] | None] = [None]

    def ask() -> None:
        try:
            from smartcard import scard  # noqa: PLC0415 (pyscard loads libpcsclite only when asked)

            # pyscard returns some status codes as negative numbers: compare them as unsigned.
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hresult & _U32 != scard.SCARD_S_SUCCESS:
                return
            try:
                hresult, names = scard.SCardListReaders(context, [])
                if hresult & _U32 == scard.SCARD_S_SUCCESS:
                    result[0] = [str(name) for name in names]
                elif hresult & _U32 == scard.SCARD_E_NO_READERS_AVAILABLE & _U32:
                    result[0] = []
            finally:
                scard.SCardReleaseContext(context)
        except Exception:  # any pyscard failure (no libpcsclite, a dead socket) means "no answer"
            result[0] = None

    # A daemon thread: a wedged pcscd must not hold `hallhub init` (or its exit) hostage.
    thread = threading.Thread(target=ask, name="init-pcsc", daemon=True)
    thread.start()
    thread.join(_PCSC_TIMEOUT_S)
    return result[0]


def reader_filter(name: str) -> str:
    """The reader's name without pcscd's index and slot numbers, which change when it is replugged."""
    return _READER_SUFFIX.sub("", name).strip() or name


def discover(
    dev: Path = Path("/dev"),
    video_class: Path = Path("/sys/class/video4linux"),
    readers: ReaderLister = list_pcsc_readers,
) -> Found:
    """Look for serial ports, PC/SC readers and cameras."""
    found = Found()
    named_targets: set[Path] = set()
    stable = dev / "hallhub"
    if stable.is_dir():
        for entry in sorted(stable.iterdir()):
            match = STABLE_NAME.match(entry.name)
            if match:
                path = Path("/dev/hallhub") / entry.name
                found.named.append(NamedPort(match.group(1), match.group(2), path))
                named_targets.add(entry.resolve())
    by_id = dev / "serial" / "by-id"
    if by_id.is_dir():
        found.serial = [
            Path("/dev/serial/by-id") / entry.name
            for entry in sorted(by_id.iterdir())
            if entry.resolve() not in named_targets
        ]
    found.readers = readers()
    if video_class.is_dir():
        for entry in sorted(video_class.iterdir(), key=lambda p: _video_number(p.name)):
            number = _video_number(entry.name)
            if number < 0 or _read(entry / "index", "0") != "0":
                continue
            found.cameras.append(Camera(number, _read(entry / "name", entry.name)))
    return found


def _video_number(name: str) -> int:
    return int(name[5:]) if name.startswith("video") and name[5:].isdigit() else -1


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return default


def default_node_id() -> str:
    """This machine's host name, reduced to the characters a node id may have."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64].strip("-")
    return name or "hall-node"


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(found: Found, node_id: str, hall_code: str) -> str:
    """The config text (validated by `write_config`)."""
    out = [
        "# hallhub node config written by `hallhub init` from the devices found on this node.",
        "# Edit it, then check it:  hallhub config check /etc/hallhub/node.toml",
        "# Every setting, with comments: /opt/hallhub/share/node.example.toml",
        "",
        "[node]",
        f"id = {_q(node_id)}",
        "# EDIT: the hall's 6-digit administrative division code.",
        f"hall_code = {_q(hall_code)}",
        'data_dir = "/var/lib/hallhub"',
        'secret_file = "/etc/hallhub/secret"',
        "",
        "[broker]                            # the node broker's loopback listener for the hub",
        'host = "127.0.0.1"',
        f"port = {HUB_BROKER_PORT}",
        'username = "hub"',
        'password_file = "/etc/hallhub/broker-password"',
        "",
        "[api]",
        'listen = "127.0.0.1:8780"',
        'pull_token_file = "/etc/hallhub/pull-token"',
        'control_token_file = "/etc/hallhub/control-token"  # window PCs and staff changing state (§9)',
        "",
        "[central]                           # push is off until url is set",
        'url = ""',
        '# url = "https://…"                 # the provincial platform',
        '# token_file = "/etc/hallhub/central-token"',
    ]
    for port in found.named:
        out += [
            "",
            f"[[device]]                          # found: {port.path}",
            f'id = "{_ID_PREFIX[port.kind]}-{port.window}"',
            f'kind = "{port.kind}"',
            'transport = "serial"',
            f"port = {_q(str(port.path))}",
            f"baud = {_BAUD[port.kind]}",
        ]
        if port.kind == "keypad":
            out.append("address = 1                         # more keypads on this line: copy this block,")
            out.append("                                    # same port, their own id, address and window")
        out.append(f"window = {_q(port.window)}")
    for number, path in enumerate(found.serial, start=1):
        out += [
            "",
            f"# found: {path}",
            "# Which device is it? Uncomment, set kind (keypad, idcard or qr), baud (keypad 9600,",
            "# idcard 115200, qr as set on the scanner), window, and for a keypad its address.",
            "# [[device]]",
            f'# id = "serial-{number:02d}"',
            '# kind = "keypad"',
            '# transport = "serial"',
            f"# port = {_q(str(path))}",
            "# baud = 9600",
            "# address = 1",
            '# window = "01"',
        ]
    for number, name in enumerate(dict.fromkeys(reader_filter(r) for r in found.readers or []), start=1):
        out += _extra_block(
            "pcsc",
            "pcsc",
            "# found: PC/SC reader",
            [f'id = "pcsc-{number:02d}"', 'kind = "pcsc"', 'transport = "pcsc"', f"reader = {_q(name)}"],
        )
    for number, camera in enumerate(found.cameras, start=1):
        out += _extra_block(
            "qr",
            "camera",
            f"# found: /dev/video{camera.index} ({camera.name})",
            [f'id = "cam-{number:02d}"', 'kind = "qr"', 'transport = "camera"', f'source = "{camera.index}"'],
        )
    out += [
        "",
        "# MQTT devices (terminals, rating pads, network QR scanners) are added with their broker account:",
        "#   hallhub device add ID --kind terminal|pad|qr [--window W]",
    ]
    return "\n".join(out) + "\n"


def _extra_block(kind: str, transport: str, found: str, keys: list[str]) -> list[str]:
    """A `[[device]]` block; commented out, with what to install, when its driver's extra is missing
    (the file must pass `config check` on this installation)."""
    missing = missing_for(kind, transport)
    if missing is None:
        return ["", f"[[device]]                          {found}", *keys]
    return [
        "",
        f"{found}: it {missing.advice()}; then uncomment it",
        "# [[device]]",
        *(f"# {key}" for key in keys),
    ]


class InitError(Exception):
    """The config cannot be written; the message says why."""


@dataclass(frozen=True, slots=True)
class Replaced:
    """What `write_config --force` replaced: the old file's node and devices, and where it is kept."""

    backup: Path
    node: str
    devices: int


def _describe(path: Path) -> tuple[str, int]:
    """The node id and device count of an existing config, as far as it can be read."""
    try:
        raw = read_config_document(path)
    except ConfigError:
        return ("unreadable", 0)
    node = raw.get("node")
    devices = raw.get("device")
    node_id = node.get("id") if isinstance(node, dict) else None
    return (str(node_id) if node_id else "no node id", len(devices) if isinstance(devices, list) else 0)


def write_config(path: Path, text: str, *, force: bool, now: datetime | None = None) -> Replaced | None:
    """Validate `text` as a node config and write it to `path` (only over an existing file with force).

    A replaced file is kept beside it as `<name>.<UTC time>.bak` and described in the answer, so that
    `--force` never loses a technician's edits without a word.
    """
    parse_config(tomllib.loads(text), path)
    replaced: Replaced | None = None
    if path.exists():
        if not force:
            raise InitError(f"{path} exists: not overwritten (add --force to replace it)")
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        backup = path.with_name(f"{path.name}.{stamp}.bak")
        node, devices = _describe(path)
        shutil.copy2(path, backup)
        replaced = Replaced(backup, node, devices)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.init")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o640)
    tmp.replace(path)
    return replaced


def _ask_hall_code() -> str:
    """The hall code: asked on a terminal; refused (exit 2) without one, never a placeholder."""
    if sys.stdin.isatty():
        return str(typer.prompt("The hall's 6-digit administrative division code (node.hall_code)"))
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "[red]error[/] --hall-code is missing: give the hall's 6-digit administrative division code,"
        " e.g. hallhub init --hall-code 370102 (the platform files every rating under it)"
    )
    raise typer.Exit(2)


def init_command(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the config.")
    ] = DEFAULT_CONFIG_PATH,
    force: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
    node_id: Annotated[str | None, typer.Option(help="Node id (default: from the host name).")] = None,
    hall_code: Annotated[
        str | None,
        typer.Option(help="The hall's 6-digit administrative division code (asked for on a terminal)."),
    ] = None,
) -> None:
    """Write a starter node config from the serial ports, PC/SC readers and cameras found here."""
    console = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if hall_code is None:
        hall_code = _ask_hall_code()
    found = discover()
    text = render(found, node_id or default_node_id(), hall_code)
    try:
        replaced = write_config(path=output, text=text, force=force)
    except InitError as exc:
        err.print(f"[red]error[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except (ConfigError, OSError) as exc:  # a bad --node-id or --hall-code; an unwritable path
        err.print(f"[red]error[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if replaced is not None:
        console.print(
            f"[yellow]replaced[/] {escape(str(output))} (node {escape(replaced.node)},"
            f" {replaced.devices} devices); the previous file is kept as {escape(str(replaced.backup))}"
        )
    console.print(f"[green]wrote[/] {escape(str(output))}")
    console.print(f"  {len(found.named)} serial devices under /dev/hallhub/ (ready)")
    console.print(f"  {len(found.serial)} other serial ports (commented out: set their kind and window)")
    if found.readers is None:
        console.print("  PC/SC: pcscd does not answer, no readers listed (sudo systemctl start pcscd)")
    else:
        console.print(f"  {len(found.readers)} PC/SC readers")
    console.print(f"  {len(found.cameras)} cameras")
    console.print(f"check it: hallhub config check {output}", markup=False)
