"""Probe a PC/SC reader for `hallhub doctor`: pcscd answers and lists the reader. No card is touched."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from drivers.probe import ProbeResult, ProbeStatus, in_daemon_thread

if TYPE_CHECKING:
    from drivers.registry import DeviceConfig, DeviceProbe

__all__ = ["probe", "probe_config"]


async def probe(reader: str, *, timeout_s: float) -> ProbeResult:
    """Ask pcscd for its readers and look for the one whose name contains `reader` (any, if empty).

    UNAVAILABLE if pcscd cannot be used (`detail`: why); ABSENT if no reader matches (`readers`
    among the facts: those present, `; `-separated); else OK with the matching `reader`. Raises
    ImportError if pyscard (or pcscd's client library) cannot be loaded.
    """
    error, readers = await in_daemon_thread(_list_readers, timeout_s)
    if error is not None:
        return ProbeResult(ProbeStatus.UNAVAILABLE, error)
    wanted = reader.strip().casefold()
    matching = [name for name in readers if wanted in name.casefold()]
    if not matching:
        return ProbeResult(ProbeStatus.ABSENT, facts={"readers": "; ".join(readers)})
    return ProbeResult(ProbeStatus.OK, facts={"reader": matching[0]})


def _list_readers() -> tuple[str | None, tuple[str, ...]]:
    """(why pcscd cannot be used, or None; the readers it lists). Blocks: runs on a thread."""
    # The driver's own reader listing (one PC/SC context, errors in words); pyscard loads only here.
    from drivers.pcsc._pcsc import PcscUnavailableError, _ReaderPoller  # noqa: PLC0415

    poller = _ReaderPoller()
    try:
        return None, poller.prime()
    except PcscUnavailableError as exc:
        return exc.reason, ()
    finally:
        poller.close()


async def probe_config(devices: Sequence[DeviceConfig], *, timeout_s: float) -> ProbeResult:
    """The registry's probe: one configured `pcsc` device (its `reader` filter; any reader if unset)."""
    (device,) = devices
    return await probe((device.reader or "").strip(), timeout_s=timeout_s)


if TYPE_CHECKING:
    _PROBE_CONFIG: DeviceProbe = probe_config  # the registry's probe shape, checked by mypy
