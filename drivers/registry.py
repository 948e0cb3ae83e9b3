"""Which driver serves which configured device: one entry per (kind, transport), loaded on first use.

The hub never names a driver class: `hub/ingest/driver_host.py` looks a device up here, builds its driver
through the entry's factory and hands the events it submits to the record mapping the entry names;
`hallhub doctor` probes a device through the entry's probe. Adding a device type is one entry here
(plus its package), never an `elif` in the hub.

Entries name their factory and probe as `"module:function"` strings and import them only when a
configured device needs them, for memory: a node with only MQTT devices loads no pyserial, tenacity,
pyscard or OpenCV (`tests/test_cli_run_imports.py`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Literal, Protocol, cast

from drivers.base import CitizenIdentifier, Driver
from drivers.probe import ProbeResult

__all__ = [
    "REGISTRY",
    "DeviceConfig",
    "DeviceProbe",
    "DriverContext",
    "DriverEntry",
    "DriverFactory",
    "DriverGroup",
    "MissingExtra",
    "RecordMapping",
    "driver_groups",
    "entry_for",
    "extras_for",
    "missing_extra",
    "missing_for",
    "serial_baud",
]


class DeviceConfig(Protocol):
    """What a driver may read of one configured device (`hub.config.DeviceSection` is one).

    Every key is optional except the first three; each driver's factory reads only its own and
    applies its entry's defaults.
    """

    @property
    def id(self) -> str:
        """The configured device id, used in every event."""
        ...

    @property
    def kind(self) -> str:
        """`keypad`, `idcard`, `qr`, `pcsc`..."""
        ...

    @property
    def transport(self) -> str:
        """`serial`, `pcsc`, `camera`..."""
        ...

    @property
    def port(self) -> str | None:
        """Serial port path or pyserial URL (`socket://`, `tcp://`)."""
        ...

    @property
    def baud(self) -> int | None:
        """Serial baud rate; None for the entry's default."""
        ...

    @property
    def address(self) -> int | None:
        """Bus address of a keypad on a shared line; None for 1."""
        ...

    @property
    def source(self) -> str | None:
        """Camera index, video file or stream URL."""
        ...

    @property
    def fps(self) -> float | None:
        """Camera frames decoded per second."""
        ...

    @property
    def decoder(self) -> Literal["zxing", "pyzbar"] | None:
        """Camera QR decoder."""
        ...

    @property
    def terminator(self) -> Literal["cr", "lf", "crlf", "any"] | None:
        """What ends a code from a serial scanner."""
        ...

    @property
    def encoding(self) -> Literal["auto", "utf-8", "gbk"] | None:
        """Text encoding of a serial scanner."""
        ...

    @property
    def reader(self) -> str | None:
        """Part of a PC/SC reader's name."""
        ...


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What the hub gives a driver besides its devices' config: only what some driver needs."""

    identifier: CitizenIdentifier
    """Turns a card's number into what may be kept (card readers use it; the others ignore it)."""


class DriverFactory(Protocol):
    """Builds the one driver that serves `devices` (one device, or every device on a shared line)."""

    def __call__(self, devices: Sequence[DeviceConfig], context: DriverContext) -> Driver:
        """Build, do not start: `Driver.run` starts it."""
        ...


class DeviceProbe(Protocol):
    """Probes `devices` (one device, or every device on a shared line) once, for `hallhub doctor`."""

    def __call__(self, devices: Sequence[DeviceConfig], *, timeout_s: float) -> Awaitable[ProbeResult]:
        """Open, ask the protocol's one harmless question, close; see `drivers.probe`."""
        ...


RecordMapping = Literal["rating", "card", "scan"]
"""How the hub turns the events a driver submits into records (`hub.ingest.intake.DriverRecords`):
`rating` (`KeyPressed` → an evaluation, with the window's session), `card` (a card event → a
`card` record) or `scan` (`CodeScanned` → a `scan` record)."""


def _load(target: str) -> object:
    """Import `"module:name"` and return the name (the module is imported on this first use)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, slots=True)
class DriverEntry:
    """One kind of device served by one driver: how to build it, probe it and record what it reports."""

    kind: str
    transport: str
    factory: str
    """`"module:function"`, a `DriverFactory`; imported only when a device of this entry is built."""
    probe: str
    """`"module:function"`, a `DeviceProbe`; imported only when doctor probes such a device."""
    records: RecordMapping
    default_baud: int | None = None
    """The baud rate when the config gives none (serial entries)."""
    shares_port: bool = False
    """Several devices on one port (keypads on an RS-485 line) are served by one driver."""
    extra: str | None = None
    """The `hallhub[extra]` this entry's libraries come with; None when the core install has them."""
    needs: tuple[str, ...] = ()
    """Top-level modules the driver imports from its extra (checked without importing them)."""

    @property
    def kind_transport(self) -> tuple[str, str]:
        """This entry's key in `REGISTRY`."""
        return (self.kind, self.transport)

    def build(self, devices: Sequence[DeviceConfig], context: DriverContext) -> Driver:
        """The driver for `devices` (all of this entry, on one port when it `shares_port`)."""
        factory = cast("DriverFactory", _load(self.factory))
        return factory(devices, context)

    def load_probe(self) -> DeviceProbe:
        """This entry's probe (imports the driver package's `probe` module)."""
        return cast("DeviceProbe", _load(self.probe))

    def baud(self, device: DeviceConfig) -> int:
        """The device's baud rate, or this entry's default."""
        if device.baud is not None:
            return device.baud
        if self.default_baud is None:
            raise ValueError(f"a {self.kind} on {self.transport} has no baud rate")
        return self.default_baud


@dataclass(frozen=True, slots=True)
class KindRule:
    """What the node config allows for a device kind, and how its ratings reach the platform."""

    transports: tuple[str, ...]
    channel: str | None = None
    """The rating channel its evaluations carry (national `pf`); None for a kind that does not rate."""
    needs_window: bool = False
    """It rates at one window: the config must say which, one such device per window."""
    addressed: bool = False
    """Several share one line, each at an `address` (RS-485 keypads)."""


KINDS: dict[str, KindRule] = {
    "keypad": KindRule(("serial",), channel="keypad", needs_window=True, addressed=True),
    "idcard": KindRule(("serial",)),
    "qr": KindRule(("serial", "camera", "mqtt"), channel="qr"),
    "pcsc": KindRule(("pcsc",)),
    "terminal": KindRule(("mqtt",), channel="terminal"),
    "pad": KindRule(("mqtt",), channel="pad", needs_window=True),
}
"""Every device kind a node config may name, in the order `config check` lists them. A vendor's
keypad is one rule here (`KindRule(("serial",), channel="keypad", needs_window=True)`) and one
`DriverEntry` below; `hub.config` and `hub.ingest.intake` read both from here."""


REGISTRY: dict[tuple[str, str], DriverEntry] = {
    entry.kind_transport: entry
    for entry in (
        DriverEntry(
            "keypad",
            "serial",
            factory="drivers.keypad.driver:from_config",
            probe="drivers.keypad.probe:probe_config",
            records="rating",
            default_baud=9600,
            shares_port=True,
        ),
        DriverEntry(
            "idcard",
            "serial",
            factory="drivers.idcard.driver:from_config",
            probe="drivers.idcard.probe:probe_config",
            records="card",
            default_baud=115200,
        ),
        DriverEntry(
            "qr",
            "serial",
            factory="drivers.qr.serial:from_config",
            probe="drivers.qr.probe:probe_serial_config",
            records="scan",
            default_baud=9600,
        ),
        DriverEntry(
            "qr",
            "camera",
            factory="drivers.qr.camera:from_config",
            probe="drivers.qr.probe:probe_camera_config",
            records="scan",
            extra="camera",
            needs=("cv2", "numpy"),
        ),
        DriverEntry(
            "pcsc",
            "pcsc",
            factory="drivers.pcsc.driver:from_config",
            probe="drivers.pcsc.probe:probe_config",
            records="card",
            extra="pcsc",
            needs=("smartcard",),
        ),
    )
}
"""Every driver the hub can run, by (kind, transport). Devices with no entry (MQTT terminals, pads
and scanners) are served by the MQTT gateway, not by a driver."""


def entry_for(device: DeviceConfig) -> DriverEntry | None:
    """The entry that serves `device`, or None when no driver does (an MQTT device)."""
    return REGISTRY.get((device.kind, device.transport))


_DECODER_MODULES: dict[str, str] = {"zxing": "zxingcpp", "pyzbar": "pyzbar"}
"""The library each camera QR decoder (`decoder = ...`) loads, both in the `camera` extra."""

_LIBRARIES: dict[str, str] = {
    "cv2": "OpenCV",
    "numpy": "NumPy",
    "zxingcpp": "zxing-cpp",
    "pyzbar": "pyzbar",
    "smartcard": "pyscard",
}
"""How a technician knows each module: by the name of the package that brings it."""


@dataclass(frozen=True, slots=True)
class MissingExtra:
    """A configured device whose driver's libraries are not installed: which extra brings them."""

    extra: str
    libraries: tuple[str, ...]

    def advice(self) -> str:
        """One sentence: what is missing and the commands that install it."""
        listed = ", ".join(self.libraries)
        return (
            f"needs hallhub's [{self.extra}] extra ({listed}), which is not installed: install it with"
            f" `sudo ./scripts/install-node --extras {self.extra}` from the hallhub release, or"
            f" `{sys.executable} -m pip install 'hallhub[{self.extra}]'`"
        )


def _installed(module: str) -> bool:
    """Whether `module` can be imported here, without importing it (OpenCV alone is tens of MB)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked installation is not an installed one
        return False


def missing_extra(device: DeviceConfig) -> MissingExtra | None:
    """The extra `device`'s driver needs and this installation lacks, or None when it can run."""
    return missing_for(device.kind, device.transport, device.decoder)


def missing_for(kind: str, transport: str, decoder: str | None = None) -> MissingExtra | None:
    """The extra a (kind, transport) device's driver needs and this installation lacks, or None."""
    entry = REGISTRY.get((kind, transport))
    if entry is None or entry.extra is None:
        return None
    needs = list(entry.needs)
    if entry.transport == "camera":
        needs.append(_DECODER_MODULES.get(decoder or "zxing", "zxingcpp"))
    absent = tuple(_LIBRARIES.get(module, module) for module in needs if not _installed(module))
    return MissingExtra(entry.extra, absent) if absent else None


def extras_for(devices: Iterable[tuple[str, str]]) -> list[str]:
    """The extras a node with these (kind, transport) devices needs, sorted, whether installed or not."""
    extras = {entry.extra for key in devices if (entry := REGISTRY.get(key)) and entry.extra}
    return sorted(extras)


def serial_baud(device: DeviceConfig) -> int:
    """The baud rate of a serial device: its own, or its entry's default (the one place defaults live)."""
    entry = entry_for(device)
    if entry is None:
        raise ValueError(f"no driver serves a {device.kind} on {device.transport}")
    return entry.baud(device)


@dataclass(frozen=True, slots=True)
class DriverGroup:
    """The devices one driver serves, and the entry that builds it."""

    entry: DriverEntry
    devices: tuple[DeviceConfig, ...]

    @property
    def name(self) -> str:
        """A name for logs and the service list: `keypad-line /dev/ttyUSB0`, `idcard id-01`."""
        if self.entry.shares_port:
            return f"{self.entry.kind}-line {self.devices[0].port or ''}"
        return f"{self.entry.kind} {self.devices[0].id}"


def driver_groups(devices: Iterable[DeviceConfig]) -> list[DriverGroup]:
    """One group per driver to run: shared lines first (by port), then one per device in config order."""
    served = [(entry, device) for device in devices if (entry := entry_for(device)) is not None]
    groups: list[DriverGroup] = []
    shared = sorted(
        ((e, d) for e, d in served if e.shares_port),
        key=lambda pair: (pair[0].kind_transport, pair[1].port or ""),
    )
    for (entry, _port), members in groupby(shared, key=lambda pair: (pair[0], pair[1].port or "")):
        groups.append(DriverGroup(entry, tuple(device for _, device in members)))
    groups += [DriverGroup(entry, (device,)) for entry, device in served if not entry.shares_port]
    return groups
