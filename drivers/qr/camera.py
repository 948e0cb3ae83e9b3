"""Camera QR scanner: OpenCV capture and decoding on one worker thread, paced, with reopen.

Every OpenCV call (open, read, release) and every decode runs on the driver's single worker thread,
so the event loop never blocks on a slow camera or a large frame, and the capture handle is only
ever touched by one thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit, urlunsplit

import cv2

from drivers.base import DeviceOffline, DeviceOnline, EventSink, Outcome
from drivers.qr.decoders import DecodedCode, DecoderName, QrDecoder, Roi, make_decoder
from drivers.qr.dedupe import PresenceTracker
from drivers.qr.events import CodeScanned
from drivers.reopen import SHORT_SESSION_S, check_backoff, open_with_backoff

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from drivers.registry import DeviceConfig, DriverContext, DriverFactory

_log = logging.getLogger(__name__)

# OpenCV's own warnings ("[ WARN:0@0.019] global cap_v4l.cpp:915 open VIDEOIO(V4L2:/dev/video0): can't
# open camera by index") go straight to stderr, around the driver's and doctor's own words for the
# same failure: keep only its errors.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

T = TypeVar("T")

_LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "/dev/video")
_CLOSE_TIMEOUT_S = 5.0


class CameraLostError(Exception):
    """The capture could not be opened, or stopped delivering frames; the text says why."""


def _parse_source(source: int | str | os.PathLike[str]) -> int | str:
    """A device index stays an int (also when written as a digit string); anything else a str."""
    if isinstance(source, int):
        return source
    text = os.fspath(source)
    return int(text) if text.isdigit() else text


def describe_source(source: int | str) -> str:
    """The source as shown to people: a stream URL's user name and password are masked."""
    if isinstance(source, int):
        return f"camera index {source}"
    parts = urlsplit(source)
    if parts.scheme and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    return source


def _is_live(source: int | str) -> bool:
    """Cameras and streams are live; anything else is taken to be a recorded video file."""
    return isinstance(source, int) or source.startswith(_LIVE_PREFIXES)


class _Capture:
    """The OpenCV side of the driver. Every method runs on the driver's worker thread."""

    def __init__(self, source: int | str, decoder: QrDecoder, *, loop_file: bool) -> None:
        self._source = source
        self._decoder = decoder
        self._live = _is_live(source)
        self._loop_file = loop_file and not self._live
        self._capture: cv2.VideoCapture | None = None
        self._decode_failed = False

    def open(self) -> list[DecodedCode]:
        """Open the source and decode its first frame (a camera that yields none is not open)."""
        self.close()
        if not self._live and not Path(str(self._source)).is_file():
            raise CameraLostError(f"video file {self._source} not found")
        capture = cv2.VideoCapture(self._source)
        if not capture.isOpened():
            capture.release()
            raise CameraLostError(f"cannot open {describe_source(self._source)}")
        if self._live:
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # decode the newest frame, not a stale one
        self._capture = capture
        try:
            return self.step()
        except CameraLostError:
            self.close()
            raise

    def step(self) -> list[DecodedCode]:
        """Read one frame, convert it to grayscale and decode it."""
        if self._capture is None:
            raise CameraLostError("camera is not open")
        ok, frame = self._capture.read()
        if not ok and self._loop_file:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
        if not ok or frame is None:
            reason = "read failed" if self._live else "end of video file"
            raise CameraLostError(reason)
        gray = _to_gray(frame)
        try:
            return self._decoder.decode(gray)
        except Exception:
            # One frame the decoder cannot handle must not stop the camera; say so once.
            level = logging.DEBUG if self._decode_failed else logging.WARNING
            self._decode_failed = True
            _log.log(level, "QR decoder failed on a frame", exc_info=True)
            return []

    def close(self) -> None:
        """Release the capture (idempotent)."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def _to_gray(frame: cv2.typing.MatLike) -> NDArray[np.uint8]:
    """The decoders take 8-bit grayscale: convert BGR and BGRA frames, pass gray ones through."""
    if frame.ndim == 3 and frame.shape[2] == 4:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    elif frame.ndim == 3:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    else:
        gray = frame
    result: NDArray[np.uint8] = gray.astype("uint8", copy=False)
    return result


class CameraScannerDriver:
    """Reads QR codes from a camera, a stream (RTSP) or a recorded video file.

    Frames are taken at `fps` (paced by a monotonic clock; a slow decode delays the next frame but
    never causes a burst). A code seen on consecutive frames is reported once; it is reported again
    only after it was missing from `gone_frames` frames in a row, or for `gone_s` seconds if set.
    A camera that cannot be opened or stops delivering frames is reported `DeviceOffline` and
    reopened with backoff; for a video file, the end of the file counts as a lost camera unless
    `loop_file` is set, in which case the file is played again from the start.
    """

    def __init__(
        self,
        device_id: str,
        source: int | str | os.PathLike[str],
        fps: float = 5,
        decoder: DecoderName = "zxing",
        roi: Roi | None = None,
        *,
        loop_file: bool = False,
        gone_frames: int = 10,
        gone_s: float | None = None,
        reopen_min_s: float = 1.0,
        reopen_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < fps <= 60:
            raise ValueError(f"fps must be above 0 and at most 60, not {fps}")
        check_backoff(reopen_min_s, reopen_max_s)
        self.device_id = device_id
        self.source = _parse_source(source)
        self._period_s = 1.0 / fps
        self._decoder_name: DecoderName = decoder
        self._roi = roi
        self._loop_file = loop_file
        self._tracker = PresenceTracker(gone_frames=gone_frames, gone_s=gone_s)
        self._reopen_min_s = reopen_min_s
        self._reopen_max_s = reopen_max_s
        self._clock = clock
        self._offline_reported = False
        make_decoder(decoder, roi)  # fail at configuration time on a bad decoder name or roi

    async def run(self, sink: EventSink) -> None:
        """Serve the camera until cancelled, reopening it whenever it is lost."""
        capture = _Capture(
            self.source, make_decoder(self._decoder_name, self._roi), loop_file=self._loop_file
        )
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"qr-camera-{self.device_id}")
        try:
            while True:
                first = await open_with_backoff(
                    lambda: self._on_worker(worker, capture.open),
                    retry_on=(CameraLostError, cv2.error),
                    min_s=self._reopen_min_s,
                    max_s=self._reopen_max_s,
                    on_failure=lambda error, _wait_s: self._report_offline(sink, str(error)),
                )
                self._offline_reported = False
                shown = describe_source(self.source)
                sink.notify(DeviceOnline(self.device_id, detail=shown))
                _log.info("QR camera %s online: %s", self.device_id, shown)
                opened_at = self._clock()
                try:
                    await self._serve(worker, capture, first, sink)
                except (CameraLostError, cv2.error) as error:
                    self._report_offline(sink, str(error))
                await self._on_worker(worker, capture.close)
                if self._clock() - opened_at < SHORT_SESSION_S:
                    await asyncio.sleep(self._reopen_min_s)
        finally:
            await self._shut_down(worker, capture)

    async def _serve(
        self,
        worker: ThreadPoolExecutor,
        capture: _Capture,
        first: list[DecodedCode],
        sink: EventSink,
    ) -> None:
        """Decode frames at the configured rate until the camera is lost."""
        codes = first
        next_at = self._clock()
        while True:
            await self._report(codes, sink)
            next_at = max(next_at + self._period_s, self._clock())
            delay = next_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            codes = await self._on_worker(worker, capture.step)

    async def _report(self, codes: list[DecodedCode], sink: EventSink) -> None:
        symbologies = {code.text: code.symbology for code in codes}
        for text in self._tracker.update(symbologies, self._clock()):
            event = CodeScanned(self.device_id, data=text, symbology=symbologies[text], source="camera")
            outcome = await sink.submit(event)
            if outcome in (Outcome.FAILED, Outcome.REJECTED):
                _log.warning("QR camera %s: hub answered %s", self.device_id, outcome.value)

    async def _on_worker(self, worker: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        """Run one capture call on the worker thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(worker, call)

    async def _shut_down(self, worker: ThreadPoolExecutor, capture: _Capture) -> None:
        """Release the camera on its own thread (after any frame in flight), then stop the thread."""
        released = worker.submit(capture.close)
        worker.shutdown(wait=False)
        try:
            await asyncio.wait_for(asyncio.wrap_future(released), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            _log.warning("QR camera %s: release did not finish in time", self.device_id)
            return
        worker.shutdown(wait=True)  # the thread is idle now: this returns at once

    def _report_offline(self, sink: EventSink, reason: str) -> None:
        """Tell the hub once per outage; later failed attempts are only logged."""
        if self._offline_reported:
            _log.debug("QR camera %s still offline: %s", self.device_id, reason)
            return
        shown = describe_source(self.source)
        _log.warning("QR camera %s offline (%s): %s", self.device_id, shown, reason)
        self._offline_reported = True
        sink.notify(DeviceOffline(self.device_id, reason=reason))


def from_config(devices: Sequence[DeviceConfig], context: DriverContext) -> CameraScannerDriver:
    """The registry's factory: the driver of one configured `qr` camera."""
    del context  # a camera sees no card
    (device,) = devices
    return CameraScannerDriver(
        device.id, _parse_source(device.source or ""), fps=device.fps or 5, decoder=device.decoder or "zxing"
    )


if TYPE_CHECKING:
    _FACTORY: DriverFactory = from_config  # mypy checks that `CameraScannerDriver` is a `drivers.base.Driver`
