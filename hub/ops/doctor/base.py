"""What every family of checks is given: the options of the run, the context of a valid config, and
the small helpers for asking the system (short commands, `KEY=value` output)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from hub.config import DeviceSection, HubConfig, Secrets
    from hub.ops.doctor.access import ServiceUser
    from hub.ops.doctor.systemd import UnitInfo
    from hub.privacy.redact import Scrubber

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SERIAL_DIRS",
    "TIMESYNC_FLAG",
    "UNIT_DIRS",
    "UNIT_NAME",
    "CheckContext",
    "DoctorOptions",
    "key_values",
    "run_command",
]

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
COMMAND_TIMEOUT_S: Final = 2.0


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
class CheckContext:
    """What the checks that need the config get: its usable part, the secrets, whose permissions count."""

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


async def run_command(*argv: str, timeout_s: float = COMMAND_TIMEOUT_S) -> tuple[int, str] | None:
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


def key_values(text: str) -> dict[str, str]:
    """`KEY=value` lines (systemctl show, timedatectl show) as a dict."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values
