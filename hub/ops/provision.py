"""`hallhub device add`: a broker account for an MQTT device, window PC or queue system.

The node broker (config/mosquitto/) keeps the accounts of its LAN listener in `devices.passwd`
(written with `mosquitto_passwd -b`, so only a salted hash is stored) and their rights in
`devices.acl`. A device's rights come from the ACL's `%u` patterns: its username is its device id,
so adding a device needs no ACL line, only its account and its `[[device]]` in node.toml. A window
PC (`--kind window`) or the queue system (`--kind queue`) is not a device of node.toml; it gets a
`user` block in the ACL instead. The new password is returned once, for the technician to enter
into the device, and kept nowhere in clear.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from contract.records import ID_PATTERN, WINDOW_PATTERN
from contract.topics import DEVICE_LEAVES, HUB_TO_DEVICE_LEAVES
from hub.config import DEFAULT_CONFIG_PATH, ConfigError, HubConfig, parse_config

DEFAULT_BROKER_DIR = Path("/etc/mosquitto/hallhub")
PASSWD_FILE = "devices.passwd"  # noqa: S105 (a file name, not a password)
ACL_FILE = "devices.acl"
ACL_MARKER = "# --- accounts added by hallhub device add"
LAN_PORT = 1883
DEVICE_KINDS = ("terminal", "pad", "qr")
ACCOUNT_KINDS = ("window", "queue")
RESERVED_USERNAMES = frozenset({"hub"})
DEVICE_WRITES = DEVICE_LEAVES
DEVICE_READS = HUB_TO_DEVICE_LEAVES

_ID_RE = ID_PATTERN
_WINDOW_RE = WINDOW_PATTERN
_PASSWD_TIMEOUT_S = 30.0


class ProvisionError(Exception):
    """The account cannot be added; the message says why and what to do. Nothing was changed."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the technician enters into the device, and what it may publish and read."""

    username: str
    password: str
    kind: str
    node_id: str
    publishes: tuple[str, ...]
    reads: tuple[str, ...]


def new_password() -> str:
    """A random password: 144 bits, URL-safe characters only (easy to type into device setup pages)."""
    return secrets.token_urlsafe(18)


def _toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def device_block(device_id: str, kind: str, window: str | None) -> str:
    """The `[[device]]` table appended to node.toml for an MQTT device."""
    lines = [
        "",
        "[[device]]                          # added by `hallhub device add`",
        f"id = {_toml_string(device_id)}",
        f"kind = {_toml_string(kind)}",
        'transport = "mqtt"',
    ]
    if window is not None:
        lines.append(f"window = {_toml_string(window)}")
    return "\n".join(lines) + "\n"


WINDOW_WRITES = ("evaluate", "staff")
"""What a window PC or the queue system publishes: evaluation requests (§2) and staff events (§12)."""
WINDOW_READS = ("session", "state", "error")
"""What it reads: session updates (§2), the window's retained state and refused staff events (§12)."""


def acl_block(username: str, kind: str, window: str | None) -> str:
    """The `user` block of a window PC (its window only) or of the queue system (every window)."""
    target = window if kind == "window" and window is not None else "+"
    what = f"window PC of window {window}" if kind == "window" else "queue system (every window)"
    lines = [f"topic write hall/v1/+/window/{target}/{leaf}\n" for leaf in WINDOW_WRITES]
    lines += [f"topic read hall/v1/+/window/{target}/{leaf}\n" for leaf in WINDOW_READS]
    return f"\n# {what}\nuser {username}\n" + "".join(lines)


def passwd_users(path: Path) -> set[str]:
    """Usernames in a Mosquitto password file (`user:hash` lines)."""
    if not path.exists():
        return set()
    return {
        line.split(":", 1)[0]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#") and ":" in line
    }


def _acl_users(text: str) -> set[str]:
    return {line.split(None, 1)[1].strip() for line in text.splitlines() if line.startswith("user ")}


def _passwd_tool() -> str:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise ProvisionError("mosquitto_passwd not found: install Debian's mosquitto package")
    return tool


def _run_passwd(args: list[str]) -> None:
    try:
        result = subprocess.run(
            [_passwd_tool(), *args], capture_output=True, text=True, timeout=_PASSWD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise ProvisionError(f"mosquitto_passwd did not finish within {_PASSWD_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise ProvisionError(f"mosquitto_passwd failed on {args[1]}: {detail}")


def _secure_broker_file(path: Path) -> None:
    """0640, and root:mosquitto when we are root and the group exists (the broker reads it as mosquitto)."""
    path.chmod(0o640)
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            os.chown(path, 0, grp.getgrnam("mosquitto").gr_gid)


def _replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, keeping the file's mode and owner."""
    stat = path.stat()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(stat.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.chown(tmp, stat.st_uid, stat.st_gid)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _load(config_path: Path) -> tuple[str, HubConfig]:
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisionError(f"cannot read {config_path}: {exc.strerror}") from None
    try:
        return text, parse_config(tomllib.loads(text), config_path)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(f"{config_path}: not valid TOML: {exc}") from None
    except ConfigError as exc:
        raise ProvisionError(
            f"fix {config_path} first (hallhub config check {config_path}):\n" + exc.render()
        ) from None


def _check_request(device_id: str, kind: str, window: str | None) -> None:
    if kind not in DEVICE_KINDS + ACCOUNT_KINDS:
        raise ProvisionError(
            f'"{kind}" has no broker account: --kind is one of {", ".join(DEVICE_KINDS + ACCOUNT_KINDS)}. '
            "Serial and PC/SC devices (keypad, idcard, pcsc) are added to node.toml by hand "
            "or with `hallhub init`"
        )
    if not _ID_RE.match(device_id):
        raise ProvisionError(f'"{device_id}" is not a valid id: use 1 to 64 letters, digits, "_" or "-"')
    if device_id in RESERVED_USERNAMES:
        raise ProvisionError(f'"{device_id}" is reserved for the hub\'s own account: choose another id')
    if window is not None and not _WINDOW_RE.match(window):
        raise ProvisionError(f'"{window}" is not a valid window: use 1 to 16 letters, digits, "_" or "-"')
    if kind == "window" and window is None:
        raise ProvisionError("a window PC serves one window: add --window W (e.g. --window 07)")
    if kind == "pad" and window is None:
        raise ProvisionError("a rating pad serves one window: add --window W (e.g. --window 07)")
    if kind == "queue" and window is not None:
        raise ProvisionError("the queue system may start sessions at every window: leave out --window")


def add_device(
    device_id: str,
    kind: str,
    *,
    window: str | None = None,
    config_path: Path = DEFAULT_CONFIG_PATH,
    broker_dir: Path = DEFAULT_BROKER_DIR,
) -> Credentials:
    """Create the broker account (and ACL block or `[[device]]`), and return its one-time credentials.

    Everything is checked before anything is written; if a later step fails, the account written
    by an earlier one is removed again.
    """
    _check_request(device_id, kind, window)
    text, config = _load(config_path)
    passwd = broker_dir / PASSWD_FILE
    acl = broker_dir / ACL_FILE
    if not acl.is_file():
        raise ProvisionError(f"{acl} not found: set up the node broker first with scripts/install-node")
    for index, device in enumerate(config.device):
        if device.id == device_id:
            raise ProvisionError(
                f'"{device_id}" is already in {config_path} (device[{index}], kind {device.kind}): '
                "choose another id"
            )
    acl_text = acl.read_text(encoding="utf-8")
    if device_id in passwd_users(passwd) or device_id in _acl_users(acl_text):
        raise ProvisionError(
            f'"{device_id}" already has a broker account in {broker_dir}: choose another id, or remove '
            f"it first with: mosquitto_passwd -D {passwd} {device_id}"
        )

    new_text: str | None = None
    if kind in DEVICE_KINDS:
        new_text = text.rstrip("\n") + "\n" + device_block(device_id, kind, window)
        try:
            parse_config(tomllib.loads(new_text), config_path)
        except ConfigError as exc:
            raise ProvisionError(f'"{device_id}" cannot be added:\n' + exc.render()) from None

    _passwd_tool()
    password = new_password()
    if not passwd.exists():
        passwd.touch(mode=0o640)
    _run_passwd(["-b", str(passwd), device_id, password])
    try:
        _secure_broker_file(passwd)
        if kind in ACCOUNT_KINDS:
            separator = "" if acl_text.endswith("\n") or not acl_text else "\n"
            marker = "" if ACL_MARKER in acl_text else f"\n{ACL_MARKER}\n"
            _replace_file(acl, acl_text + separator + marker + acl_block(device_id, kind, window))
            _secure_broker_file(acl)
        if new_text is not None:
            _replace_file(config_path, new_text)
    except BaseException:
        with contextlib.suppress(ProvisionError):
            _run_passwd(["-D", str(passwd), device_id])
        raise
    return _credentials(device_id, password, kind, config.node.id, window)


def _credentials(username: str, password: str, kind: str, node_id: str, window: str | None) -> Credentials:
    root = f"hall/v1/{node_id}"
    if kind in DEVICE_KINDS:
        publishes = tuple(f"{root}/dev/{username}/{leaf}" for leaf in DEVICE_WRITES)
        reads = tuple(f"{root}/dev/{username}/{leaf}" for leaf in DEVICE_READS)
    else:
        target = window if kind == "window" and window is not None else "+"
        publishes = tuple(f"{root}/window/{target}/{leaf}" for leaf in WINDOW_WRITES)
        reads = tuple(f"{root}/window/{target}/{leaf}" for leaf in WINDOW_READS)
    return Credentials(username, password, kind, node_id, publishes, reads)


def reload_broker(broker_dir: Path) -> str:
    """Ask the node's Mosquitto to re-read its accounts; say what to do where that is not possible."""
    manual = "then make the broker re-read its accounts: sudo systemctl reload mosquitto"
    if broker_dir.resolve() != DEFAULT_BROKER_DIR or not Path("/run/systemd/system").is_dir():
        return manual
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return manual
    try:
        active = subprocess.run(
            [systemctl, "is-active", "--quiet", "mosquitto"], timeout=_PASSWD_TIMEOUT_S, check=False
        )
        if active.returncode != 0:
            return "mosquitto is not running: the account is used from its next start"
        reload = subprocess.run(
            [systemctl, "reload", "mosquitto"], capture_output=True, timeout=_PASSWD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return manual
    return "broker reloaded: the account works now" if reload.returncode == 0 else manual


device_app = typer.Typer(
    help="Broker accounts for MQTT devices, window PCs and the queue system.", no_args_is_help=True
)


@device_app.command("add")
def add_command(
    device_id: Annotated[str, typer.Argument(metavar="ID", help="Device id, also its MQTT username.")],
    kind: Annotated[
        str, typer.Option(help="terminal, pad or qr (an MQTT device); window (a window PC); queue.")
    ],
    window: Annotated[
        str | None, typer.Option(help="The window it serves (pads and window PCs need one).")
    ] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="Node config file (TOML).")] = (
        DEFAULT_CONFIG_PATH
    ),
    broker_dir: Annotated[
        Path, typer.Option(help="The node broker's accounts and ACL.")
    ] = DEFAULT_BROKER_DIR,
) -> None:
    """Give a device a broker account (and add it to node.toml); print its password once."""
    console = Console(highlight=False, soft_wrap=True)
    try:
        creds = add_device(device_id, kind, window=window, config_path=config, broker_dir=broker_dir)
    except (ProvisionError, OSError) as exc:
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    console.print(f"[green]added[/] {creds.kind} [bold]{creds.username}[/]")
    console.print(f"  broker    this node's LAN address, port {LAN_PORT}")
    console.print(f"  username  {creds.username}", markup=False)
    console.print(f"  password  {creds.password}", markup=False)
    console.print("            (shown only now: enter it into the device; the broker keeps only a hash)")
    for topic in creds.publishes:
        console.print(f"  publish   {topic}", markup=False)
    for topic in creds.reads:
        console.print(f"  read      {topic}", markup=False)
    if creds.kind in DEVICE_KINDS:
        console.print(f"{config}: device {creds.username} added", markup=False)
        console.print("restart the hub to serve it: sudo systemctl restart hallhub")
    console.print(reload_broker(broker_dir))
