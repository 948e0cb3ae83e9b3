"""One look at a device, for `hallhub doctor`: what every driver's `probe` returns, and its helpers.

Each driver package has a `probe` module whose coroutines open the device the way the driver does,
ask it the one harmless question its protocol has (PING, SAM status, one frame, the reader list),
and close it again. They store nothing and never read a card or decode a frame. They return facts,
not advice: the caller (doctor) knows the config keys and writes the fix for a technician.

Every probe has the same shape, so that a registry keyed by device kind can hold them:
`async def probe(<where the device is>, *, <its settings>, timeout_s: float) -> ProbeResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["Probe", "ProbeResult", "ProbeStatus", "describe_open_error", "in_daemon_thread"]

T = TypeVar("T")


class ProbeStatus(enum.StrEnum):
    """What one probe found, from good to bad."""

    OK = "ok"  # opened, and the device answered as it should
    UNAVAILABLE = "unavailable"  # its port, service or source cannot be opened: `detail` says why
    ABSENT = "absent"  # what serves it answers, but the device itself is not there
    SILENT = "silent"  # opened, but the device did not answer in time
    UNREADABLE = "unreadable"  # it answered something that cannot be read: `detail` says what
    FAULT = "fault"  # it answered, and the answer reports a fault: `detail` is the answer in words


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe: a status, the device's answer or the reason in words, what was learned.

    `facts` holds what the probe learned by name (`firmware`, `reader`, `width`...); `units` the
    result for each device behind the same port (keypads on one line, by address), when there are
    several.
    """

    status: ProbeStatus
    detail: str = ""
    facts: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, ProbeResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the device answered as it should."""
        return self.status is ProbeStatus.OK


Probe = Callable[..., Awaitable[ProbeResult]]
"""The type of every driver's probe coroutine function (see the module docstring for its shape)."""


def describe_open_error(exc: OSError) -> str:
    """Why a serial port did not open, in a technician's words (pyserial repeats the path otherwise)."""
    text = str(exc)
    if "lock" in text.lower():
        return "port in use by another program (exclusive lock failed)"
    if exc.errno is not None and exc.strerror:
        return exc.strerror.lower()
    return text


async def in_daemon_thread(call: Callable[[], T], timeout_s: float) -> T:
    """Run a blocking call on a daemon thread; give up after `timeout_s` (the thread is abandoned).

    Unlike `asyncio.to_thread`, a call stuck in a driver (a camera, pcscd) cannot keep the process
    from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def work() -> None:
        try:
            result = call()
        except BaseException as exc:  # handed over to the awaiting task
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: future.set_result(result))

    threading.Thread(target=work, name="driver-probe", daemon=True).start()
    async with asyncio.timeout(timeout_s):
        return await future
