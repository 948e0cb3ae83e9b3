"""Cameras (and streams, and video files) used as QR scanners: one frame, through the driver's probe.

The camera is opened as the user doctor runs as; its frame is neither decoded nor kept.
"""

from __future__ import annotations

from hub.config import DeviceSection
from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.report import Finding

__all__ = ["check_camera"]


async def check_camera(ctx: CheckContext, device: DeviceSection) -> list[Finding]:
    """The camera (or stream, or file) delivers one frame; the frame is not decoded or kept."""
    from drivers.probe import ProbeStatus  # noqa: PLC0415 (drivers load only for doctor's checks)
    from drivers.qr.camera import describe_source  # noqa: PLC0415
    from drivers.qr.probe import camera_source  # noqa: PLC0415
    from drivers.registry import REGISTRY  # noqa: PLC0415

    shown = describe_source(camera_source(device))
    key = f"device[{ctx.index(device)}].source"
    timeout_s = ctx.options.timeout_s
    probe = REGISTRY[(device.kind, device.transport)].load_probe()
    result = await probe([device], timeout_s=timeout_s)
    if result.status is ProbeStatus.ABSENT:
        return [
            Finding.error(
                "camera", device.id, f"{shown} does not exist", f"set {key} to a camera index, file or URL"
            )
        ]
    if result.status is ProbeStatus.SILENT:
        return [
            Finding.error("camera", device.id, f"{shown}: no frame within {timeout_s:.0f} s", f"check {key}")
        ]
    if not result.ok:
        return [
            Finding.error(
                "camera",
                device.id,
                f"cannot read a frame from {shown}",
                f"check the camera's cable and {key} (list cameras with: ls /dev/video*)",
            )
        ]
    size = f"{result.facts['width']}x{result.facts['height']}"
    return [Finding.ok("camera", device.id, f"read one {size} frame from {shown}")]
