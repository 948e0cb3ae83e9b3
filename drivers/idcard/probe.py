"""Probe an ID-card reader for `hallhub doctor`: open its port and ask the SAM for its status.

`11 FF` (SAM status) is the one command that touches no card: the probe never reads one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from drivers.idcard.codec import Command
from drivers.idcard.protocol import ReaderTimeoutError, SamLink
from drivers.probe import ProbeResult, ProbeStatus, describe_open_error
from drivers.registry import serial_baud

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DeviceProbe

__all__ = ["SAM_STATUS_TIMEOUT_S", "probe", "probe_config"]

SAM_STATUS_TIMEOUT_S: Final = 1.0
"""How long the SAM may take to answer its status."""


async def probe(port: str, *, baud: int, timeout_s: float) -> ProbeResult:
    """Open the reader's port and ask for the SAM status.

    UNAVAILABLE if the port does not open (`detail`: why); SILENT without an answer within
    `SAM_STATUS_TIMEOUT_S`; UNREADABLE for a garbled answer; else OK or FAULT with the SAM's status
    in words as `detail`. `timeout_s` bounds the whole probe for the caller; opening is immediate.
    """
    del timeout_s  # a serial open does not wait; the answer has its own protocol timeout
    try:
        link = await SamLink.open(port, baud, lambda _reason: None)
    except OSError as exc:
        return ProbeResult(ProbeStatus.UNAVAILABLE, describe_open_error(exc))
    try:
        response = await link.request(Command.SAM_STATUS, SAM_STATUS_TIMEOUT_S)
    except ReaderTimeoutError as exc:
        return ProbeResult(ProbeStatus.SILENT, str(exc))
    except Exception as exc:  # a garbled answer, whatever the decoder made of it: report, never crash
        return ProbeResult(ProbeStatus.UNREADABLE, str(exc))
    finally:
        await link.aclose()
    return ProbeResult(ProbeStatus.OK if response.ok else ProbeStatus.FAULT, response.describe())


async def probe_config(devices: Sequence[DeviceConfig], *, timeout_s: float) -> ProbeResult:
    """The registry's probe: one configured `idcard` reader."""
    (device,) = devices
    return await probe(device.port or "", baud=serial_baud(device), timeout_s=timeout_s)


if TYPE_CHECKING:
    _PROBE_CONFIG: DeviceProbe = probe_config  # the registry's probe shape, checked by mypy
