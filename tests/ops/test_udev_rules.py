"""config/udev/99-hallhub.rules: valid udev syntax, and names that the rest of hallhub expects.

Two checks. Our own reading of every rule line after udev(7), with what each hallhub rule must say;
and udev's own parser: Debian 12's udevadm (systemd 252) has no `udevadm verify` (systemd 253+),
so `udevadm test` runs in a private mount namespace in which /etc/udev/rules.d holds only the files
under test and /dev and /run are empty tmpfs (it creates links and database files there), and its
complaints about our file are collected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from hub.ops.init_config import STABLE_NAME

RULES = Path(__file__).resolve().parents[2] / "config/udev/99-hallhub.rules"
EXAMPLE = Path(__file__).resolve().parents[2] / "config/node.example.toml"

# KEY, KEY{attribute}, operator, "value" (udev(7): "a comma-separated list of one or more key-operator-value").
PAIR = re.compile(r'\s*([A-Z_]+)(?:\{([^}]+)\})?(==|!=|\+=|-=|:=|=)"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
MATCH_KEYS = {
    "ACTION",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "KERNEL",
    "KERNELS",
    "ATTR",
    "ATTRS",
    "ENV",
    "DRIVERS",
    "TAG",
}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "OWNER", "ENV", "TAG"}


def parse_rule(line: str) -> list[tuple[str, str | None, str, str]]:
    """(key, attribute, operator, value) of each pair; AssertionError at anything else."""
    pairs, position = [], 0
    while position < len(line):
        match = PAIR.match(line, position)
        assert match, f"cannot read from column {position + 1}: {line[position:]!r}"
        pairs.append((match.group(1), match.group(2), match.group(3), match.group(4)))
        position = match.end()
    return pairs


def rule_lines() -> list[str]:
    """The rule lines of the shipped file (no line continuations are used)."""
    lines = RULES.read_text(encoding="utf-8").splitlines()
    assert not any(line.endswith("\\") for line in lines)
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_every_rule_line_parses_and_names_a_hallhub_device() -> None:
    names = []
    for line in rule_lines():
        pairs = parse_rule(line)
        keys = {(key, attr): (op, value) for key, attr, op, value in pairs}
        assert len(keys) == len(pairs), f"a key given twice: {line}"
        for key, attr, op, _value in pairs:
            if op in {"==", "!="}:
                assert key in MATCH_KEYS, f"{key} cannot be matched: {line}"
            else:
                assert key in ASSIGN_KEYS, f"{key} cannot be assigned: {line}"
            assert (attr is not None) == (key in {"ATTR", "ATTRS", "ENV"}), line
        assert keys[("SUBSYSTEM", None)] == ("==", "tty")
        assert re.fullmatch(r"[0-9a-f]{4}", keys[("ATTRS", "idVendor")][1]), (
            "vendor id: 4 lower-case hex digits"
        )
        assert re.fullmatch(r"[0-9a-f]{4}", keys[("ATTRS", "idProduct")][1]), (
            "product id: 4 lower-case hex digits"
        )
        assert keys[("ATTRS", "idVendor")][0] == keys[("ATTRS", "idProduct")][0] == "=="
        op, serial = keys[("ATTRS", "serial")]
        assert op == "==", line
        assert serial, line
        assert keys[("GROUP", None)] == ("=", "dialout")
        assert keys[("MODE", None)] == ("=", "0660")
        op, link = keys[("SYMLINK", None)]
        assert op == "+=", "SYMLINK+= keeps the links other rules make (/dev/serial/by-id)"
        assert link.startswith("hallhub/")
        assert STABLE_NAME.match(link.removeprefix("hallhub/")), f"`hallhub init` would not read {link}"
        names.append(link)
    assert sorted(names) == ["hallhub/idcard-07", "hallhub/keypad-07", "hallhub/qr-07"]
    assert len({line.split("SYMLINK")[0] for line in rule_lines()}) == len(names), (
        "two rules match one device"
    )


def test_the_example_config_uses_these_names() -> None:
    ports = {d.get("port") for d in tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["device"]}
    for line in rule_lines():
        link = {key: value for key, _attr, _op, value in parse_rule(line)}["SYMLINK"]
        assert f"/dev/{link}" in ports


def test_the_parser_rejects_broken_lines() -> None:
    for broken in (
        'SUBSYSTEM=="tty", GROUP="dialout, MODE="0660"',
        'SUBSYSTEM=="tty" MODE="0660"x',
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="0403',
        "SUBSYSTEM==tty",
    ):
        with pytest.raises(AssertionError):
            parse_rule(broken)


def udevadm_test(rules_dir: Path) -> subprocess.CompletedProcess[str]:
    """`udevadm test` of /dev/null's device with only `rules_dir`'s rules, isolated from the host."""
    script = (
        'mount --bind "$1" /etc/udev/rules.d && mount -t tmpfs none /usr/lib/udev/rules.d '
        "&& mount -t tmpfs none /run && mount -t tmpfs none /dev "
        "&& exec udevadm test --action=add /sys/devices/virtual/mem/null"
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(rules_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_udev_parses_the_rules_without_complaint(tmp_path: Path) -> None:
    if shutil.which("udevadm") is None:
        pytest.fail("udevadm is missing: install Debian's udev package (scripts/bootstrap)")
    if os.geteuid() != 0:
        pytest.skip("udevadm test is run in a private mount namespace, which needs root (unshare -m)")
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "98-broken.rules").write_text(
        'SUBSYSTEM=="tty", SYMLNK+="x"\nSUBSYSTEM=="tty", ATTRS{idVendor}="0403"\n'
    )
    result = udevadm_test(tmp_path)
    output = result.stdout + result.stderr
    assert f"Reading rules file: /etc/udev/rules.d/{RULES.name}" in output, output
    ours = [line for line in output.splitlines() if line.startswith(f"/etc/udev/rules.d/{RULES.name}:")]
    assert not ours, ours
    # The same run shows that udev does report mistakes in a rules file.
    assert "98-broken.rules:1 Invalid key 'SYMLNK'" in output
    assert "98-broken.rules:2 Invalid operator for ATTRS" in output


def test_a_keypad_line_is_named_after_a_window_of_its_keypads() -> None:
    """The field guide's rule: one name per adapter; a keypad line is named after its first window."""
    devices = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["device"]
    lines: dict[str, list[dict[str, object]]] = {}
    for device in devices:
        if device.get("port", "").startswith("/dev/hallhub/"):
            lines.setdefault(device["port"], []).append(device)
    for port, on_it in lines.items():
        kind, window = port.removeprefix("/dev/hallhub/").split("-", 1)
        assert {d["kind"] for d in on_it} == {kind}, port
        assert window == min(str(d["window"]) for d in on_it), port
        assert len({d.get("address", 1) for d in on_it}) == len(on_it), (
            f"two keypads at one address on {port}"
        )
    assert len(lines["/dev/hallhub/keypad-07"]) == 2
