"""Running doctor: every check concurrently, each under its timeout; the config's invalid sections
skip only the checks that need them; the report scrubbed of secrets and personal data."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import msgspec

from hub.ops.doctor.access import ServiceUser, service_user
from hub.ops.doctor.base import CheckContext, DoctorOptions
from hub.ops.doctor.broker import check_broker
from hub.ops.doctor.camera import check_camera
from hub.ops.doctor.central import check_central
from hub.ops.doctor.clock import check_timesync
from hub.ops.doctor.config import check_config, check_crypto, check_node_secret, check_secrets
from hub.ops.doctor.disk import check_disk
from hub.ops.doctor.pcsc import check_pcsc
from hub.ops.doctor.ports import check_serial, serial_groups, time_allowed_s
from hub.ops.doctor.report import Finding, Report, print_report
from hub.ops.doctor.systemd import check_watchdog, find_unit
from hub.privacy.redact import Scrubber, redact

__all__ = ["main", "run_doctor"]


async def _guarded(
    name: str, subject: str, timeout_s: float, check: Awaitable[list[Finding]]
) -> list[Finding]:
    """Run one check under its timeout; a crash or a timeout becomes an error finding."""
    try:
        async with asyncio.timeout(timeout_s):
            return await check
    except TimeoutError:
        return [
            Finding.error(
                name, subject, f"no answer within {timeout_s:.0f} s", "see the other lines; run doctor again"
            )
        ]
    except Exception as exc:
        return [
            Finding.error(
                name, subject, f"check failed: {type(exc).__name__}: {exc}", "report this to the hallhub team"
            )
        ]


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
            Finding.error(
                "user", options.user or "-", "no such account", "pass an existing account with --user"
            )
        )
    report = Report(str(options.config_path), f"{user.name} ({user.source})")
    t = options.timeout_s
    checks: list[Awaitable[list[Finding]]] = []
    ctx: CheckContext | None = None
    config = view.config
    if config is not None:
        secrets, unreadable, secret_findings = check_secrets(config)
        findings += secret_findings
        invalid = set(view.broken)  # sections whose values are not the file's (named "-" below)
        view = view.with_broken(unreadable)
        scrub.add(secrets.broker_password, secrets.pull_token, secrets.central_token)
        scrub.add(secrets.control_token, secrets.view_token)
        ctx = CheckContext(options, config, secrets, user, unit, scrub, view.device_indexes)
        why = view.why_not("node")
        findings += [Finding.skip("secret", "-", why)] if why else check_node_secret(ctx)
        why = view.why_not("privacy")
        findings += [Finding.skip("crypto", "SM3/SM4", why)] if why else check_crypto(config)
        for section, name in view.left_out.items():  # invalid devices are not probed
            findings.append(Finding.skip("device", name, view.why_not(section) or ""))
        for group in serial_groups(config):
            subject = ",".join(d.id for d in group)
            checks.append(_guarded("port", subject, time_allowed_s(group, t), check_serial(ctx, group)))
        for device in config.device:
            if device.transport == "pcsc":
                checks.append(_guarded("pcsc", device.id, t + 1, check_pcsc(ctx, device)))
            elif device.transport == "camera":
                checks.append(_guarded("camera", device.id, t + 1, check_camera(ctx, device)))
        broker = f"{config.broker.host}:{config.broker.port}"
        if why := view.why_not("node", "broker"):
            checks.append(_skipped(Finding.skip("broker", "-" if "broker" in invalid else broker, why)))
        else:
            checks.append(_guarded("broker", broker, t + 1, check_broker(ctx)))
        if why := view.why_not("node", "central"):
            subject = "-" if "central" in invalid else config.central.url or "-"
            checks.append(_skipped(Finding.skip("central", subject, why)))
        else:
            checks.append(_guarded("central", config.central.url or "-", 2 * t + 1, check_central(ctx)))
    else:
        needing_config = ("secret", "crypto", "device", "broker", "central", "disk")
        findings += [
            Finding.skip(check, "SM3/SM4" if check == "crypto" else "-", view.unusable)
            for check in needing_config
        ]
    # The clock and the unit do not depend on the config: checked even when it is broken.
    checks.append(_guarded("clock", "sync", t, check_timesync(options)))
    for result in await asyncio.gather(*checks):
        findings += result
    if ctx is not None:
        if why := view.why_not("node", "outbox"):
            findings.append(Finding.skip("disk", "-" if "node" in invalid else ctx.config.node.data_dir, why))
        else:
            findings += check_disk(ctx)
        if view.valid:
            report.config = redact(msgspec.to_builtins(ctx.config), text=scrub)
    findings += check_watchdog(options, unit)
    report.findings = [finding.scrubbed(scrub) for finding in findings]
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
    else:
        print_report(report, str(config_path))
    return report.exit_code
