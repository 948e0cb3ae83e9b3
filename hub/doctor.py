"""`hallhub doctor`: check a node before (or instead of) guessing why it does not work.

Every check yields findings: `ok`, `warning` (works, but a technician should know) or `error` (the
hub will not work as configured), one line each, with the fix a technician can act on. Checks run
concurrently, each under a timeout, so doctor answers in seconds even with a dead broker.

What is checked: the config file; the node secret; the national crypto (SM3/SM4); every serial port
(exists, readable and writable by the service user, opens, and answers its protocol: PING for
keypads, SAM status `11 FF` for ID-card readers); PC/SC readers; cameras (one frame); MQTT devices'
retained state; the broker (log in with the configured credentials, publish and receive on a
scratch topic under the node's root); the central URL (DNS, TLS, the token, clock skew from the
`Date` header); free disk space against `outbox.max_mb`; clock synchronisation; the systemd unit
and its watchdog.

The config is judged by `load_config`, exactly as `hallhub config check` and `hallhub run` judge
it, and its errors are the same lines. An invalid config does not stop doctor: every check whose
sections are valid still runs, and each check that needs an invalid section (or a secret file that
cannot be read) is reported `SKIP` with the keys it waits for.

Permissions are judged for the user the hub runs as (`--user`, else the `User=` of
hallhub.service, else a `hallhub` account if one exists, else the current user). For another user
than the current one the check follows the file's owner, group and mode bits (as the kernel does
without ACLs); root may read and write anything. Doctor itself may run as root and still report
that the service user cannot open a port.

Secrets and personal data never reach the output: values of the keys in `TO_REDACT` are replaced,
and every text is scrubbed of the resolved passwords, tokens and the node secret, of URL user
information and of bearer tokens. Doctor never reads a card, decodes a camera frame or stores
anything.

Run doctor while the hub is stopped: the hub holds its serial ports exclusively.

Not checked: pcscd's readers cannot be judged for another user (pcscd decides), and a camera is
opened as the user doctor runs as.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import grp
import json
import logging
import os
import pwd
import re
import shutil
import socket
import ssl
import stat
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import aiohttp
import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from hub import __version__
from hub.config import (
    ConfigError,
    ConfigProblem,
    DeviceSection,
    HubConfig,
    Secrets,
    is_loopback,
    load_config,
    parse_config,
    read_config_document,
    read_secrets,
)
from hub.topics import Topics

T = TypeVar("T")

REDACTED: Final = "**REDACTED**"
TO_REDACT: Final = frozenset(
    {
        # secrets
        "password",
        "token",
        "pull_token",
        "secret",
        "broker_password",
        "central_token",
        "authorization",
        # personal data (never in doctor's findings, listed so that nothing added later leaks it)
        "citizen_ref",
        "citizen_masked",
        "id_number",
        "certkeygov",
        "name",
        "photo",
        "sealed",
    }
)
_URL_USERINFO: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")  # RFC 6750 token68

DEFAULT_TIMEOUT_S: Final = 5.0
UNIT_NAME: Final = "hallhub.service"
UNIT_DIRS: Final = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
SERIAL_DIRS: Final = (Path("/dev/hallhub"), Path("/dev/serial/by-id"))  # udev names, then by-id
TIMESYNC_FLAG: Final = Path("/run/systemd/timesync/synchronized")
SKEW_WARN_S: Final = 5.0
SKEW_ERROR_S: Final = 60.0
KEYPAD_ACK_TIMEOUT_S: Final = 0.5
KEYPAD_TRIES: Final = 2
SAM_TIMEOUT_S: Final = 1.0
COMMAND_TIMEOUT_S: Final = 2.0
MIB: Final = 2**20


class Level(enum.StrEnum):
    """How bad a finding is; any error makes doctor exit 1. `skipped`: a check that could not run
    because what it needs in the config is not valid (the config errors say why)."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    SKIPPED = "skipped"


_LABELS: Final = {Level.OK: "OK", Level.WARNING: "WARN", Level.ERROR: "ERROR", Level.SKIPPED: "SKIP"}


@dataclass(frozen=True, slots=True)
class Finding:
    """One result line: `LEVEL check[subject]: message; fix: fix`.

    `key` is the config key path a config or secret-file finding is about (`national.pf.qr`), as
    `hallhub config check` names it; empty for the other checks.
    """

    check: str
    subject: str
    level: Level
    message: str
    fix: str = ""
    key: str = ""

    def line(self) -> str:
        """The finding as one line of text."""
        text = f"{_LABELS[self.level]:<5} {self.check}[{self.subject}]: {self.message}"
        return f"{text}; fix: {self.fix}" if self.fix else text

    def to_json(self) -> dict[str, str]:
        """The finding for `--json`."""
        return {
            "check": self.check,
            "subject": self.subject,
            "level": str(self.level),
            "message": self.message,
            "fix": self.fix,
            "key": self.key,
        }


def _ok(check: str, subject: str, message: str) -> Finding:
    return Finding(check, subject, Level.OK, message)


def _warn(check: str, subject: str, message: str, fix: str = "") -> Finding:
    return Finding(check, subject, Level.WARNING, message, fix)


def _error(check: str, subject: str, message: str, fix: str = "") -> Finding:
    return Finding(check, subject, Level.ERROR, message, fix)


def _skip(check: str, subject: str, why: str) -> Finding:
    return Finding(
        check, subject, Level.SKIPPED, f"not checked: {why}", "fix the errors above, then run doctor again"
    )


# -- redaction -----------------------------------------------------------------------------------


def redact(data: Any, to_redact: Iterable[str] = TO_REDACT) -> Any:
    """A copy of `data` with the (non-empty) values of keys in `to_redact` replaced, at any depth."""
    keys = {key.lower() for key in to_redact}
    if isinstance(data, Mapping):
        return {
            k: (REDACTED if str(k).lower() in keys and v not in ("", None) else redact(v, keys))
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact(item, keys) for item in data]
    return data


class Scrubber:
    """Removes known secret values, URL user information and bearer tokens from any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Scrub these values too (values shorter than 4 characters are ignored: too common)."""
        for secret in secrets:
            if secret and len(secret) >= 4 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """The text without secrets."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
        return _BEARER.sub(rf"\g<1>{REDACTED}", text)

    def finding(self, finding: Finding) -> Finding:
        """The finding with its texts scrubbed."""
        return Finding(
            finding.check,
            self(finding.subject),
            finding.level,
            self(finding.message),
            self(finding.fix),
            finding.key,
        )

    def deep(self, data: Any) -> Any:
        """Scrub every string in a JSON-like structure."""
        if isinstance(data, str):
            return self(data)
        if isinstance(data, Mapping):
            return {k: self.deep(v) for k, v in data.items()}
        if isinstance(data, list | tuple):
            return [self.deep(item) for item in data]
        return data


# -- options and report --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    """What to check and how; the paths are parameters so that tests can point them elsewhere."""

    config_path: Path
    user: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    unit_name: str = UNIT_NAME
    unit_dirs: tuple[Path, ...] = UNIT_DIRS
    serial_dirs: tuple[Path, ...] = SERIAL_DIRS
    timesync_flag: Path = TIMESYNC_FLAG
    use_systemctl: bool = True


@dataclass(slots=True)
class Report:
    """All findings of one doctor run."""

    config_path: str
    user: str
    findings: list[Finding] = field(default_factory=list)
    config: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    @property
    def errors(self) -> int:
        """Number of errors."""
        return sum(1 for f in self.findings if f.level is Level.ERROR)

    @property
    def warnings(self) -> int:
        """Number of warnings."""
        return sum(1 for f in self.findings if f.level is Level.WARNING)

    @property
    def skipped(self) -> int:
        """Number of checks that could not run (what they need in the config is not valid)."""
        return sum(1 for f in self.findings if f.level is Level.SKIPPED)

    @property
    def exit_code(self) -> int:
        """1 if any check failed, else 0."""
        return 1 if self.errors else 0

    def lines(self) -> list[str]:
        """One line per finding."""
        return [finding.line() for finding in self.findings]

    def summary(self) -> str:
        """The closing line."""
        checks = _plural(len(self.findings), "check")
        if self.skipped:
            checks += f", {self.skipped} skipped"
        if self.errors:
            return (
                f"doctor: {_plural(self.errors, 'error')} and {_plural(self.warnings, 'warning')} "
                f"in {checks} ({self.elapsed_s:.1f} s): fix the errors, then run it again"
            )
        return f"doctor: no errors, {_plural(self.warnings, 'warning')} in {checks} ({self.elapsed_s:.1f} s)"

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (`--json`)."""
        return {
            "hallhub": __version__,
            "config_path": self.config_path,
            "user": self.user,
            "ok": self.errors == 0,
            "errors": self.errors,
            "warnings": self.warnings,
            "skipped": self.skipped,
            "elapsed_s": round(self.elapsed_s, 2),
            "findings": [finding.to_json() for finding in self.findings],
            "config": self.config,
        }


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- small helpers -------------------------------------------------------------------------------


async def in_daemon_thread(call: Callable[[], T], timeout_s: float) -> T:
    """Run a blocking call on a daemon thread; give up after `timeout_s` (the thread is abandoned).

    Unlike `asyncio.to_thread`, a call stuck in a driver (a camera, pcscd) cannot keep the process
    from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed over to the awaiting task
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=work, name="doctor-probe", daemon=True).start()
    async with asyncio.timeout(timeout_s):
        return await future


async def _command(*argv: str, timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str] | None:
    """(exit code, stdout) of a short command, or None if it is missing or does not finish."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None
    return process.returncode or 0, out.decode(errors="replace")


def _key_values(text: str) -> dict[str, str]:
    """`KEY=value` lines (systemctl show, timedatectl show) as a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


# -- who the hub runs as, and what it may open ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """The account whose permissions are checked."""

    name: str
    uid: int
    groups: frozenset[int]
    source: str

    @classmethod
    def lookup(cls, name: str, source: str) -> ServiceUser:
        """The account by name; KeyError if there is none."""
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)), source)

    @classmethod
    def current(cls) -> ServiceUser:
        """The user doctor runs as."""
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, frozenset({os.getegid(), *os.getgroups()}), "the current user")

    def may(self, path: str | Path, mode: int) -> bool:
        """Whether this user may access `path` with `mode` (os.R_OK | os.W_OK | os.X_OK)."""
        if self.uid == os.geteuid():
            return os.access(path, mode)
        if self.uid == 0:
            return True
        info = Path(path).stat()
        if info.st_uid == self.uid:
            bits = (info.st_mode >> 6) & 7
        elif info.st_gid in self.groups:
            bits = (info.st_mode >> 3) & 7
        else:
            bits = info.st_mode & 7
        return bits & mode == mode


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True, slots=True)
class UnitInfo:
    """What doctor learned about hallhub.service."""

    source: str  # "systemctl" or the unit file's path
    type: str
    watchdog: str
    user: str
    groups: tuple[str, ...] = ()  # Group= and SupplementaryGroups=: the hub has these too


_UNIT_KEYS: Final = ("Type", "WatchdogSec", "User", "Group", "SupplementaryGroups")


def _parse_unit_files(paths: Sequence[Path]) -> dict[str, str]:
    """The [Service] keys doctor needs from a unit file and its drop-ins (later files win).

    SupplementaryGroups= accumulates, as in systemd; an empty assignment resets it.
    """
    values: dict[str, str] = {}
    for path in paths:
        section = ""
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == "Service" and "=" in line and not line.startswith(("#", ";")):
                key, _, value = (part.strip() for part in line.partition("="))
                if key == "SupplementaryGroups" and value:
                    values[key] = f"{values.get(key, '')} {value}".strip()
                elif key in _UNIT_KEYS:
                    values[key] = value
    return values


def _unit_info(source: str, values: Mapping[str, str], watchdog: str, default_type: str) -> UnitInfo:
    groups = tuple(f"{values.get('Group', '')} {values.get('SupplementaryGroups', '')}".split())
    return UnitInfo(
        source,
        values.get("Type", default_type),
        "" if watchdog in ("", "0", "infinity") else watchdog,
        values.get("User", ""),
        groups,
    )


async def find_unit(options: DoctorOptions) -> UnitInfo | None:
    """hallhub.service as systemd sees it, else as its unit file says; None if not installed."""
    if options.use_systemctl:
        properties = ("LoadState", "Type", "WatchdogUSec", "User", "Group", "SupplementaryGroups")
        argv = ["systemctl", "show", options.unit_name]
        for name in properties:
            argv += ["-p", name]
        answer = await _command(*argv)
        if answer is not None and answer[0] == 0:
            values = _key_values(answer[1])
            if values.get("LoadState") == "loaded":
                return _unit_info("systemctl", values, values.get("WatchdogUSec", ""), "")
    for directory in options.unit_dirs:
        unit = directory / options.unit_name
        if unit.is_file():
            dropins = sorted((directory / f"{options.unit_name}.d").glob("*.conf"))
            values = _parse_unit_files([unit, *dropins])
            return _unit_info(str(unit), values, values.get("WatchdogSec", ""), "simple")
    return None


def service_user(options: DoctorOptions, unit: UnitInfo | None) -> ServiceUser:
    """Whose permissions count: --user, the unit's User=, a `hallhub` account, or the current user.

    The unit's Group= and SupplementaryGroups= count for that user, as systemd grants them.
    """
    if options.user:
        return ServiceUser.lookup(options.user, "--user")
    if unit is not None and unit.user:
        with contextlib.suppress(KeyError):
            user = ServiceUser.lookup(unit.user, f"User= of {options.unit_name}")
            extra = set()
            for name in unit.groups:
                with contextlib.suppress(KeyError):
                    extra.add(grp.getgrnam(name).gr_gid)
            return ServiceUser(user.name, user.uid, user.groups | extra, user.source)
    with contextlib.suppress(KeyError):
        return ServiceUser.lookup("hallhub", "the hallhub account")
    return ServiceUser.current()


# -- the checks ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Context:
    options: DoctorOptions
    config: HubConfig
    secrets: Secrets
    user: ServiceUser
    unit: UnitInfo | None
    scrub: Scrubber
    device_indexes: tuple[int, ...] = ()

    def index(self, device: DeviceSection) -> int:
        """The device's index in the config file (`device[i]`), also when invalid devices were left out."""
        position = next(i for i, d in enumerate(self.config.device) if d is device)
        return self.device_indexes[position] if position < len(self.device_indexes) else position


_PLACEHOLDER_NODE: Final = {"id": "unknown", "hall_code": "000000"}
"""Stands in for an invalid `[node]` so that the other sections stay usable; checks needing it skip."""


@dataclass(frozen=True, slots=True)
class ConfigView:
    """What doctor may use of the config: all of it, its valid sections, or nothing.

    `config` holds the file's valid sections: an invalid section is replaced by its defaults (an
    invalid `[node]` by a placeholder) and an invalid device is left out, so that the checks which
    do not need them still run. `broken` maps each section that is not the file's own (`node`,
    `broker`, `device[2]`, ...) to the keys that failed; `device_indexes` gives each kept device's
    index in the file and `left_out` names each device left out (its id, or `device[i]`);
    `unusable` says why nothing at all could be used.
    """

    config: HubConfig | None
    valid: bool = False
    broken: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    device_indexes: tuple[int, ...] = ()
    unusable: str = ""
    left_out: Mapping[str, str] = field(default_factory=dict)

    def why_not(self, *sections: str) -> str | None:
        """Why a check that needs these sections cannot run, or None if it can."""
        if self.config is None:
            return self.unusable
        keys = [key for section in sections for key in self.broken.get(section, ())]
        if not keys:
            return None
        return f"{', '.join(dict.fromkeys(keys))} {'is' if len(keys) == 1 else 'are'} not usable"

    def with_broken(self, problems: Sequence[ConfigProblem]) -> ConfigView:
        """The same view with more keys that failed (secret files that cannot be read)."""
        broken = {section: list(keys) for section, keys in self.broken.items()}
        for problem in problems:
            broken.setdefault(_section_of(problem.key), []).append(problem.key)
        return ConfigView(
            self.config,
            self.valid,
            {section: tuple(keys) for section, keys in broken.items()},
            self.device_indexes,
            self.unusable,
            self.left_out,
        )


def _section_of(key: str) -> str:
    """The top-level part of a key path: `device[2].port` -> `device[2]`, `national.pf.qr` -> `national`."""
    return key.split(".", 1)[0]


_DEVICE_KEY: Final = re.compile(r"device\[([0-9]+)\]")


def _salvage(raw: dict[str, Any], problems: Sequence[ConfigProblem], path: Path) -> ConfigView:
    """The valid part of a config that failed validation (see `ConfigView`)."""
    broken: dict[str, list[str]] = {}
    for problem in problems:
        broken.setdefault(_section_of(problem.key), []).append(problem.key)
    devices = raw.get("device")
    for _attempt in range(4):  # leaving a section out can only reveal problems in the others
        if "" in broken:
            break
        reduced = {name: value for name, value in raw.items() if name not in broken and name != "device"}
        if "node" in broken:
            reduced["node"] = dict(_PLACEHOLDER_NODE)
        indexes: list[int] = []
        if isinstance(devices, list) and "device" not in broken:
            indexes = [i for i in range(len(devices)) if f"device[{i}]" not in broken]
            reduced["device"] = [devices[i] for i in indexes]
        try:
            config = parse_config(reduced, path)
        except ConfigError as exc:
            for problem in exc.problems:
                key = problem.key
                if match := _DEVICE_KEY.match(key):  # renumber: device[j] of `reduced` is device[indexes[j]]
                    key = f"device[{indexes[int(match.group(1))]}]{key[match.end() :]}"
                broken.setdefault(_section_of(key), []).append(key)
            continue
        frozen = {section: tuple(keys) for section, keys in broken.items()}
        left_out = {
            section: _device_name(devices, section)
            for section in frozen
            if section == "device" or _DEVICE_KEY.fullmatch(section)
        }
        return ConfigView(config, False, frozen, tuple(indexes), left_out=left_out)
    return ConfigView(None, unusable="the config is not valid (see the config errors)")


def _device_name(devices: object, section: str) -> str:
    """How a left-out device is named in doctor's report: its id if it has one, else `device[i]`."""
    match = _DEVICE_KEY.fullmatch(section)
    if match is None or not isinstance(devices, list) or int(match.group(1)) >= len(devices):
        return section
    device = devices[int(match.group(1))]
    name = device.get("id") if isinstance(device, dict) else None
    return name[:64] if isinstance(name, str) and name.strip() else section


def check_config(path: Path) -> tuple[ConfigView, list[Finding]]:
    """Validate the config exactly as `hallhub config check` and `hallhub run` do (`load_config`).

    One error finding per problem, naming its key; then the valid part of the file is kept so that
    doctor still runs every check that does not need the invalid sections.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        findings = []
        for problem in exc.problems:
            leaf = problem.key.rsplit(".", 1)[-1].lower()
            message = problem.message
            if leaf in TO_REDACT:
                message = "invalid value (not shown: it is a secret); expected text in quotes"
            where = f"{problem.key}: " if problem.key else ""
            findings.append(
                Finding(
                    "config",
                    str(path),
                    Level.ERROR,
                    f"{where}{message}",
                    f"edit {path}, then run `hallhub config check {path}`",
                    problem.key,
                )
            )
        try:
            raw = read_config_document(path)
        except ConfigError:
            return ConfigView(None, unusable="the config file cannot be read"), findings
        return _salvage(raw, exc.problems, path), findings
    devices = _plural(len(config.device), "device")
    view = ConfigView(config, valid=True, device_indexes=tuple(range(len(config.device))))
    return view, [
        _ok("config", str(path), f"node {config.node.id} (hall {config.node.hall_code}), {devices}")
    ]


def check_secrets(config: HubConfig) -> tuple[Secrets, list[ConfigProblem], list[Finding]]:
    """Read the password and token files the config names; a finding for each that cannot be used.

    These are files, not config values: `config check` does not read them, `run` refuses to start
    without them. A secret that cannot be read is left empty and the checks needing it skip.
    """
    secrets, problems = read_secrets(config)
    findings = [
        Finding(
            "secrets",
            p.key,
            Level.ERROR,
            p.message,
            "create the file (readable by the hub's user only: chmod 600) or fix the path",
            p.key,
        )
        for p in problems
    ]
    return secrets, problems, findings


def check_node_secret(ctx: _Context) -> list[Finding]:
    """The node secret file: present (or creatable), private, well-formed; never shown."""
    from hub.privacy import SecretFileError, load_or_create_secret  # noqa: PLC0415 (lazy: pulls in crypto)

    path = Path(ctx.config.node.secret_file)
    subject = str(path)
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if ctx.user.may(parent, os.W_OK | os.X_OK):
            return [_ok("secret", subject, "not there yet: the hub creates it (mode 0600) at first start")]
        return [
            _error(
                "secret",
                subject,
                f"missing, and user {ctx.user.name} cannot create it in {parent}",
                f"install -d -o {ctx.user.name} -m 700 {path.parent}",
            )
        ]
    if not ctx.user.may(path, os.R_OK):
        return [
            _error(
                "secret",
                subject,
                f"not readable by user {ctx.user.name}",
                f"chown {ctx.user.name} {path} && chmod 600 {path}",
            )
        ]
    try:
        secret = load_or_create_secret(path)
    except SecretFileError as exc:
        return [
            _error(
                "secret",
                subject,
                str(exc).replace(f"{path}: ", ""),
                "deleting the file makes the hub create a new secret"
                " (every citizen_ref changes from then on)",
            )
        ]
    ctx.scrub.add(secret.hex(), secret.hex().upper())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return [
            _warn(
                "secret",
                subject,
                f"readable by other users (mode {mode:04o})",
                f"chmod 600 {path}",
            )
        ]
    return [_ok("secret", subject, f"present, mode {mode:04o}")]


def check_crypto(config: HubConfig) -> list[Finding]:
    """SM3/SM4 work when the config uses them."""
    if config.privacy.hmac != "sm3" and config.privacy.identity != "encrypted":
        return []
    from hub.privacy import NationalCryptoUnavailableError, check_national_crypto  # noqa: PLC0415

    try:
        check_national_crypto()
    except NationalCryptoUnavailableError as exc:
        return [
            _error(
                "crypto",
                "SM3/SM4",
                str(exc),
                "install an OpenSSL with the SM algorithms (Debian's libssl3),"
                ' or set privacy.hmac = "sha256"',
            )
        ]
    return [_ok("crypto", "SM3/SM4", "match the standards' test vectors")]


def _is_url(port: str) -> bool:
    return "://" in port


def _ports_present(directories: Sequence[Path]) -> str:
    """What a technician could put in `port` instead: the stable names present now."""
    names: list[str] = []
    for directory in directories:
        with contextlib.suppress(OSError):
            names += sorted(str(p) for p in directory.iterdir())
    if not names:
        listed = " or ".join(f"{d}/" for d in directories)
        return f"no serial adapter is listed in {listed}"
    return "present: " + ", ".join(names[:4]) + (" …" if len(names) > 4 else "")


def check_port_access(ctx: _Context, devices: Sequence[DeviceSection]) -> list[Finding]:
    """The port exists and the service user may read and write it (empty list: all good)."""
    port = devices[0].port or ""
    subject = ",".join(d.id for d in devices)
    keys = " / ".join(f"device[{ctx.index(d)}].port" for d in devices)
    if _is_url(port):
        return []
    if not Path(port).exists():
        what = f"{port} does not exist"
        if Path(port).is_symlink():
            what = f"{port} points to {Path(port).readlink()}, which does not exist"
        return [
            _error(
                "port",
                subject,
                what,
                f"plug the {devices[0].kind} in, or set {keys} to the right port "
                f"({_ports_present(ctx.options.serial_dirs)})",
            )
        ]
    real = os.path.realpath(port)
    if not ctx.user.may(real, os.R_OK | os.W_OK):
        info = Path(real).stat()
        group = _group_name(info.st_gid)
        shown = f"{port} ({real})" if real != port else port
        detail = f"{stat.filemode(info.st_mode)} {_owner_name(info.st_uid)}:{group}"
        if (info.st_mode >> 3) & 6 == 6:
            fix = f"usermod -aG {group} {ctx.user.name}, then restart the hub"
        else:
            fix = (
                'give the device GROUP="dialout", MODE="0660" with a udev rule (see'
                f" config/udev/99-hallhub.rules) and add {ctx.user.name} to group dialout"
            )
        return [
            _error(
                "port",
                subject,
                f"{shown} is not readable and writable by user {ctx.user.name} ({detail})",
                fix,
            )
        ]
    return []


def _open_fix(reason: str, port: str) -> str:
    if "lock" in reason or "busy" in reason or "in use" in reason:
        return f"stop the hub first (systemctl stop hallhub), or find what holds the port: fuser -v {port}"
    if "permission" in reason.lower():
        return "add the hub's user to the port's group (usually dialout), then log in again"
    return "check the adapter (dmesg | tail) and the port in the config"


class _DoctorSink:
    """The keypad driver's sink during doctor: remembers why the port would not open; stores nothing."""

    def __init__(self) -> None:
        self.offline: str | None = None
        self.changed = asyncio.Event()

    def submit(self, event: Any) -> Awaitable[Any]:
        from drivers.base import Outcome  # noqa: PLC0415

        async def refuse() -> Outcome:
            return Outcome.FAILED  # a key pressed during doctor is not acked: the keypad retries

        return refuse()

    def notify(self, event: Any) -> None:
        from drivers.base import DeviceOffline  # noqa: PLC0415

        if isinstance(event, DeviceOffline) and event.reason.startswith("cannot open"):
            self.offline = event.reason
            self.changed.set()


async def probe_keypads(ctx: _Context, devices: Sequence[DeviceSection]) -> list[Finding]:
    """Open the keypad line with the hub's own driver and PING every keypad on it."""
    from drivers.keypad import KeypadCommandError, KeypadLineDriver, KeypadTimings  # noqa: PLC0415

    port = devices[0].port or ""
    baud = devices[0].baud or 9600
    subject = ",".join(d.id for d in devices)
    timings = KeypadTimings(
        ping_interval_s=3600.0,
        offline_after_s=3600.0,
        ack_timeout_s=KEYPAD_ACK_TIMEOUT_S,
        command_tries=KEYPAD_TRIES,
        reopen_initial_s=0.2,
        reopen_max_s=1.0,
    )
    driver = KeypadLineDriver(port, baud, {d.address or 1: d.id for d in devices}, timings=timings)
    sink = _DoctorSink()
    task = asyncio.create_task(driver.run(sink), name=f"doctor-keypad-{port}")
    findings: list[Finding] = []
    try:
        async with asyncio.timeout(ctx.options.timeout_s):
            while not driver.is_open and sink.offline is None:
                sink.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sink.changed.wait(), 0.02)
        if not driver.is_open:
            reason = (sink.offline or "").removeprefix(f"cannot open serial port {port}: ")
            return [_error("port", subject, f"cannot open {port}: {reason}", _open_fix(reason, port))]
        findings.append(_ok("port", subject, f"{port} opens at {baud} baud"))
        for device in devices:
            address = device.address or 1
            where = f"address {address} on {port}"
            try:
                await driver.ping(device.id)
            except KeypadCommandError:
                findings.append(
                    _error(
                        "keypad",
                        device.id,
                        f"did not answer PING at {where} ({KEYPAD_TRIES} tries)",
                        "check the keypad's power and cable, its address"
                        f" (device[{ctx.index(device)}].address ="
                        f" {address}) and baud rate ({baud}); on RS-485 check that A and B are not swapped",
                    )
                )
                continue
            firmware = await _firmware(driver, device.id)
            shown = f" (firmware {firmware})" if firmware else ""
            findings.append(_ok("keypad", device.id, f"answered PING at {where}{shown}"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return findings


async def _firmware(driver: Any, device_id: str) -> str | None:
    """The firmware from the PONG that follows the ACK (waits briefly for it)."""
    deadline = time.monotonic() + 0.3
    while True:
        info = next(k for k in driver.keypads if k.device_id == device_id)
        if info.firmware or time.monotonic() >= deadline:
            return info.firmware  # type: ignore[no-any-return]
        await asyncio.sleep(0.01)


async def probe_idcard(ctx: _Context, device: DeviceSection) -> list[Finding]:
    """Open the SAM reader and ask for its status (`11 FF`); no card is read."""
    from drivers.idcard.codec import Command  # noqa: PLC0415
    from drivers.idcard.protocol import ReaderTimeoutError, SamLink  # noqa: PLC0415

    port = device.port or ""
    baud = device.baud or 115200
    try:
        link = await SamLink.open(port, baud, lambda _reason: None)
    except OSError as exc:
        reason = _serial_reason(exc)
        return [_error("port", device.id, f"cannot open {port}: {reason}", _open_fix(reason, port))]
    findings = [_ok("port", device.id, f"{port} opens at {baud} baud")]
    try:
        response = await link.request(Command.SAM_STATUS, SAM_TIMEOUT_S)
    except ReaderTimeoutError:
        findings.append(
            _error(
                "idcard",
                device.id,
                f"no answer to SAM status (11 FF) on {port} within {SAM_TIMEOUT_S:.0f} s",
                f"check the reader's power and cable and its baud rate (device[{ctx.index(device)}].baud;"
                " SAM readers default to 115200)",
            )
        )
    except Exception as exc:  # a garbled answer: report it, never crash doctor
        findings.append(
            _error("idcard", device.id, f"unreadable answer to SAM status: {exc}", "check the baud rate")
        )
    else:
        if response.ok:
            findings.append(_ok("idcard", device.id, f"SAM status {response.describe()}"))
        else:
            findings.append(
                _error(
                    "idcard",
                    device.id,
                    f"SAM status {response.describe()}",
                    "power the reader off and on; if it persists, the reader's SAM module needs its vendor",
                )
            )
    finally:
        await link.aclose()
    return findings


def _serial_reason(exc: OSError) -> str:
    text = str(exc)
    if "lock" in text.lower():
        return "port in use by another program (exclusive lock failed)"
    if exc.errno is not None and exc.strerror:
        return exc.strerror.lower()
    return text


async def probe_serial_qr(device: DeviceSection, timeout_s: float) -> list[Finding]:
    """A serial QR scanner only talks when it reads a code: check that the port opens."""
    import serial  # noqa: PLC0415

    port = device.port or ""
    baud = device.baud or 9600

    def open_close() -> None:
        handle = serial.serial_for_url(port, baudrate=baud, timeout=0, exclusive=True)
        handle.close()

    try:
        await in_daemon_thread(open_close, timeout_s)
    except (OSError, ValueError) as exc:
        reason = _serial_reason(exc) if isinstance(exc, OSError) else str(exc)
        return [_error("port", device.id, f"cannot open {port}: {reason}", _open_fix(reason, port))]
    return [_ok("port", device.id, f"{port} opens at {baud} baud (scan a code to test the scanner itself)")]


async def check_serial(ctx: _Context, devices: Sequence[DeviceSection]) -> list[Finding]:
    """Access, open and protocol for one serial port (a keypad line may carry several keypads)."""
    problems = check_port_access(ctx, devices)
    if problems:
        return problems
    kind = devices[0].kind
    if kind == "keypad":
        return await probe_keypads(ctx, devices)
    if kind == "idcard":
        return await probe_idcard(ctx, devices[0])
    return await probe_serial_qr(devices[0], ctx.options.timeout_s)


def _list_readers() -> tuple[str | None, list[str]]:
    """(error, readers) from pcscd; runs on a thread."""
    from smartcard import scard  # noqa: PLC0415

    from drivers.pcsc._pcsc import describe_hresult  # noqa: PLC0415

    def code(value: int) -> int:  # pyscard hands back either sign
        return value & 0xFFFFFFFF

    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if code(hresult) != scard.SCARD_S_SUCCESS:
        return describe_hresult(hresult), []
    try:
        hresult, names = scard.SCardListReaders(context, [])
        if code(hresult) == code(scard.SCARD_E_NO_READERS_AVAILABLE):
            return None, []
        if code(hresult) != scard.SCARD_S_SUCCESS:
            return describe_hresult(hresult), []
        return None, [str(name) for name in names]
    finally:
        scard.SCardReleaseContext(context)


async def check_pcsc(ctx: _Context, device: DeviceSection) -> list[Finding]:
    """pcscd answers and the configured reader (or any reader) is attached."""
    try:
        error, readers = await in_daemon_thread(_list_readers, ctx.options.timeout_s)
    except ImportError as exc:
        return [
            _error("pcsc", device.id, f"pyscard is not usable: {exc}", "apt-get install pcscd libpcsclite1")
        ]
    if error is not None:
        return [_error("pcsc", device.id, error, "apt-get install pcscd; systemctl enable --now pcscd")]
    wanted = (device.reader or "").strip()
    matching = [r for r in readers if wanted.casefold() in r.casefold()] if wanted else readers
    if not matching:
        present = "; ".join(readers) if readers else "none"
        what = f'no reader matching "{wanted}"' if wanted else "no PC/SC reader attached"
        return [
            _error(
                "pcsc",
                device.id,
                f"{what} (readers present: {present})",
                "plug the reader in (check with pcsc_scan), or set"
                f" device[{ctx.index(device)}].reader to part of"
                " its name",
            )
        ]
    return [_ok("pcsc", device.id, f"pcscd answers; reader {matching[0]}")]


def _grab_frame(source: int | str) -> tuple[int, int] | None:
    """Open a capture, read one frame, release it; (width, height) or None. Runs on a thread."""
    import cv2  # noqa: PLC0415

    capture = cv2.VideoCapture(source)
    try:
        if not capture.isOpened():
            return None
        ok, frame = capture.read()
        if not ok or frame is None:
            return None
        return int(frame.shape[1]), int(frame.shape[0])
    finally:
        capture.release()


def _missing_file(source: int | str) -> bool:
    """A camera source that names a local file which is not there."""
    if isinstance(source, int) or "://" in source or source.startswith("/dev/"):
        return False
    return not Path(source).exists()


async def check_camera(ctx: _Context, device: DeviceSection) -> list[Finding]:
    """The camera (or stream, or file) delivers one frame; the frame is not decoded or kept."""
    from drivers.qr.camera import describe_source  # noqa: PLC0415

    text = device.source or ""
    source: int | str = int(text) if text.isdigit() else text
    shown = describe_source(source)
    key = f"device[{ctx.index(device)}].source"
    if _missing_file(source):
        return [
            _error(
                "camera", device.id, f"{shown} does not exist", f"set {key} to a camera index, file or URL"
            )
        ]
    try:
        size = await in_daemon_thread(lambda: _grab_frame(source), ctx.options.timeout_s)
    except TimeoutError:
        return [
            _error(
                "camera", device.id, f"{shown}: no frame within {ctx.options.timeout_s:.0f} s", f"check {key}"
            )
        ]
    if size is None:
        return [
            _error(
                "camera",
                device.id,
                f"cannot read a frame from {shown}",
                f"check the camera's cable and {key} (list cameras with: ls /dev/video*)",
            )
        ]
    return [_ok("camera", device.id, f"read one {size[0]}x{size[1]} frame from {shown}")]


_CONNACK_REASONS: Final = {
    4: "bad username or password",
    5: "not authorized",
    134: "bad username or password",
    135: "not authorized",
}


def _connack_reason(exc: aiomqtt.MqttCodeError) -> str:
    """The broker's reason for refusing a login, in words that do not depend on the MQTT version."""
    code = exc.rc if isinstance(exc.rc, int) or exc.rc is None else exc.rc.value
    return _CONNACK_REASONS.get(code, str(exc)) if isinstance(code, int) else str(exc)


async def check_broker(ctx: _Context) -> list[Finding]:
    """Log in as the hub, publish and receive on a scratch topic, and read devices' retained state."""
    broker = ctx.config.broker
    subject = f"{broker.host}:{broker.port}"
    who = f'"{broker.username}"' if broker.username else "anonymous"
    topics = Topics(ctx.config.node.id)
    scratch = f"{topics.root}/doctor/{uuid.uuid4().hex[:12]}"
    payload = json.dumps({"doctor": uuid.uuid4().hex}).encode()
    mqtt_devices = [d for d in ctx.config.device if d.transport == "mqtt"]
    states: dict[str, dict[str, Any]] = {}
    connected = False
    acl_fix = f"let {who} read and write {topics.root}/# in the broker's ACL (config/mosquitto/hub.acl)"
    try:
        async with asyncio.timeout(ctx.options.timeout_s):
            async with aiomqtt.Client(
                hostname=broker.host,
                port=broker.port,
                username=broker.username or None,
                password=ctx.secrets.broker_password or None,
                identifier=f"hallhub-doctor-{uuid.uuid4().hex[:8]}",
                clean_session=True,
                timeout=ctx.options.timeout_s + 1,  # the outer timeout speaks first
            ) as client:
                connected = True
                if mqtt_devices:
                    await client.subscribe(topics.device("+", "state"), qos=1)
                await client.subscribe(scratch, qos=1)
                await client.publish(scratch, payload, qos=1)
                async for message in client.messages:
                    topic = str(message.topic)
                    if topic == scratch:
                        if message.payload == payload:
                            break
                        continue
                    parsed = topics.parse(topic)
                    if parsed is not None and isinstance(message.payload, bytes):
                        with contextlib.suppress(ValueError):
                            states[parsed[1]] = json.loads(message.payload)
    except MqttConnectError as exc:
        return [
            _error(
                "broker",
                subject,
                f"refused the login as {who} ({_connack_reason(exc)})",
                "check broker.username and broker.password (or password_file) against the broker's"
                " password file (mosquitto_passwd)",
            )
        ]
    except aiomqtt.MqttCodeError as exc:
        return [_error("broker", subject, f"refused a test subscription or message ({exc})", acl_fix)]
    except aiomqtt.MqttError as exc:
        text = str(exc)
        reason = "connection refused" if "refused" in text.lower() or "Errno 111" in text else text
        return [
            _error(
                "broker",
                subject,
                f"cannot connect: {reason}",
                "start the broker (systemctl start mosquitto) or correct broker.host and broker.port",
            )
        ]
    except TimeoutError:
        wait = f"{ctx.options.timeout_s:.0f} s"
        if not connected:
            return [
                _error(
                    "broker",
                    subject,
                    f"accepts TCP connections but gave no MQTT answer within {wait}",
                    "check broker.host and broker.port: they must name the broker's plain MQTT listener",
                )
            ]
        return [
            _error(
                "broker",
                subject,
                f"a test message under {topics.root}/doctor/ did not come back within {wait}",
                acl_fix,
            )
        ]
    findings = [
        _ok(
            "broker",
            subject,
            f"logged in as {who}; published and received a test message under {topics.root}/",
        )
    ]
    for device in mqtt_devices:
        state = states.get(device.id)
        if state is None:
            findings.append(
                _warn(
                    "device",
                    device.id,
                    "has never connected to the broker (no retained state)",
                    f"set the device's MQTT host, port, username ({device.id}), password and node id"
                    f" ({ctx.config.node.id}); the broker's log shows refused logins",
                )
            )
        elif state.get("online") is True:
            findings.append(_ok("device", device.id, "online (its retained state on the broker)"))
        else:
            findings.append(
                _warn(
                    "device", device.id, "offline (its retained state on the broker)", "switch the device on"
                )
            )
    return findings


async def check_central(ctx: _Context) -> list[Finding]:
    """DNS, TLS, the token and the clock skew from the `Date` header.

    The probe is a batch POST with no records, which no receiver stores. A platform checks the token
    before the body (the reference receiver does): 401/403 means a wrong token, and the 400 for an
    empty batch means the token was accepted.
    """
    central = ctx.config.central
    if not central.url:
        return [_ok("central", "-", "push is off (central.url is empty); the platform must pull")]
    url = central.url.rstrip("/")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    subject = url
    findings: list[Finding] = []
    if not ctx.secrets.central_token:
        findings.append(
            _error(
                "central",
                subject,
                "push is on but there is no token",
                f"set central.token or central.token_file to the token issued for node {ctx.config.node.id}",
            )
        )
    if parts.scheme == "http" and not is_loopback(host):
        findings.append(
            _warn(
                "central",
                subject,
                "plain http: records and the token travel unencrypted",
                "use the platform's https:// URL in central.url",
            )
        )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(ctx.options.timeout_s):
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, TimeoutError) as exc:
        reason = "no answer from DNS" if isinstance(exc, TimeoutError) else exc.strerror
        return [
            *findings,
            _error(
                "central",
                subject,
                f"cannot resolve {host}: {reason}",
                "check the host name in central.url and the DNS servers in /etc/resolv.conf",
            ),
        ]
    try:
        ssl_context = _ssl_context(ctx.config) if parts.scheme == "https" else None
    except (OSError, ssl.SSLError) as exc:
        return [
            *findings,
            _error(
                "central",
                subject,
                f"TLS files unusable: {exc}",
                "check central.ca_file, central.cert_file and central.key_file",
            ),
        ]
    from sync.wire import batch_path  # noqa: PLC0415

    node_id = ctx.config.node.id
    batch_id = f"doctor-{uuid.uuid4()}"
    body = json.dumps(
        {"node_id": node_id, "batch_id": batch_id, "sent_at": _now_rfc3339(), "records": []}
    ).encode()
    headers = {
        "Authorization": f"Bearer {ctx.secrets.central_token}",
        "Content-Type": "application/json",
        "Idempotency-Key": batch_id,
    }
    target = url + batch_path(node_id)
    timeout = aiohttp.ClientTimeout(total=ctx.options.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sent = time.time()
            async with session.post(target, data=body, headers=headers, ssl=ssl_context or True) as response:
                received = time.time()
                status = response.status
                date = response.headers.get("Date")
                text = await response.text(errors="replace")
    except aiohttp.ClientConnectorCertificateError as exc:
        return [
            *findings,
            _error(
                "central",
                subject,
                f"TLS certificate of {host} not trusted: {_verify_message(exc.certificate_error)}",
                "set central.ca_file to the platform's CA certificate, or install it"
                " (/usr/local/share/ca-certificates/ and update-ca-certificates)",
            ),
        ]
    except aiohttp.ClientSSLError as exc:
        return [
            *findings,
            _error(
                "central",
                subject,
                f"TLS handshake with {host} failed: {exc}",
                "check central.url's port and the platform's TLS settings",
            ),
        ]
    except aiohttp.ClientConnectorError as exc:
        reason = (exc.os_error.strerror or str(exc.os_error)).lower()
        return [
            *findings,
            _error(
                "central",
                subject,
                f"cannot connect to {host}:{port}: {reason}",
                "check central.url and that the firewall lets the node reach it",
            ),
        ]
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = (
            f"no answer within {ctx.options.timeout_s:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
        )
        return [*findings, _error("central", subject, reason, "check central.url and the network path to it")]
    findings.append(_judge_central(status, text, subject, node_id, target))
    findings.append(_judge_skew(date, (sent + received) / 2))
    return findings


def _verify_message(error: Exception) -> str:
    """`self-signed certificate` rather than the whole OpenSSL line with its source position."""
    message = getattr(error, "verify_message", None)
    return message if isinstance(message, str) and message else str(error)


def _now_rfc3339() -> str:
    from hub.records import utc_now  # noqa: PLC0415

    return utc_now()


def _ssl_context(config: HubConfig) -> ssl.SSLContext:
    central = config.central
    context = ssl.create_default_context(cafile=central.ca_file or None)
    if central.cert_file:
        context.load_cert_chain(central.cert_file, central.key_file or None)
    return context


def _error_text(body: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        value = json.loads(body).get("error")
        if isinstance(value, str):
            return value[:200]
    return body.strip()[:200]


def _judge_central(status: int, body: str, subject: str, node_id: str, target: str) -> Finding:
    if status in (401, 403):
        return _error(
            "central",
            subject,
            f"refused the node's token (HTTP {status}: {_error_text(body)})",
            f"set central.token (or central.token_file) to the token issued for node {node_id}",
        )
    if status in (404, 405):
        return _error(
            "central",
            subject,
            f"no batch endpoint at {target} (HTTP {status})",
            "central.url must be the platform's base URL: the hub appends /v1/nodes/{node_id}/batches",
        )
    if 200 <= status < 300:
        return _ok("central", subject, f"token accepted (HTTP {status} for an empty test batch)")
    if status in (400, 413, 422):
        return _ok("central", subject, f"token accepted (HTTP {status} for an empty test batch, as expected)")
    return _warn(
        "central",
        subject,
        f"answered HTTP {status} ({_error_text(body)}); the hub retries such answers",
        "if it persists, ask the platform's operators",
    )


def _judge_skew(date_header: str | None, local: float) -> Finding:
    from hub.status_page import human_duration  # noqa: PLC0415

    if not date_header:
        return _warn("clock", "central", "central sent no Date header: clock skew not checked")
    try:
        server = parsedate_to_datetime(date_header).timestamp() + 0.5  # Date has whole seconds
    except (TypeError, ValueError):
        return _warn("clock", "central", f"unreadable Date header {date_header!r}: clock skew not checked")
    skew = local - server
    if abs(skew) < SKEW_WARN_S:
        return _ok("clock", "central", f"agrees with central's Date header (within {SKEW_WARN_S:.0f} s)")
    direction = "ahead of" if skew > 0 else "behind"
    message = f"the node's clock is {human_duration(abs(skew))} {direction} central's (its Date header)"
    fix = (
        "turn on time sync (timedatectl set-ntp true, or install chrony) and let NTP (UDP 123) reach a time"
        " server; records carry the node's time"
    )
    if abs(skew) >= SKEW_ERROR_S:
        return _error("clock", "central", message, fix)
    return _warn("clock", "central", message, fix)


def _outbox_bytes(data_dir: Path) -> int:
    total = 0
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        with contextlib.suppress(OSError):
            total += (data_dir / name).stat().st_size
    return total


def check_disk(ctx: _Context) -> list[Finding]:
    """Room for the outbox's quota on the disk of `node.data_dir`, and the right to write there."""
    data_dir = Path(ctx.config.node.data_dir)
    subject = str(data_dir)
    existing = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), Path("/"))
    if not ctx.user.may(existing, os.W_OK | os.X_OK):
        what = (
            "" if existing == data_dir else f" (it does not exist yet; {existing} is the nearest directory)"
        )
        return [
            _error(
                "disk",
                subject,
                f"user {ctx.user.name} cannot write there{what}",
                f"install -d -o {ctx.user.name} -m 750 {data_dir}",
            )
        ]
    usage = shutil.disk_usage(existing)
    used = _outbox_bytes(data_dir)
    quota = ctx.config.outbox.max_mb * MIB
    needed = max(0, quota - used)
    free_mb = usage.free // MIB
    if usage.free < needed:
        room = int((usage.free + used) * 0.9) // MIB
        return [
            _error(
                "disk",
                subject,
                f"{free_mb} MB free for the outbox, but outbox.max_mb is {ctx.config.outbox.max_mb} MB"
                f" ({used // MIB} MB used)",
                "free space on that disk, move node.data_dir to a larger disk, or lower outbox.max_mb to at"
                f" most {room} MB",
            )
        ]
    return [
        _ok(
            "disk",
            subject,
            f"{free_mb} MB free, outbox quota {ctx.config.outbox.max_mb} MB ({used // MIB} MB used)",
        )
    ]


def judge_timedatectl(text: str) -> Finding | None:
    """A finding from `timedatectl show` output, or None if it says nothing useful."""
    values = _key_values(text)
    synced = values.get("NTPSynchronized")
    if synced == "yes":
        return _ok("clock", "sync", "synchronized (timedatectl)")
    if synced == "no":
        if values.get("NTP") == "yes":
            return _warn(
                "clock",
                "sync",
                "time sync is on but not synchronized yet (timedatectl)",
                "check that NTP (UDP 123) reaches the time server: timedatectl timesync-status",
            )
        return _warn("clock", "sync", "time sync is off (timedatectl)", "timedatectl set-ntp true")
    return None


def judge_chrony(text: str) -> Finding | None:
    """A finding from `chronyc -n tracking` output, or None."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Leap status":
            if value.strip() == "Normal":
                return _ok("clock", "sync", "synchronized (chrony)")
            return _warn(
                "clock",
                "sync",
                f"chrony is not synchronized ({value.strip()})",
                "check chronyc sources and that NTP (UDP 123) reaches the time servers",
            )
    return None


async def check_timesync(options: DoctorOptions) -> list[Finding]:
    """timedatectl, then chrony, then systemd-timesyncd's flag file; a warning if none can tell."""
    answer = await _command("timedatectl", "show", "-p", "NTP", "-p", "NTPSynchronized")
    if answer is not None and answer[0] == 0 and (finding := judge_timedatectl(answer[1])) is not None:
        return [finding]
    answer = await _command("chronyc", "-n", "tracking")
    if answer is not None and answer[0] == 0 and (finding := judge_chrony(answer[1])) is not None:
        return [finding]
    if options.timesync_flag.exists():
        return [_ok("clock", "sync", f"synchronized (systemd-timesyncd: {options.timesync_flag})")]
    return [
        _warn(
            "clock",
            "sync",
            "cannot tell whether the clock is synchronized (neither timedatectl nor chronyc answered)",
            "install chrony (apt-get install chrony) or enable systemd-timesyncd (timedatectl set-ntp true)",
        )
    ]


def check_watchdog(options: DoctorOptions, unit: UnitInfo | None) -> list[Finding]:
    """hallhub.service is installed, Type=notify, with a WatchdogSec (warnings only)."""
    name = options.unit_name
    if os.environ.get("WATCHDOG_USEC", "").isdigit():
        seconds = int(os.environ["WATCHDOG_USEC"]) / 1e6
        return [_ok("watchdog", name, f"running under systemd with a {seconds:g} s watchdog")]
    if unit is None:
        return [
            _warn(
                "watchdog",
                name,
                "not installed: nothing starts the hub at boot or restarts it when it hangs",
                f"copy systemd/{name} to /etc/systemd/system/,"
                f" then systemctl enable --now {name.removesuffix('.service')}",
            )
        ]
    findings = []
    if unit.type != "notify":
        findings.append(
            _warn(
                "watchdog",
                name,
                f"Type={unit.type or 'simple'} in {unit.source}:"
                " the hub's READY and watchdog pings are ignored",
                "set Type=notify under [Service], then systemctl daemon-reload",
            )
        )
    if not unit.watchdog:
        findings.append(
            _warn(
                "watchdog",
                name,
                f"no WatchdogSec in {unit.source}: a hung hub is not restarted",
                "add WatchdogSec=30s under [Service], then systemctl daemon-reload",
            )
        )
    if not findings:
        findings.append(_ok("watchdog", name, f"Type=notify, WatchdogSec={unit.watchdog} ({unit.source})"))
    return findings


# -- running -------------------------------------------------------------------------------------


async def _guarded(
    name: str, subject: str, timeout_s: float, check: Awaitable[list[Finding]]
) -> list[Finding]:
    """Run one check under its timeout; a crash or a timeout becomes an error finding."""
    try:
        async with asyncio.timeout(timeout_s):
            return await check
    except TimeoutError:
        return [
            _error(
                name, subject, f"no answer within {timeout_s:.0f} s", "see the other lines; run doctor again"
            )
        ]
    except Exception as exc:
        return [
            _error(
                name, subject, f"check failed: {type(exc).__name__}: {exc}", "report this to the hallhub team"
            )
        ]


def _serial_groups(config: HubConfig) -> list[list[DeviceSection]]:
    """Serial devices grouped by port (keypads on one RS-485 line share it), in config order."""
    groups: dict[str, list[DeviceSection]] = {}
    for device in config.device:
        if device.transport == "serial" and device.port:
            key = device.port if device.kind == "keypad" else f"{device.port}#{device.id}"
            groups.setdefault(key, []).append(device)
    return list(groups.values())


async def _skipped(finding: Finding) -> list[Finding]:
    """A skipped check, in the place of its findings among the concurrent checks."""
    return [finding]


async def run_doctor(options: DoctorOptions) -> Report:
    """Run every check and return the (scrubbed) report.

    An invalid config does not stop doctor: its errors are those of `hallhub config check`, and
    every check that does not need an invalid section still runs; the others are reported skipped,
    with the keys they are waiting for.
    """
    started = time.monotonic()
    scrub = Scrubber()
    view, findings = check_config(options.config_path)
    unit = await find_unit(options)
    try:
        user = service_user(options, unit)
    except KeyError:
        user = ServiceUser.current()
        findings.append(
            _error("user", options.user or "-", "no such account", "pass an existing account with --user")
        )
    report = Report(str(options.config_path), f"{user.name} ({user.source})")
    t = options.timeout_s
    checks: list[Awaitable[list[Finding]]] = []
    ctx: _Context | None = None
    config = view.config
    if config is not None:
        secrets, unreadable, secret_findings = check_secrets(config)
        findings += secret_findings
        invalid = set(view.broken)  # sections whose values are not the file's (named "-" below)
        view = view.with_broken(unreadable)
        scrub.add(secrets.broker_password, secrets.pull_token, secrets.central_token)
        scrub.add(secrets.control_token, secrets.view_token)
        ctx = _Context(options, config, secrets, user, unit, scrub, view.device_indexes)
        why = view.why_not("node")
        findings += [_skip("secret", "-", why)] if why else check_node_secret(ctx)
        why = view.why_not("privacy")
        findings += [_skip("crypto", "SM3/SM4", why)] if why else check_crypto(config)
        for section, name in view.left_out.items():  # invalid devices are not probed
            findings.append(_skip("device", name, view.why_not(section) or ""))
        for group in _serial_groups(config):
            extra = KEYPAD_TRIES * KEYPAD_ACK_TIMEOUT_S * 2 * len(group)
            checks.append(
                _guarded("port", ",".join(d.id for d in group), t + extra, check_serial(ctx, group))
            )
        for device in config.device:
            if device.transport == "pcsc":
                checks.append(_guarded("pcsc", device.id, t + 1, check_pcsc(ctx, device)))
            elif device.transport == "camera":
                checks.append(_guarded("camera", device.id, t + 1, check_camera(ctx, device)))
        broker = f"{config.broker.host}:{config.broker.port}"
        if why := view.why_not("node", "broker"):
            checks.append(_skipped(_skip("broker", "-" if "broker" in invalid else broker, why)))
        else:
            checks.append(_guarded("broker", broker, t + 1, check_broker(ctx)))
        if why := view.why_not("node", "central"):
            subject = "-" if "central" in invalid else config.central.url or "-"
            checks.append(_skipped(_skip("central", subject, why)))
        else:
            checks.append(_guarded("central", config.central.url or "-", 2 * t + 1, check_central(ctx)))
    else:
        needing_config = ("secret", "crypto", "device", "broker", "central", "disk")
        findings += [
            _skip(check, "SM3/SM4" if check == "crypto" else "-", view.unusable) for check in needing_config
        ]
    # The clock and the unit do not depend on the config: checked even when it is broken.
    checks.append(_guarded("clock", "sync", t, check_timesync(options)))
    for result in await asyncio.gather(*checks):
        findings += result
    if ctx is not None:
        if why := view.why_not("node", "outbox"):
            findings.append(_skip("disk", "-" if "node" in invalid else ctx.config.node.data_dir, why))
        else:
            findings += check_disk(ctx)
        if view.valid:
            report.config = scrub.deep(redact(ctx.config.model_dump(mode="json")))
    findings += check_watchdog(options, unit)
    report.findings = [scrub.finding(f) for f in findings]
    report.elapsed_s = time.monotonic() - started
    return report


def main(config_path: Path, *, as_json: bool, user: str | None, timeout_s: float) -> int:
    """`hallhub doctor`: print the report (text or JSON) and return the exit code."""
    # The findings say everything; the drivers' own log lines would only repeat them out of order.
    logging.getLogger().addHandler(logging.NullHandler())
    options = DoctorOptions(config_path=config_path, user=user, timeout_s=timeout_s)
    report = asyncio.run(run_doctor(options))
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), ensure_ascii=False, indent=2) + "\n")
        return report.exit_code
    from rich.console import Console  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415

    console = Console(highlight=False, soft_wrap=True)
    colours = {Level.OK: "green", Level.WARNING: "yellow", Level.ERROR: "bold red", Level.SKIPPED: "cyan"}
    console.print(f"hallhub doctor {__version__}: {config_path}, permissions checked for user {report.user}")
    for finding in report.findings:
        label = _LABELS[finding.level]
        rest = escape(finding.line()[len(label) :])
        console.print(f"[{colours[finding.level]}]{label}[/]{rest}")
    console.print(report.summary())
    return report.exit_code


__all__ = [
    "REDACTED",
    "TO_REDACT",
    "DoctorOptions",
    "Finding",
    "Level",
    "Report",
    "Scrubber",
    "ServiceUser",
    "in_daemon_thread",
    "judge_chrony",
    "judge_timedatectl",
    "main",
    "redact",
    "run_doctor",
]
