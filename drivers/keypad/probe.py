"""Probe a keypad line for `hallhub doctor`: open the port with the hub's own driver, PING each keypad.

A key pressed during the probe is refused (not acked), so the keypad keeps it and sends it again
to the hub later; nothing is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Final

from drivers import keypad
from drivers.base import DeviceEvent, DeviceOffline, Outcome
from drivers.probe import ProbeResult, ProbeStatus
from drivers.registry import serial_baud

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DeviceProbe

__all__ = ["PING_TIMEOUT_S", "PING_TRIES", "probe", "probe_config", "time_needed_s"]

PING_TIMEOUT_S: Final = 0.5
"""How long one PING waits for its ACK."""
PING_TRIES: Final = 2
"""PINGs sent to a keypad before it counts as silent."""
_FIRMWARE_WAIT_S: Final = 0.3
_OPEN_POLL_S: Final = 0.02


def time_needed_s(timeout_s: float, addresses: int) -> float:
    """The longest a probe of `addresses` keypads may take: opening, then every PING and its PONG."""
    return timeout_s + PING_TRIES * PING_TIMEOUT_S * 2 * addresses


class _ProbeSink:
    """The driver's sink during a probe: remembers why the port would not open; stores nothing."""

    def __init__(self) -> None:
        self.offline: str | None = None
        self.changed = asyncio.Event()

    def submit(self, event: DeviceEvent) -> Awaitable[Outcome]:
        """Refuse every key press: unacked, the keypad sends it again to the hub later."""

        async def refuse() -> Outcome:
            return Outcome.FAILED

        return refuse()

    def notify(self, event: DeviceEvent) -> None:
        """Note the reason when the port cannot be opened."""
        if isinstance(event, DeviceOffline) and event.reason.startswith("cannot open"):
            self.offline = event.reason
            self.changed.set()


async def probe(port: str, *, baud: int, addresses: Sequence[int], timeout_s: float) -> ProbeResult:
    """Open the line and PING the keypad at each address; `units` holds one result per address.

    UNAVAILABLE if the port does not open (`detail`: why); then per keypad OK (`firmware` among
    its facts when its PONG said it), SILENT or FAULT (`detail`: what the driver said). Raises
    TimeoutError if the port neither opens nor fails within `timeout_s`.
    """
    timings = keypad.KeypadTimings(
        ping_interval_s=3600.0,
        offline_after_s=3600.0,
        ack_timeout_s=PING_TIMEOUT_S,
        command_tries=PING_TRIES,
        reopen_initial_s=0.2,
        reopen_max_s=1.0,
    )
    driver = keypad.KeypadLineDriver(port, baud, {a: str(a) for a in addresses}, timings=timings)
    sink = _ProbeSink()
    task = asyncio.create_task(driver.run(sink), name=f"probe-keypad-{port}")
    try:
        async with asyncio.timeout(timeout_s):
            while not driver.is_open and sink.offline is None:
                sink.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sink.changed.wait(), _OPEN_POLL_S)
        if not driver.is_open:
            reason = (sink.offline or "").removeprefix(f"cannot open serial port {port}: ")
            return ProbeResult(ProbeStatus.UNAVAILABLE, reason)
        units: dict[str, ProbeResult] = {}
        for address in addresses:
            units[str(address)] = await _ping(driver, str(address))
        return ProbeResult(ProbeStatus.OK, units=units)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def probe_config(devices: Sequence[DeviceConfig], *, timeout_s: float) -> ProbeResult:
    """The registry's probe: the keypads configured on one line; `units` keyed by address."""
    first = devices[0]
    addresses = [d.address or 1 for d in devices]
    return await probe(first.port or "", baud=serial_baud(first), addresses=addresses, timeout_s=timeout_s)


async def _ping(driver: keypad.KeypadLineDriver, device_id: str) -> ProbeResult:
    """PING one keypad; its firmware from the PONG that follows the ACK (waits briefly for it)."""
    try:
        await driver.ping(device_id)
    except keypad.KeypadCommandError as exc:
        status = ProbeStatus.SILENT if exc.nak_code is None else ProbeStatus.FAULT
        return ProbeResult(status, str(exc))
    deadline = time.monotonic() + _FIRMWARE_WAIT_S
    while True:
        info = next(k for k in driver.keypads if k.device_id == device_id)
        if info.firmware or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.01)
    return ProbeResult(ProbeStatus.OK, facts={"firmware": info.firmware} if info.firmware else {})


if TYPE_CHECKING:
    _PROBE_CONFIG: DeviceProbe = probe_config  # the registry's probe shape, checked by mypy
