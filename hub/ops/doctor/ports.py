"""Serial devices: the port exists and the service user may open it, then the device's own driver
probes it (PING for keypads, SAM status `11 FF` for ID-card readers, open and close for QR scanners).

Run doctor while the hub is stopped: the hub holds its serial ports exclusively.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from drivers.probe import ProbeResult
from drivers.registry import REGISTRY, entry_for, serial_baud
from hub.config import DeviceSection, HubConfig
from hub.ops.doctor.access import group_name, owner_name
from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.report import Finding

__all__ = ["check_port_access", "check_serial", "open_fix", "serial_groups", "time_allowed_s"]


def serial_groups(config: HubConfig) -> list[list[DeviceSection]]:
    """Serial devices grouped by port (keypads on one RS-485 line share it), in config order."""
    groups: dict[str, list[DeviceSection]] = {}
    for device in config.device:
        entry = entry_for(device)
        if device.transport == "serial" and device.port and entry is not None:
            key = device.port if entry.shares_port else f"{device.port}#{device.id}"
            groups.setdefault(key, []).append(device)
    return list(groups.values())


def time_allowed_s(devices: Sequence[DeviceSection], timeout_s: float) -> float:
    """How long the check of one port may take: the open, plus time for every PING on a keypad line
    (and the same margin for one device on the other ports)."""
    from drivers.keypad.probe import time_needed_s  # noqa: PLC0415 (drivers load only for doctor's checks)

    return time_needed_s(timeout_s, len(devices))


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


_DEVICE_NAMES = {"keypad": "evaluation keypad", "idcard": "ID card reader", "qr": "QR scanner"}
"""What a technician calls each kind of serial device."""


def _what(devices: Sequence[DeviceSection]) -> str:
    """The device(s) on one port as a technician names them: `the ID card reader id-07`."""
    name = _DEVICE_NAMES.get(devices[0].kind, f"{devices[0].kind} device")
    if len(devices) > 1:
        return f"the line of the {name}s {', '.join(d.id for d in devices)}"
    return f"the {name} {devices[0].id}"


def check_port_access(ctx: CheckContext, devices: Sequence[DeviceSection]) -> list[Finding]:
    """The port exists and the service user may read and write it (empty list: all good)."""
    port = devices[0].port or ""
    subject = ",".join(d.id for d in devices)
    keys = " / ".join(f"device[{ctx.index(d)}].port" for d in devices)
    if "://" in port:  # a pyserial URL (socket://, rfc2217://): nothing on disk to check
        return []
    if not Path(port).exists():
        what = f"{port} does not exist"
        if Path(port).is_symlink():
            what = f"{port} points to {Path(port).readlink()}, which does not exist"
        return [
            Finding.error(
                "port",
                subject,
                what,
                f"plug in {_what(devices)}, or set {keys} to the right port"
                f" ({_ports_present(ctx.options.serial_dirs)})",
            )
        ]
    real = os.path.realpath(port)
    if not ctx.user.may(real, os.R_OK | os.W_OK):
        info = Path(real).stat()
        group = group_name(info.st_gid)
        shown = f"{port} ({real})" if real != port else port
        detail = f"{stat.filemode(info.st_mode)} {owner_name(info.st_uid)}:{group}"
        if (info.st_mode >> 3) & 6 == 6:
            fix = f"usermod -aG {group} {ctx.user.name}, then restart the hub"
        else:
            fix = (
                'give the device GROUP="dialout", MODE="0660" with a udev rule (see'
                f" config/udev/99-hallhub.rules) and add {ctx.user.name} to group dialout"
            )
        return [
            Finding.error(
                "port",
                subject,
                f"{shown} is not readable and writable by user {ctx.user.name} ({detail})",
                fix,
            )
        ]
    return []


def open_fix(reason: str, port: str) -> str:
    """What to do about a port that does not open, by the reason it gave."""
    if "lock" in reason or "busy" in reason or "in use" in reason:
        return f"stop the hub first (systemctl stop hallhub), or find what holds the port: fuser -v {port}"
    if "permission" in reason.lower():
        return "add the hub's user to the port's group (usually dialout), then log in again"
    return "check the adapter (dmesg | tail) and the port in the config"


def _not_open(subject: str, port: str, reason: str) -> Finding:
    """The error for a port that does not open, with the fix its reason calls for."""
    return Finding.error("port", subject, f"cannot open {port}: {reason}", open_fix(reason, port))


async def _probe(ctx: CheckContext, devices: Sequence[DeviceSection]) -> ProbeResult:
    """Probe the devices on one port through their registry entry (the driver's own probe)."""
    return await REGISTRY[(devices[0].kind, devices[0].transport)].load_probe()(
        devices, timeout_s=ctx.options.timeout_s
    )


async def _check_keypads(ctx: CheckContext, devices: Sequence[DeviceSection]) -> list[Finding]:
    """Open the keypad line with the hub's own driver and PING every keypad on it."""
    from drivers.keypad.probe import PING_TRIES  # noqa: PLC0415

    port = devices[0].port or ""
    baud = serial_baud(devices[0])
    subject = ",".join(d.id for d in devices)
    addresses = [d.address or 1 for d in devices]
    result = await _probe(ctx, devices)
    if not result.ok:
        return [_not_open(subject, port, result.detail)]
    findings = [Finding.ok("port", subject, f"{port} opens at {baud} baud")]
    for device, address in zip(devices, addresses, strict=True):
        where = f"address {address} on {port}"
        unit = result.units[str(address)]
        if not unit.ok:
            findings.append(
                Finding.error(
                    "keypad",
                    device.id,
                    f"did not answer PING at {where} ({PING_TRIES} tries)",
                    "check the keypad's power and cable, its address"
                    f" (device[{ctx.index(device)}].address ="
                    f" {address}) and baud rate ({baud}); on RS-485 check that A and B are not swapped",
                )
            )
            continue
        firmware = unit.facts.get("firmware")
        shown = f" (firmware {firmware})" if firmware else ""
        findings.append(Finding.ok("keypad", device.id, f"answered PING at {where}{shown}"))
    return findings


async def _check_idcard(ctx: CheckContext, devices: Sequence[DeviceSection]) -> list[Finding]:
    """Open the SAM reader and ask for its status (`11 FF`); no card is read."""
    (device,) = devices
    from drivers.idcard.probe import SAM_STATUS_TIMEOUT_S  # noqa: PLC0415
    from drivers.probe import ProbeStatus  # noqa: PLC0415

    port = device.port or ""
    baud = serial_baud(device)
    result = await _probe(ctx, [device])
    if result.status is ProbeStatus.UNAVAILABLE:
        return [_not_open(device.id, port, result.detail)]
    opened = Finding.ok("port", device.id, f"{port} opens at {baud} baud")
    if result.status is ProbeStatus.SILENT:
        answer = Finding.error(
            "idcard",
            device.id,
            f"no answer to SAM status (11 FF) on {port} within {SAM_STATUS_TIMEOUT_S:.0f} s",
            f"check the reader's power and cable and its baud rate (device[{ctx.index(device)}].baud;"
            " SAM readers default to 115200)",
        )
    elif result.status is ProbeStatus.UNREADABLE:
        answer = Finding.error(
            "idcard", device.id, f"unreadable answer to SAM status: {result.detail}", "check the baud rate"
        )
    elif result.ok:
        answer = Finding.ok("idcard", device.id, f"SAM status {result.detail}")
    else:
        answer = Finding.error(
            "idcard",
            device.id,
            f"SAM status {result.detail}",
            "power the reader off and on; if it persists, the reader's SAM module needs its vendor",
        )
    return [opened, answer]


async def _check_serial_qr(ctx: CheckContext, devices: Sequence[DeviceSection]) -> list[Finding]:
    """A serial QR scanner only talks when it reads a code: check that the port opens."""
    (device,) = devices
    port = device.port or ""
    baud = serial_baud(device)
    result = await _probe(ctx, [device])
    if not result.ok:
        return [_not_open(device.id, port, result.detail)]
    return [
        Finding.ok("port", device.id, f"{port} opens at {baud} baud (scan a code to test the scanner itself)")
    ]


_FINDINGS: dict[str, Callable[[CheckContext, Sequence[DeviceSection]], Awaitable[list[Finding]]]] = {
    "keypad": _check_keypads,
    "idcard": _check_idcard,
}
"""How a probe's result reads for a technician, by kind (doctor knows the config keys and the fixes);
a serial device of any other kind gets the plain "the port opens" reading."""


async def check_serial(ctx: CheckContext, devices: Sequence[DeviceSection]) -> list[Finding]:
    """Access, open and protocol for one serial port (a keypad line may carry several keypads)."""
    problems = check_port_access(ctx, devices)
    if problems:
        return problems
    findings = _FINDINGS.get(devices[0].kind, _check_serial_qr)
    return await findings(ctx, devices)
