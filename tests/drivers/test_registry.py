"""The driver registry: every entry resolves, devices group the way their drivers serve them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pytest

from drivers.registry import KINDS, REGISTRY, DeviceConfig, KindRule, driver_groups, entry_for, serial_baud
from hub.config import ConfigError, parse_config
from hub.ingest.intake import channel_of
from tests.support.hub import node_raw


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


def test_a_vendor_keypad_is_a_kind_rule_and_a_driver_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Adding a device kind touches the registry only: the config, the rating channel and the driver
    groups read it (HKP/1's driver stands in for the vendor's own here)."""
    monkeypatch.setitem(KINDS, "vkeypad", KindRule(("serial",), channel="keypad", needs_window=True))
    keypad = REGISTRY[("keypad", "serial")]
    monkeypatch.setitem(REGISTRY, ("vkeypad", "serial"), replace(keypad, kind="vkeypad", shares_port=False))
    device = {"id": "vk-07", "kind": "vkeypad", "transport": "serial", "port": "/dev/hallhub/vk-07"}
    config = parse_config(node_raw(tmp_path, 1883, [{**device, "window": "07"}]))
    (section,) = config.device
    assert section.kind == "vkeypad"
    assert [group.entry.kind for group in driver_groups(config.device)] == ["vkeypad"]
    assert channel_of("vkeypad") == "keypad"
    with pytest.raises(ConfigError, match=r"device\[0\]\.window: .* is a vkeypad: set the window"):
        parse_config(node_raw(tmp_path, 1883, [device]))
    with pytest.raises(ConfigError, match=r"device\[0\]\.transport: a vkeypad cannot use transport \"mqtt\""):
        parse_config(node_raw(tmp_path, 1883, [{**device, "transport": "mqtt", "port": None}]))
    with pytest.raises(ConfigError, match=r"device\[0\]\.kind: expected one of 'keypad', .* got 'other'"):
        parse_config(node_raw(tmp_path, 1883, [{**device, "kind": "other"}]))
