"""The config and its secrets: the file judged as `config check` judges it, the secret files, the node
secret and the national crypto.

An invalid config does not stop doctor: `ConfigView` keeps the file's valid sections so that every
check which does not need an invalid one still runs; the others are reported skipped.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from hub.config import (
    ConfigError,
    ConfigProblem,
    HubConfig,
    Secrets,
    load_config,
    parse_config,
    read_config_document,
    read_secrets,
)
from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.report import Finding, Level, plural
from hub.privacy.redact import TO_REDACT

__all__ = ["ConfigView", "check_config", "check_crypto", "check_node_secret", "check_secrets"]

_PLACEHOLDER_NODE: Final = {"id": "unknown", "hall_code": "000000"}
"""Stands in for an invalid `[node]` so that the other sections stay usable; checks needing it skip."""
_DEVICE_KEY: Final = re.compile(r"device\[([0-9]+)\]")


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
            if leaf in TO_REDACT and ", got " in message:  # the message would show the secret's value
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
    devices = plural(len(config.device), "device")
    view = ConfigView(config, valid=True, device_indexes=tuple(range(len(config.device))))
    return view, [
        Finding.ok("config", str(path), f"node {config.node.id} (hall {config.node.hall_code}), {devices}")
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


def check_node_secret(ctx: CheckContext) -> list[Finding]:
    """The node secret file: present (or creatable), private, well-formed; never shown."""
    from hub.privacy.sealing import SecretFileError, load_or_create_secret  # noqa: PLC0415 (lazy: pulls in crypto)

    path = Path(ctx.config.node.secret_file)
    subject = str(path)
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if ctx.user.may(parent, os.W_OK | os.X_OK):
            return [
                Finding.ok("secret", subject, "not there yet: the hub creates it (mode 0600) at first start")
            ]
        return [
            Finding.error(
                "secret",
                subject,
                f"missing, and user {ctx.user.name} cannot create it in {parent}",
                f"install -d -o {ctx.user.name} -m 700 {path.parent}",
            )
        ]
    if not ctx.user.may(path, os.R_OK):
        return [
            Finding.error(
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
            Finding.error(
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
            Finding.warn("secret", subject, f"readable by other users (mode {mode:04o})", f"chmod 600 {path}")
        ]
    return [Finding.ok("secret", subject, f"present, mode {mode:04o}")]


def check_crypto(config: HubConfig) -> list[Finding]:
    """SM3/SM4 work when the config uses them."""
    if config.privacy.hmac != "sm3" and config.privacy.identity != "encrypted":
        return []
    from hub.privacy.sealing import NationalCryptoUnavailableError, check_national_crypto  # noqa: PLC0415

    try:
        check_national_crypto()
    except NationalCryptoUnavailableError as exc:
        return [
            Finding.error(
                "crypto",
                "SM3/SM4",
                str(exc),
                "install an OpenSSL with the SM algorithms (Debian's libssl3),"
                ' or set privacy.hmac = "sha256"',
            )
        ]
    return [Finding.ok("crypto", "SM3/SM4", "match the standards' test vectors")]
