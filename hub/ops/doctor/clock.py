"""The clock: synchronised (timedatectl, chrony or systemd-timesyncd), and close to central's clock.

Records carry the node's time, so a clock that is off makes every record's time wrong.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Final

from hub.ops.doctor.base import DoctorOptions, key_values, run_command
from hub.ops.doctor.report import Finding

__all__ = ["SKEW_ERROR_S", "SKEW_WARN_S", "check_timesync", "judge_chrony", "judge_skew", "judge_timedatectl"]

SKEW_WARN_S: Final = 5.0
SKEW_ERROR_S: Final = 60.0


def judge_timedatectl(text: str) -> Finding | None:
    """A finding from `timedatectl show` output, or None if it says nothing useful."""
    values = key_values(text)
    synced = values.get("NTPSynchronized")
    if synced == "yes":
        return Finding.ok("clock", "sync", "synchronized (timedatectl)")
    if synced == "no":
        if values.get("NTP") == "yes":
            return Finding.warn(
                "clock",
                "sync",
                "time sync is on but not synchronized yet (timedatectl)",
                "check that NTP (UDP 123) reaches the time server: timedatectl timesync-status",
            )
        return Finding.warn("clock", "sync", "time sync is off (timedatectl)", "timedatectl set-ntp true")
    return None


def judge_chrony(text: str) -> Finding | None:
    """A finding from `chronyc -n tracking` output, or None."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Leap status":
            if value.strip() == "Normal":
                return Finding.ok("clock", "sync", "synchronized (chrony)")
            return Finding.warn(
                "clock",
                "sync",
                f"chrony is not synchronized ({value.strip()})",
                "check chronyc sources and that NTP (UDP 123) reaches the time servers",
            )
    return None


async def check_timesync(options: DoctorOptions) -> list[Finding]:
    """timedatectl, then chrony, then systemd-timesyncd's flag file; a warning if none can tell."""
    answer = await run_command("timedatectl", "show", "-p", "NTP", "-p", "NTPSynchronized")
    if answer is not None and answer[0] == 0 and (finding := judge_timedatectl(answer[1])) is not None:
        return [finding]
    answer = await run_command("chronyc", "-n", "tracking")
    if answer is not None and answer[0] == 0 and (finding := judge_chrony(answer[1])) is not None:
        return [finding]
    if options.timesync_flag.exists():
        return [Finding.ok("clock", "sync", f"synchronized (systemd-timesyncd: {options.timesync_flag})")]
    return [
        Finding.warn(
            "clock",
            "sync",
            "cannot tell whether the clock is synchronized (neither timedatectl nor chronyc answered)",
            "install chrony (apt-get install chrony) or enable systemd-timesyncd (timedatectl set-ntp true)",
        )
    ]


def judge_skew(date_header: str | None, local: float) -> Finding:
    """The node's clock against a server's `Date` header, read at `local` (seconds since the epoch)."""
    from hub.api.status_page import human_duration  # noqa: PLC0415 (the web side loads only when central answered)

    if not date_header:
        return Finding.warn("clock", "central", "central sent no Date header: clock skew not checked")
    try:
        server = parsedate_to_datetime(date_header).timestamp() + 0.5  # Date has whole seconds
    except (TypeError, ValueError):
        return Finding.warn(
            "clock", "central", f"unreadable Date header {date_header!r}: clock skew not checked"
        )
    skew = local - server
    if abs(skew) < SKEW_WARN_S:
        return Finding.ok(
            "clock", "central", f"agrees with central's Date header (within {SKEW_WARN_S:.0f} s)"
        )
    direction = "ahead of" if skew > 0 else "behind"
    message = f"the node's clock is {human_duration(abs(skew))} {direction} central's (its Date header)"
    fix = (
        "turn on time sync (timedatectl set-ntp true, or install chrony) and let NTP (UDP 123) reach a time"
        " server; records carry the node's time"
    )
    if abs(skew) >= SKEW_ERROR_S:
        return Finding.error("clock", "central", message, fix)
    return Finding.warn("clock", "central", message, fix)
