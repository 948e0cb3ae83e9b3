"""Probe QR scanners for `hallhub doctor`: a serial scanner's port opens; a camera gives one frame.

A serial scanner only talks when it reads a code, so its port is all a probe can check. A camera's
frame is neither decoded nor kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import serial

from drivers.probe import ProbeResult, ProbeStatus, describe_open_error, in_daemon_thread
from drivers.registry import serial_baud

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DeviceProbe

__all__ = ["camera_source", "probe_camera", "probe_camera_config", "probe_serial", "probe_serial_config"]


async def probe_serial(port: str, *, baud: int, timeout_s: float) -> ProbeResult:
    """Open the scanner's port exclusively and close it again: OK, or UNAVAILABLE with the reason."""

    def open_close() -> None:
        handle = serial.serial_for_url(port, baudrate=baud, timeout=0, exclusive=True)
        handle.close()

    try:
        await in_daemon_thread(open_close, timeout_s)
    except OSError as exc:
        return ProbeResult(ProbeStatus.UNAVAILABLE, describe_open_error(exc))
    except ValueError as exc:
        return ProbeResult(ProbeStatus.UNAVAILABLE, str(exc))
    return ProbeResult(ProbeStatus.OK)


async def probe_camera(source: int | str, *, timeout_s: float) -> ProbeResult:
    """Read one frame from a camera index, stream URL or video file.

    ABSENT for a local file that is not there; SILENT without a frame within `timeout_s`;
    UNAVAILABLE if the capture does not open or gives no frame; OK with `width` and `height`.
    """
    if _missing_file(source):
        return ProbeResult(ProbeStatus.ABSENT)
    try:
        size = await in_daemon_thread(lambda: _grab_frame(source), timeout_s)
    except TimeoutError:
        return ProbeResult(ProbeStatus.SILENT)
    if size is None:
        return ProbeResult(ProbeStatus.UNAVAILABLE)
    return ProbeResult(ProbeStatus.OK, facts={"width": str(size[0]), "height": str(size[1])})


def _grab_frame(source: int | str) -> tuple[int, int] | None:
    """Open a capture, read one frame, release it; (width, height) or None. Runs on a thread."""
    # OpenCV is tens of MB: loaded only when a camera is probed; the camera driver's module sets
    # its log level, so that OpenCV's own warnings do not reach the technician's screen.
    import cv2  # noqa: PLC0415

    import drivers.qr.camera  # noqa: F401, PLC0415

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


def camera_source(device: DeviceConfig) -> int | str:
    """A camera's configured source: a device index as an int, a file or URL as it is."""
    text = device.source or ""
    return int(text) if text.isdigit() else text


async def probe_serial_config(devices: Sequence[DeviceConfig], *, timeout_s: float) -> ProbeResult:
    """The registry's probe: one configured serial `qr` scanner."""
    (device,) = devices
    return await probe_serial(device.port or "", baud=serial_baud(device), timeout_s=timeout_s)


async def probe_camera_config(devices: Sequence[DeviceConfig], *, timeout_s: float) -> ProbeResult:
    """The registry's probe: one configured `qr` camera."""
    (device,) = devices
    return await probe_camera(camera_source(device), timeout_s=timeout_s)


if TYPE_CHECKING:
    _PROBE_SERIAL_CONFIG: DeviceProbe = probe_serial_config  # the registry's probe shape, checked by mypy
    _PROBE_CAMERA_CONFIG: DeviceProbe = probe_camera_config  # the registry's probe shape, checked by mypy
