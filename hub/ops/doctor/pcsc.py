"""PC/SC card readers: pcscd answers and the configured reader is attached (the driver's own probe).

pcscd decides who may use a reader, so this is judged as the user doctor runs as.
"""

from __future__ import annotations

from hub.config import DeviceSection
from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.report import Finding

__all__ = ["check_pcsc"]


async def check_pcsc(ctx: CheckContext, device: DeviceSection) -> list[Finding]:
    """pcscd answers and the configured reader (or any reader) is attached."""
    from drivers.probe import ProbeStatus  # noqa: PLC0415 (drivers load only for doctor's checks)
    from drivers.registry import REGISTRY  # noqa: PLC0415

    wanted = (device.reader or "").strip()
    try:
        probe = REGISTRY[(device.kind, device.transport)].load_probe()
        result = await probe([device], timeout_s=ctx.options.timeout_s)
    except ImportError as exc:
        return [
            Finding.error(
                "pcsc", device.id, f"pyscard is not usable: {exc}", "apt-get install pcscd libpcsclite1"
            )
        ]
    if result.status is ProbeStatus.UNAVAILABLE:
        return [
            Finding.error(
                "pcsc", device.id, result.detail, "apt-get install pcscd; systemctl enable --now pcscd"
            )
        ]
    if not result.ok:
        present = result.facts.get("readers") or "none"
        what = f'no reader matching "{wanted}"' if wanted else "no PC/SC reader attached"
        return [
            Finding.error(
                "pcsc",
                device.id,
                f"{what} (readers present: {present})",
                "plug the reader in (check with pcsc_scan), or set"
                f" device[{ctx.index(device)}].reader to part of"
                " its name",
            )
        ]
    return [Finding.ok("pcsc", device.id, f"pcscd answers; reader {result.facts['reader']}")]
