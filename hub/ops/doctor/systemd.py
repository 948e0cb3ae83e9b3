"""The systemd unit: how doctor finds hallhub.service (for its User= too), and the watchdog check."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hub.ops.doctor.base import DoctorOptions, key_values, run_command
from hub.ops.doctor.report import Finding

__all__ = ["UnitInfo", "check_watchdog", "find_unit"]


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
    """The unit from its keys; a watchdog of 0 or infinity is none."""
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
        answer = await run_command(*argv)
        if answer is not None and answer[0] == 0:
            values = key_values(answer[1])
            if values.get("LoadState") == "loaded":
                return _unit_info("systemctl", values, values.get("WatchdogUSec", ""), "")
    for directory in options.unit_dirs:
        unit = directory / options.unit_name
        if unit.is_file():
            dropins = sorted((directory / f"{options.unit_name}.d").glob("*.conf"))
            values = _parse_unit_files([unit, *dropins])
            return _unit_info(str(unit), values, values.get("WatchdogSec", ""), "simple")
    return None


def check_watchdog(options: DoctorOptions, unit: UnitInfo | None) -> list[Finding]:
    """hallhub.service is installed, Type=notify, with a WatchdogSec (warnings only)."""
    name = options.unit_name
    if os.environ.get("WATCHDOG_USEC", "").isdigit():
        seconds = int(os.environ["WATCHDOG_USEC"]) / 1e6
        return [Finding.ok("watchdog", name, f"running under systemd with a {seconds:g} s watchdog")]
    if unit is None:
        return [
            Finding.warn(
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
            Finding.warn(
                "watchdog",
                name,
                f"Type={unit.type or 'simple'} in {unit.source}:"
                " the hub's READY and watchdog pings are ignored",
                "set Type=notify under [Service], then systemctl daemon-reload",
            )
        )
    if not unit.watchdog:
        findings.append(
            Finding.warn(
                "watchdog",
                name,
                f"no WatchdogSec in {unit.source}: a hung hub is not restarted",
                "add WatchdogSec=30s under [Service], then systemctl daemon-reload",
            )
        )
    if not findings:
        findings.append(
            Finding.ok("watchdog", name, f"Type=notify, WatchdogSec={unit.watchdog} ({unit.source})")
        )
    return findings
