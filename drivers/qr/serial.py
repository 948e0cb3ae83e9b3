"""Serial and USB-CDC QR scanners: the port, the idle timer and reopening, around `ScanFramer`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import serial

from drivers.base import DeviceOffline, DeviceOnline, EventSink, FrameDropped, Outcome
from drivers.qr.codec import (
    AUTO_ENCODING,
    DEFAULT_MAX_LENGTH,
    FrameResult,
    RejectedFrame,
    ScanFramer,
    Terminator,
)
from drivers.qr.dedupe import RepeatFilter
from drivers.qr.events import CodeScanned
from drivers.registry import serial_baud
from drivers.reopen import SHORT_SESSION_S, check_backoff, open_with_backoff
from drivers.serial_port import open_serial_streams

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DriverContext, DriverFactory

_log = logging.getLogger(__name__)

_READ_SIZE = 4096


class _PortClosedError(Exception):
    """The port reported end of file (the other side went away)."""


class SerialScannerDriver:
    """Reads codes from a scanner in serial/USB-CDC (virtual COM port) mode.

    `port` is a device path (`/dev/serial/by-id/...`) or any pyserial URL (`socket://host:port`).
    Every complete code goes to `sink.submit` as a `CodeScanned`; a code repeated within
    `repeat_window_s` is reported once. Unplugging is normal: the driver reports `DeviceOffline`,
    reopens with backoff and jitter, and reports `DeviceOnline` when the port opens again.
    """

    def __init__(
        self,
        device_id: str,
        port: str,
        *,
        baudrate: int = 9600,
        terminator: Terminator = "any",
        encoding: str = AUTO_ENCODING,
        max_length: int = DEFAULT_MAX_LENGTH,
        idle_timeout_s: float = 0.3,
        repeat_window_s: float = 3.0,
        symbology: str = "unknown",
        reopen_min_s: float = 0.5,
        reopen_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_backoff(reopen_min_s, reopen_max_s)
        self.device_id = device_id
        self.port = port
        self._baudrate = baudrate
        self._framer = ScanFramer(
            terminator, encoding=encoding, max_length=max_length, idle_timeout_s=idle_timeout_s
        )
        self._repeats = RepeatFilter(repeat_window_s)
        self._symbology = symbology
        self._reopen_min_s = reopen_min_s
        self._reopen_max_s = reopen_max_s
        self._clock = clock
        self._offline_reported = False

    async def run(self, sink: EventSink) -> None:
        """Serve the scanner until cancelled, reopening the port whenever it is lost."""
        while True:
            reader, writer = await open_with_backoff(
                self._open,
                retry_on=(serial.SerialException, OSError),
                min_s=self._reopen_min_s,
                max_s=self._reopen_max_s,
                on_failure=lambda error, _wait_s: self._report_offline(sink, f"cannot open: {error}"),
            )
            self._offline_reported = False
            sink.notify(DeviceOnline(self.device_id, detail=f"port {self.port}"))
            _log.info("QR scanner %s online on %s", self.device_id, self.port)
            opened_at = self._clock()
            try:
                await self._serve(reader, sink)
            except _PortClosedError:
                reason = "port closed"
            except (serial.SerialException, OSError) as error:
                reason = f"port error: {error}"
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()  # re-raises the port error we already have
                self._framer.reset()
            self._report_offline(sink, reason)
            if self._clock() - opened_at < SHORT_SESSION_S:
                await asyncio.sleep(self._reopen_min_s)  # a port that keeps failing must not spin

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_serial_streams(self.port, self._baudrate)

    async def _serve(self, reader: asyncio.StreamReader, sink: EventSink) -> None:
        """Read until the port fails, ending partial codes when the line goes idle."""
        while True:
            deadline = self._framer.deadline
            if deadline is None:
                chunk = await reader.read(_READ_SIZE)
            else:
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        chunk = await reader.read(_READ_SIZE)
                except TimeoutError:
                    await self._report(self._framer.expire(self._clock()), sink)
                    continue
            if not chunk:
                raise _PortClosedError
            await self._report(self._framer.feed(chunk, self._clock()), sink)

    async def _report(self, results: list[FrameResult], sink: EventSink) -> None:
        for result in results:
            if isinstance(result, RejectedFrame):
                _log.warning("QR scanner %s dropped input: %s", self.device_id, result.reason)
                sink.notify(FrameDropped(self.device_id, result.reason))
                continue
            if not self._repeats.accept(result.text, self._clock()):
                _log.debug("QR scanner %s: repeated code suppressed", self.device_id)
                continue
            event = CodeScanned(self.device_id, data=result.text, symbology=self._symbology, source="serial")
            outcome = await sink.submit(event)
            if outcome in (Outcome.FAILED, Outcome.REJECTED):
                _log.warning("QR scanner %s: hub answered %s", self.device_id, outcome.value)

    def _report_offline(self, sink: EventSink, reason: str) -> None:
        """Tell the hub once per outage; later failed attempts are only logged."""
        if self._offline_reported:
            _log.debug("QR scanner %s still offline: %s", self.device_id, reason)
            return
        _log.warning("QR scanner %s offline (%s): %s", self.device_id, self.port, reason)
        self._offline_reported = True
        sink.notify(DeviceOffline(self.device_id, reason=reason))


def from_config(devices: Sequence[DeviceConfig], context: DriverContext) -> SerialScannerDriver:
    """The registry's factory: the driver of one configured serial `qr` scanner."""
    del context  # a scanner sees no card
    (device,) = devices
    return SerialScannerDriver(
        device.id,
        device.port or "",
        baudrate=serial_baud(device),
        terminator=device.terminator or "any",
        encoding=device.encoding or AUTO_ENCODING,
    )


if TYPE_CHECKING:
    _FACTORY: DriverFactory = from_config  # mypy checks that `SerialScannerDriver` is a `drivers.base.Driver`
