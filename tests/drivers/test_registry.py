"""The driver registry: every entry resolves, devices group the way their drivers serve them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from drivers.registry import REGISTRY, DeviceConfig, driver_groups, entry_for, serial_baud


@dataclass(frozen=True)
class Device:
    """A configured device as the registry reads it (`hub.config.DeviceSection` in the hub)."""

    id: str
    kind: str
    transport: str
    port: str | None = None
    baud: int | None = None
    address: int | None = None
    source: str | None = None
    fps: float | None = None
    decoder: Literal["zxing", "pyzbar"] | None = None
    terminator: Literal["cr", "lf", "crlf", "any"] | None = None
    encoding: Literal["auto", "utf-8", "gbk"] | None = None
    reader: str | None = None


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_every_entry_names_a_factory_and_a_probe_that_exist(key: tuple[str, str]) -> None:
    entry = REGISTRY[key]
    assert callable(entry.load_probe())
    module, _, name = entry.factory.partition(":")
    assert callable(getattr(__import__(module, fromlist=[name]), name))


def test_keypads_share_a_driver_per_port_and_the_rest_get_one_each() -> None:
    devices: list[DeviceConfig] = [
        Device("qr-1", "qr", "serial", port="/dev/ttyQ"),
        Device("kp-2", "keypad", "serial", port="/dev/ttyB", address=2),
        Device("pad-1", "pad", "mqtt"),
        Device("kp-1", "keypad", "serial", port="/dev/ttyB", address=1),
        Device("kp-3", "keypad", "serial", port="/dev/ttyA"),
        Device("pc-1", "pcsc", "pcsc"),
    ]
    groups = driver_groups(devices)
    assert [(g.name, [d.id for d in g.devices]) for g in groups] == [
        ("keypad-line /dev/ttyA", ["kp-3"]),
        ("keypad-line /dev/ttyB", ["kp-2", "kp-1"]),
        ("qr qr-1", ["qr-1"]),
        ("pcsc pc-1", ["pc-1"]),
    ]
    assert entry_for(Device("pad-1", "pad", "mqtt")) is None  # the MQTT gateway serves it


def test_a_serial_device_without_baud_gets_its_kinds_default() -> None:
    assert serial_baud(Device("kp", "keypad", "serial", port="/x")) == 9600
    assert serial_baud(Device("id", "idcard", "serial", port="/x")) == 115200
    assert serial_baud(Device("id", "idcard", "serial", port="/x", baud=9600)) == 9600
