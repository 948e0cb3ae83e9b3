"""Simulated QR scanners, for tests, the demo and `hallhub simulate`.

- `SimulatedSerialScanner`: a scanner on the far end of a raw pty pair (`drivers.pty_port`), at a
  stable symlink like a `/dev/serial/by-id/...` path. It can be unplugged (the pty closed and the
  link removed) and plugged back (a new pty pair behind the same link). Codes are encoded with the
  driver's own codec (`encode_scan`).
- `write_qr_video`: a recorded-frames video of QR codes (made with segno) pasted into camera-sized
  frames with rotation, blur and noise, plus frames with no code, for the camera driver to read.

OpenCV, numpy and segno are imported only by the video helpers, so the serial simulator stays light.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from drivers.pty_port import PtyPort
from drivers.qr.codec import SendTerminator, encode_scan

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

_WRITE_TIMEOUT_S = 5.0
_WRITE_RETRY_S = 0.005


class ScannerUnpluggedError(RuntimeError):
    """The simulated scanner was asked to send while unplugged."""


class SimulatedSerialScanner:
    """A serial QR scanner behind a pty, at a stable path; usable as a (sync) context manager."""

    def __init__(self, link: str | os.PathLike[str]) -> None:
        self.port = PtyPort(link)
        self.link = self.port.link

    @property
    def plugged(self) -> bool:
        """True while the pty pair exists and the link points at it."""
        return self.port.plugged

    def plug(self) -> None:
        """Create a new raw pty pair and point the link at its slave side (no-op while plugged)."""
        if not self.port.plugged:
            self.port.plug()

    def unplug(self) -> None:
        """Close the pty pair (the driver's reads fail) and remove the link."""
        self.port.unplug()

    def __enter__(self) -> SimulatedSerialScanner:
        self.plug()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.unplug()

    async def scan(self, text: str, *, terminator: SendTerminator = "cr", encoding: str = "utf-8") -> None:
        """Send one code as a scanner does: the text, then the terminator."""
        await self.send_raw(encode_scan(text, terminator, encoding))

    async def send_unterminated(self, text: str, *, encoding: str = "utf-8") -> None:
        """Send a code with no terminator (the driver's idle timeout must end it)."""
        await self.scan(text, terminator="none", encoding=encoding)

    async def send_garbage(
        self, length: int = 16, *, terminator: SendTerminator = "cr", seed: int | None = None
    ) -> None:
        """Send bytes valid in neither UTF-8 nor GBK (they hold 0xFF), then a terminator."""
        rng = random.Random(seed)
        body = bytearray(rng.choice(range(0x80, 0x100)) for _ in range(max(1, length)))
        body[0] = 0xFF
        await self.send_raw(bytes(body) + encode_scan("", terminator))

    async def send_raw(self, data: bytes, *, chunk_size: int | None = None, gap_s: float = 0.0) -> None:
        """Write bytes to the line, optionally in chunks with a pause between them."""
        size = chunk_size or len(data) or 1
        for offset in range(0, len(data), size):
            if offset and gap_s > 0:
                await asyncio.sleep(gap_s)
            await self._write_all(data[offset : offset + size])

    async def _write_all(self, data: bytes) -> None:
        """Write without blocking the loop; give up after a few seconds if nobody reads."""
        deadline = time.monotonic() + _WRITE_TIMEOUT_S
        view = memoryview(data)
        while view:
            if not self.port.plugged:
                raise ScannerUnpluggedError(f"simulated scanner at {self.link} is unplugged")
            try:
                written = os.write(self.port.master_fd, view)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    message = f"nobody reads the simulated scanner at {self.link}"
                    raise TimeoutError(message) from None
                await asyncio.sleep(_WRITE_RETRY_S)
                continue
            view = view[written:]


async def run_simulated_scanner(
    link: str | os.PathLike[str],
    codes: Sequence[str],
    *,
    interval_s: float = 1.0,
    terminator: SendTerminator = "cr",
    encoding: str = "utf-8",
    start_delay_s: float = 1.0,
    rounds: int = 1,
    hold_s: float = 1.0,
) -> None:
    """Plug a simulated scanner in at `link`, scan `codes` `rounds` times, then unplug it.

    `start_delay_s` gives the hub time to open the port (a serial port drops what arrived before
    it was opened); `hold_s` keeps the port up after the last code so the hub reads it.
    """
    with SimulatedSerialScanner(link) as scanner:
        await asyncio.sleep(start_delay_s)
        for _ in range(max(0, rounds)):
            for code in codes:
                await scanner.scan(code, terminator=terminator, encoding=encoding)
                await asyncio.sleep(interval_s)
        await asyncio.sleep(hold_s)


def render_qr(text: str, *, module_px: int = 4, border_modules: int = 4) -> NDArray[np.uint8]:
    """A QR code (segno, error level M, never Micro QR) as a grayscale image with a quiet zone."""
    import numpy as np  # noqa: PLC0415  (heavy: only the video helpers need it)
    import segno  # noqa: PLC0415  (a test/simulation dependency, not needed by the hub)

    qr = segno.make_qr(text, error="m")
    modules = np.array(qr.matrix, dtype=np.uint8)
    image = np.where(modules > 0, 0, 255).astype(np.uint8)
    image = np.pad(image, border_modules, constant_values=255)
    return np.kron(image, np.ones((module_px, module_px), dtype=np.uint8))


def render_frame(
    text: str | None,
    size: tuple[int, int],
    rng: np.random.Generator,
    *,
    code_fraction: float = 0.4,
    max_angle_deg: float = 15.0,
    max_blur_sigma: float = 1.0,
    noise_sigma: float = 6.0,
) -> NDArray[np.uint8]:
    """One BGR camera frame of `size` (width, height): a textured background, optionally a code.

    The code spans about `code_fraction` of the frame height, is rotated by up to
    `max_angle_deg`, placed at a random spot, then the frame is blurred and noised.
    """
    import cv2  # noqa: PLC0415  (heavy: only the video helpers need it)
    import numpy as np  # noqa: PLC0415

    width, height = size
    gradient = np.linspace(110, 190, width, dtype=np.float32)[np.newaxis, :]
    frame = np.repeat(gradient, height, axis=0)
    frame += (
        rng.normal(0.0, 12.0, (height // 16 + 1, width // 16 + 1))
        .astype(np.float32)
        .repeat(16, axis=0)
        .repeat(16, axis=1)[:height, :width]
    )
    if text is not None:
        probe = render_qr(text, module_px=1)
        module_px = max(2, int(height * code_fraction) // probe.shape[0])
        code = render_qr(text, module_px=module_px)
        angle = float(rng.uniform(-max_angle_deg, max_angle_deg))
        side = code.shape[0]
        radians = math.radians(angle)
        rotated_side = math.ceil(side * (abs(math.cos(radians)) + abs(math.sin(radians))))
        shift = (rotated_side - side) / 2
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        matrix[:, 2] += shift
        patch = cv2.warpAffine(
            code,
            matrix,
            (rotated_side, rotated_side),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=255,
        )
        top = int(rng.integers(0, max(1, height - rotated_side)))
        left = int(rng.integers(0, max(1, width - rotated_side)))
        frame[top : top + rotated_side, left : left + rotated_side] = patch[: height - top, : width - left]
    sigma = float(rng.uniform(0.0, max_blur_sigma))
    if sigma > 0.05:
        frame = np.asarray(cv2.GaussianBlur(frame, (0, 0), sigma), dtype=np.float32)
    frame += rng.normal(0.0, noise_sigma, frame.shape).astype(np.float32)
    gray = np.clip(frame, 0, 255).astype(np.uint8)
    return np.asarray(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


def frame_plan(
    codes: Sequence[str], *, frames_per_code: int = 3, gap_frames: int = 12, lead_frames: int = 2
) -> list[str | None]:
    """Which code each frame shows: a blank lead-in, then each code on a few frames, then a gap."""
    plan: list[str | None] = [None] * lead_frames
    for code in codes:
        plan += [code] * frames_per_code
        plan += [None] * gap_frames
    return plan


def write_qr_video(
    path: str | os.PathLike[str],
    plan: Sequence[str | None],
    *,
    size: tuple[int, int] = (640, 480),
    fps: float = 10.0,
    seed: int = 0,
    fourcc: str = "MJPG",
    distort: bool = True,
) -> Path:
    """Write one frame per `plan` entry (a code, or None for no code) to a video file.

    MJPG in an .avi container is what this OpenCV build (FFmpeg backend) writes and reads back
    reliably; `distort=False` renders codes upright with no blur or noise.
    """
    import cv2  # noqa: PLC0415  (heavy: only the video helpers need it)
    import numpy as np  # noqa: PLC0415

    target = Path(path)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {fourcc} video to {target}")
    try:
        for text in plan:
            if distort:
                frame = render_frame(text, size, rng)
            else:
                frame = render_frame(text, size, rng, max_angle_deg=0.0, max_blur_sigma=0.0, noise_sigma=0.0)
            writer.write(frame)
    finally:
        writer.release()
    return target
