"""The serial scanner driver over a real pty, with the simulated scanner on the far end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceOffline, DeviceOnline
from drivers.qr import CodeScanned, SerialScannerDriver
from drivers.qr.simulator import SimulatedSerialScanner, run_simulated_scanner
from tests.drivers.qr.sink import RecordingSink

FAST = {"reopen_min_s": 0.05, "reopen_max_s": 0.2, "idle_timeout_s": 0.15}


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@asynccontextmanager
async def running(driver: SerialScannerDriver, sink: RecordingSink) -> AsyncIterator[None]:
    """Run the driver for the block; afterwards every file it opened must be closed again."""
    before = open_fds()
    task = asyncio.create_task(driver.run(sink))
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert open_fds() <= before


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "ttyQR0"


@pytest.fixture
def make_driver(link: Path) -> Callable[..., SerialScannerDriver]:
    def make(**options: Any) -> SerialScannerDriver:
        return SerialScannerDriver("qr-07", str(link), **(FAST | options))

    return make


@pytest.mark.parametrize(
    ("terminator", "sent_with"),
    [("cr", "cr"), ("lf", "lf"), ("crlf", "crlf"), ("any", "cr"), ("any", "lf"), ("any", "crlf")],
)
async def test_codes_end_at_the_configured_terminator(
    link: Path, make_driver: Callable[..., SerialScannerDriver], terminator: str, sent_with: Any
) -> None:
    sink = RecordingSink()
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(terminator=terminator, idle_timeout_s=5.0), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            await scanner.scan("PICKUP-000123", terminator=sent_with)
            await scanner.scan("https://zwfw.example.gov.cn/pj?case_no=37010220240001", terminator=sent_with)
            await sink.wait_for(lambda: len(sink.codes) == 2, timeout=2.0)
    assert sink.codes == ["PICKUP-000123", "https://zwfw.example.gov.cn/pj?case_no=37010220240001"]
    event = sink.submitted[0]
    assert event == CodeScanned("qr-07", data="PICKUP-000123", symbology="unknown", source="serial")
    assert sink.drops == []


async def test_code_split_across_writes_is_one_code(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(terminator="crlf"), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            await scanner.send_raw(b"ABC123456\r\n", chunk_size=3, gap_s=0.02)
            await sink.wait_for(lambda: len(sink.codes) == 1)
    assert sink.codes == ["ABC123456"]


async def test_idle_timeout_ends_an_unterminated_code(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(terminator="cr", idle_timeout_s=0.1), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            await scanner.send_unterminated("880012345678")
            await sink.wait_for(lambda: len(sink.codes) == 1, timeout=2.0)
            waited = loop.time() - sent_at
            await scanner.scan("NEXT000001")
            await sink.wait_for(lambda: len(sink.codes) == 2, timeout=2.0)
    assert sink.codes == ["880012345678", "NEXT000001"]
    assert 0.09 <= waited < 1.0


@pytest.mark.parametrize(
    ("encoding", "sent_as"), [("auto", "utf-8"), ("auto", "gbk"), ("gbk", "gbk"), ("utf-8", "utf-8")]
)
async def test_chinese_payloads_in_utf8_and_gbk(
    link: Path, make_driver: Callable[..., SerialScannerDriver], encoding: str, sent_as: str
) -> None:
    sink = RecordingSink()
    code = "取件码:370102-办件0042"
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(encoding=encoding), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            await scanner.scan(code, encoding=sent_as)
            await sink.wait_for(lambda: len(sink.codes) == 1)
    assert sink.codes == [code]


async def test_gbk_bytes_with_utf8_setting_are_dropped_as_bad_encoding(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(encoding="utf-8"), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            await scanner.scan("办件编号", encoding="gbk")
            await scanner.send_garbage(24, seed=7)
            await scanner.scan("OK000001")
            await sink.wait_for(lambda: len(sink.codes) == 1)
    assert sink.drops == ["bad_encoding", "bad_encoding"]
    assert sink.codes == ["OK000001"]


async def test_too_long_input_is_dropped_and_reported(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(max_length=64), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            await scanner.scan("X" * 64)
            await scanner.send_raw(b"Y" * 1000 + b"\r", chunk_size=100)
            await scanner.scan("AFTER00001")
            await sink.wait_for(lambda: len(sink.codes) == 2)
    assert sink.codes == ["X" * 64, "AFTER00001"]
    assert sink.drops == ["too_long"]


async def test_same_code_within_the_window_is_reported_once(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    with SimulatedSerialScanner(link) as scanner:
        async with running(make_driver(repeat_window_s=0.4), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            for _ in range(3):
                await scanner.scan("12345678")
            await scanner.scan("87654321")
            await sink.wait_for(lambda: len(sink.codes) == 2)
            await asyncio.sleep(0.5)
            await scanner.scan("12345678")
            await sink.wait_for(lambda: len(sink.codes) == 3)
    assert sink.codes == ["12345678", "87654321", "12345678"]


async def test_unplug_reports_offline_and_replug_online(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    scanner = SimulatedSerialScanner(link)
    scanner.plug()
    try:
        async with running(make_driver(), sink):
            await sink.wait_for(lambda: sink.onlines == 1)
            await scanner.scan("BEFORE0001")
            await sink.wait_for(lambda: len(sink.codes) == 1)

            scanner.unplug()
            assert not link.exists()
            await sink.wait_for(lambda: sink.offlines == 1)
            await asyncio.sleep(0.4)  # several failed reopen attempts while unplugged
            assert sink.offlines == 1

            scanner.plug()
            await sink.wait_for(lambda: sink.onlines == 2)
            await scanner.scan("AFTER00001")
            await sink.wait_for(lambda: len(sink.codes) == 2)
    finally:
        scanner.unplug()
    kinds = [type(e) for e in sink.events]
    assert kinds == [DeviceOnline, CodeScanned, DeviceOffline, DeviceOnline, CodeScanned]
    assert sink.codes == ["BEFORE0001", "AFTER00001"]


async def test_port_missing_at_start_is_offline_until_plugged(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    scanner = SimulatedSerialScanner(link)
    async with running(make_driver(), sink):
        await sink.wait_for(lambda: sink.offlines == 1)
        offline = sink.of(DeviceOffline)[0]
        assert isinstance(offline, DeviceOffline)
        assert "cannot open" in offline.reason
        await asyncio.sleep(0.3)  # several failed attempts, reported once
        with scanner:
            await sink.wait_for(lambda: sink.onlines == 1)
            assert sink.offlines == 1


async def test_run_simulated_scanner_feeds_the_driver(
    link: Path, make_driver: Callable[..., SerialScannerDriver]
) -> None:
    sink = RecordingSink()
    async with running(make_driver(), sink):
        await run_simulated_scanner(
            link,
            ["CODE000001", "取件码 654321"],
            interval_s=0.05,
            encoding="gbk",
            start_delay_s=0.5,
            hold_s=0.2,
        )
        await sink.wait_for(lambda: sink.offlines == 1)
    assert sink.codes == ["CODE000001", "取件码 654321"]
