"""The camera driver reading recorded-frame videos made by the simulator (segno codes, distorted)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from drivers.base import DeviceOffline, DeviceOnline
from drivers.qr import CameraScannerDriver, CodeScanned, DecoderName
from drivers.qr.camera import describe_source
from drivers.qr.decoders import DecodedCode, ZxingDecoder
from drivers.qr.simulator import frame_plan, write_qr_video
from tests.drivers.qr.sink import RecordingSink

CODES = [
    "https://zwfw.example.gov.cn/pj/index?case_no=37010220240001&item=A01",
    "12345678",
    "取件码 PK2024-0042",
    "https://pj.example.gov.cn/e?projectNo=SD2024-000777",
]
SIZES = {"480p": (640, 480), "720p": (1280, 720)}


def fast_camera(
    source: Path | str, *, decoder: DecoderName = "zxing", loop_file: bool = False
) -> CameraScannerDriver:
    """A driver that reads 50 frames/s and reopens within 0.2 s, so tests stay short."""
    return CameraScannerDriver(
        "cam-07",
        source,
        fps=50.0,
        decoder=decoder,
        loop_file=loop_file,
        gone_frames=3,
        reopen_min_s=0.05,
        reopen_max_s=0.2,
    )


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One video per frame size: each code on 3 frames, 5 blank frames after each, blank lead-in."""
    folder = tmp_path_factory.mktemp("qr-videos")
    plan = frame_plan(CODES, frames_per_code=3, gap_frames=5, lead_frames=2)
    made = {
        name: write_qr_video(folder / f"codes-{name}.avi", plan, size=size, seed=index)
        for index, (name, size) in enumerate(SIZES.items())
    }
    made["blank"] = write_qr_video(folder / "blank.avi", [None] * 12, size=SIZES["480p"])
    return made


@asynccontextmanager
async def running(driver: CameraScannerDriver, sink: RecordingSink) -> AsyncIterator[None]:
    """Run the driver for the block; afterwards its worker thread must be gone."""
    task = asyncio.create_task(driver.run(sink))
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [t.name for t in threading.enumerate() if t.name.startswith("qr-camera-")] == []


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("decoder", ["zxing", "pyzbar"])
async def test_each_code_is_reported_once(videos: dict[str, Path], size: str, decoder: DecoderName) -> None:
    sink = RecordingSink()
    driver = fast_camera(str(videos[size]), decoder=decoder)
    async with running(driver, sink):
        await sink.wait_for(lambda: sink.offlines == 1, timeout=15)
    assert sink.codes == CODES
    assert all(
        e.symbology == "QRCode" and e.source == "camera" and e.device_id == "cam-07"
        for e in sink.submitted
        if isinstance(e, CodeScanned)
    )
    offline = sink.of(DeviceOffline)[0]
    assert isinstance(offline, DeviceOffline)
    assert offline.reason == "end of video file"


async def test_frames_without_a_code_produce_no_event(videos: dict[str, Path]) -> None:
    sink = RecordingSink()
    async with running(fast_camera(videos["blank"]), sink):
        await sink.wait_for(lambda: sink.offlines == 1)
    assert [type(e) for e in sink.events] == [DeviceOnline, DeviceOffline]


async def test_code_held_in_view_is_reported_once_until_it_leaves(tmp_path: Path) -> None:
    plan: list[str | None] = ["HOLD000001"] * 8 + [None] + ["HOLD000001"] * 3 + [None] * 4
    plan += ["HOLD000001"] * 2 + [None] * 2
    video = write_qr_video(tmp_path / "held.avi", plan, size=SIZES["480p"])
    sink = RecordingSink()
    async with running(fast_camera(video), sink):
        await sink.wait_for(lambda: sink.offlines == 1)
    # One missing frame does not end the sighting; four (more than gone_frames=3) do.
    assert sink.codes == ["HOLD000001", "HOLD000001"]


async def test_end_of_file_counts_as_camera_lost_and_it_is_reopened(
    videos: dict[str, Path],
) -> None:
    sink = RecordingSink()
    async with running(fast_camera(videos["480p"]), sink):
        await sink.wait_for(lambda: sink.onlines == 2 and len(sink.codes) == 2 * len(CODES), timeout=15)
    kinds = [type(e) for e in sink.events]
    assert kinds[: len(CODES) + 3] == [DeviceOnline, *[CodeScanned] * len(CODES), DeviceOffline, DeviceOnline]
    assert sink.codes == CODES + CODES


async def test_loop_file_plays_the_file_again_without_going_offline(
    videos: dict[str, Path],
) -> None:
    sink = RecordingSink()
    driver = fast_camera(videos["480p"], loop_file=True)
    async with running(driver, sink):
        await sink.wait_for(lambda: len(sink.codes) == len(CODES) + 1, timeout=15)
    assert sink.offlines == 0
    assert sink.onlines == 1
    assert sink.codes == [*CODES, CODES[0]]


async def test_missing_source_is_offline_until_it_appears(videos: dict[str, Path], tmp_path: Path) -> None:
    source = tmp_path / "later.avi"
    sink = RecordingSink()
    async with running(fast_camera(source), sink):
        await sink.wait_for(lambda: sink.offlines == 1)
        await asyncio.sleep(0.3)  # several failed attempts, reported once
        assert sink.offlines == 1
        shutil.copy(videos["480p"], source)
        await sink.wait_for(lambda: len(sink.codes) == len(CODES), timeout=15)
    assert [type(e) for e in sink.events][:2] == [DeviceOffline, DeviceOnline]
    offline = sink.of(DeviceOffline)[0]
    assert isinstance(offline, DeviceOffline)
    assert "not found" in offline.reason


async def test_frames_are_paced_at_the_configured_rate(videos: dict[str, Path]) -> None:
    sink = RecordingSink()
    driver = CameraScannerDriver("cam-07", videos["blank"], fps=20.0, reopen_min_s=0.05)
    started = time.monotonic()
    async with running(driver, sink):
        await sink.wait_for(lambda: sink.offlines == 1)
        elapsed = time.monotonic() - started
    # 12 frames at 20 fps: the 13th read (end of file) comes after 12 periods of 50 ms.
    assert 0.55 <= elapsed < 2.0


async def test_decoding_does_not_block_the_event_loop(videos: dict[str, Path]) -> None:
    """pyzbar at 720p takes tens of ms per frame; the loop keeps ticking meanwhile."""
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    sink = RecordingSink()
    driver = CameraScannerDriver(
        "cam-07", videos["720p"], fps=60.0, decoder="pyzbar", gone_frames=3, reopen_min_s=0.05
    )
    tick = asyncio.create_task(ticker())
    try:
        async with running(driver, sink):
            await sink.wait_for(lambda: sink.offlines == 1, timeout=15)
    finally:
        tick.cancel()
        with pytest.raises(asyncio.CancelledError):
            await tick
    assert sink.codes == CODES
    assert len(gaps) > 50
    assert max(gaps) < 0.1, f"longest event-loop stall {max(gaps):.3f} s"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fps"):
        CameraScannerDriver("cam-07", 0, fps=0)
    with pytest.raises(ValueError, match="decoder"):
        CameraScannerDriver("cam-07", 0, decoder="opencv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="roi"):
        CameraScannerDriver("cam-07", 0, roi=(0, 0, 0, 10))
    with pytest.raises(ValueError, match="reopen"):
        CameraScannerDriver("cam-07", 0, reopen_min_s=5, reopen_max_s=1)


def test_digit_string_source_is_a_device_index() -> None:
    assert CameraScannerDriver("cam-07", "0").source == 0
    assert CameraScannerDriver("cam-07", "rtsp://10.0.0.5/stream1").source == ("rtsp://10.0.0.5/stream1")


def test_stream_credentials_are_masked_wherever_the_source_is_shown() -> None:
    assert describe_source("rtsp://admin:s3cret@10.0.0.5:554/stream1") == ("rtsp://***@10.0.0.5:554/stream1")
    assert describe_source("rtsp://10.0.0.5/stream1") == "rtsp://10.0.0.5/stream1"
    assert describe_source(2) == "camera index 2"
    assert describe_source("/var/lib/hallhub/cam.avi") == "/var/lib/hallhub/cam.avi"


async def test_a_frame_the_decoder_fails_on_does_not_stop_the_camera(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = ZxingDecoder.decode
    calls = 0

    def flaky_decode(self: ZxingDecoder, gray: NDArray[np.uint8]) -> list[DecodedCode]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("decoder fault")
        return real_decode(self, gray)

    monkeypatch.setattr(ZxingDecoder, "decode", flaky_decode)
    sink = RecordingSink()
    async with running(fast_camera(videos["480p"]), sink):
        await sink.wait_for(lambda: sink.offlines == 1)
    assert sink.codes == CODES
