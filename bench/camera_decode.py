"""Camera QR decoding benchmark: zxing-cpp against pyzbar, and the camera driver's CPU use.

1. Decode rate on one core: frames/second for 640x480 and 1280x720 frames, with a code in view and
   without one, for both decoders on the same frames (a fixed number of frames per cell), plus the
   share of code frames each decoder read correctly.
2. The camera driver's CPU use at its default frame rate, reading a looping video file for a few
   seconds, as a percentage of one core (capture, grayscale conversion and decoding included).

Run from the repository root:  .venv/bin/python bench/camera_decode.py
Results are printed as a table and written to bench/results/camera_decode.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Awaitable
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers.base import DeviceEvent, Outcome
from drivers.qr.camera import CameraScannerDriver
from drivers.qr.decoders import DecoderName, make_decoder
from drivers.qr.events import CodeScanned
from drivers.qr.simulator import frame_plan, render_frame, write_qr_video

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}
DECODERS: tuple[DecoderName, ...] = ("zxing", "pyzbar")
DISTINCT_FRAMES = 20
DEFAULT_OUT = Path(__file__).parent / "results" / "camera_decode.json"


def pin_to_one_core() -> int:
    """Run on a single CPU so the figures are per core; returns the CPU used."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    cv2.setNumThreads(1)
    return cpu


def make_frames(size: tuple[int, int], with_code: bool, seed: int) -> list[tuple[np.ndarray, str]]:
    """Distinct grayscale frames (rotated, blurred, noisy codes or none) with the expected text."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(DISTINCT_FRAMES):
        text = f"https://zwfw.example.gov.cn/pj?case_no=3701022024{index:04d}" if with_code else ""
        frame = render_frame(text or None, size, rng)
        frames.append((np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)), text))
    return frames


def decode_rate(
    decoder_name: DecoderName, frames: list[tuple[np.ndarray, str]], count: int
) -> dict[str, float]:
    """Decode `count` frames (cycling through `frames`); frames/s and the correct-read share."""
    decoder = make_decoder(decoder_name)
    decoder.decode(frames[0][0])  # warm-up: library load and first allocation
    correct = 0
    started = time.perf_counter()
    for index in range(count):
        frame, expected = frames[index % len(frames)]
        texts = [code.text for code in decoder.decode(frame)]
        correct += texts == ([expected] if expected else [])
    elapsed = time.perf_counter() - started
    return {
        "frames": count,
        "fps": count / elapsed,
        "ms_per_frame": elapsed / count * 1000,
        "correct_share": correct / count,
    }


class CountingSink:
    """The hub's seam, reduced to counting: every scan is 'stored' at once."""

    def __init__(self) -> None:
        self.scans = 0
        self.events: list[DeviceEvent] = []

    def submit(self, event: DeviceEvent) -> Awaitable[Outcome]:
        self.scans += isinstance(event, CodeScanned)
        return self._stored()

    async def _stored(self) -> Outcome:
        return Outcome.STORED

    def notify(self, event: DeviceEvent) -> None:
        self.events.append(event)


async def driver_cpu(video: Path, decoder: DecoderName, seconds: float) -> dict[str, float]:
    """CPU share of one core used by the driver at its default fps over `seconds`."""
    sink = CountingSink()
    driver = CameraScannerDriver("bench-cam", video, decoder=decoder, loop_file=True)
    task = asyncio.create_task(driver.run(sink))
    await asyncio.sleep(1.0)  # let it open the file and settle
    cpu_before, wall_before, scans_before = time.process_time(), time.perf_counter(), sink.scans
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    scans = sink.scans - scans_before
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {"seconds": wall, "cpu_percent_of_one_core": cpu / wall * 100, "scans": scans}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for package in ("zxing-cpp", "pyzbar", "opencv-python-headless", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames decoded per table cell")
    parser.add_argument("--seconds", type=float, default=4.0, help="driver CPU window per run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args()
    frames_per_cell = max(1, min(args.frames, 1000))
    seconds = max(1.0, min(args.seconds, 30.0))
    cpu = pin_to_one_core()

    decode_results: list[dict[str, Any]] = []
    print(f"Decode rate on one core (CPU {cpu}), {frames_per_cell} frames per cell")
    header = f"{'frame size':<10} {'code':<5} {'decoder':<7} {'frames/s':>9} {'ms/frame':>9} {'read ok':>8}"
    print(header)
    print("-" * len(header))
    for seed, (size_name, size) in enumerate(SIZES.items()):
        for with_code in (True, False):
            frames = make_frames(size, with_code, seed)
            for decoder in DECODERS:
                result = decode_rate(decoder, frames, frames_per_cell)
                decode_results.append(
                    {"size": size_name, "code_in_view": with_code, "decoder": decoder, **result}
                )
                print(
                    f"{size_name:<10} {'yes' if with_code else 'no':<5} {decoder:<7} "
                    f"{result['fps']:>9.1f} {result['ms_per_frame']:>9.2f} "
                    f"{result['correct_share']:>8.0%}"
                )

    driver_results: list[dict[str, Any]] = []
    print(f"\nCamera driver at its default 5 fps, looping video file, {seconds:.0f} s per run")
    header = f"{'frame size':<10} {'decoder':<7} {'CPU % of one core':>18} {'scans':>6}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        codes = [f"https://zwfw.example.gov.cn/pj?case_no=3701022024{i:04d}" for i in range(4)]
        plan = frame_plan(codes, frames_per_code=5, gap_frames=15, lead_frames=5)
        for size_name, size in SIZES.items():
            video = write_qr_video(Path(folder) / f"{size_name}.avi", plan, size=size)
            for decoder in DECODERS:
                result = asyncio.run(driver_cpu(video, decoder, seconds))
                driver_results.append({"size": size_name, "decoder": decoder, "fps": 5, **result})
                print(
                    f"{size_name:<10} {decoder:<7} {result['cpu_percent_of_one_core']:>18.1f} "
                    f"{result['scans']:>6}"
                )

    report = {
        "command": f"python bench/camera_decode.py --frames {frames_per_cell} --seconds {seconds:g}",
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_model(),
            "cpus_visible": os.cpu_count(),
            "pinned_cpu": cpu,
        },
        "versions": versions(),
        "decode": decode_results,
        "driver_cpu": driver_results,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
