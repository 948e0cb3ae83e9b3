"""`hallhub init`: a starter config from the devices found, that always passes `config check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.config import load_config
from hub.ops.init_config import (
    Camera,
    Found,
    InitError,
    discover,
    list_pcsc_readers,
    reader_filter,
    render,
    write_config,
)
from tests.support.cli import run_hallhub


def fake_machine(root: Path) -> tuple[Path, Path]:
    """A /dev and /sys/class/video4linux with two named adapters, two other ports and a camera."""
    dev, video = root / "dev", root / "sys/class/video4linux"
    for name in ("ttyUSB0", "ttyUSB1", "ttyUSB2", "ttyACM0"):
        (dev / name).parent.mkdir(parents=True, exist_ok=True)
        (dev / name).write_text("")
    (dev / "hallhub").mkdir()
    (dev / "hallhub/keypad-07").symlink_to("../ttyUSB0")
    (dev / "hallhub/idcard-07").symlink_to("../ttyUSB1")
    (dev / "hallhub/printer-07").symlink_to("../ttyUSB1")  # not a kind init knows: ignored
    by_id = dev / "serial/by-id"
    by_id.mkdir(parents=True)
    (by_id / "usb-FTDI_FT232R_USB_UART_A10K7KP1-if00-port0").symlink_to("../../ttyUSB0")  # named already
    (by_id / "usb-Prolific_PL2303-if00-port0").symlink_to("../../ttyUSB2")
    (by_id / "usb-Newland_QR-if00").symlink_to("../../ttyACM0")
    for number, index, name in ((0, "0", "USB Camera: HD"), (1, "1", "USB Camera: HD"), (2, "0", "Doc Cam")):
        entry = video / f"video{number}"
        entry.mkdir(parents=True)
        (entry / "index").write_text(index + "\n")
        (entry / "name").write_text(name + "\n")
    return dev, video


def test_discovers_and_writes_a_valid_config(tmp_path: Path) -> None:
    dev, video = fake_machine(tmp_path)
    found = discover(dev, video, readers=lambda: ["ACS ACR122U PICC Interface 00 00", "Virtual PCD 00 01"])
    assert [(p.kind, p.window) for p in found.named] == [("idcard", "07"), ("keypad", "07")]
    assert [p.name for p in found.serial] == ["usb-Newland_QR-if00", "usb-Prolific_PL2303-if00-port0"]
    assert [(c.index, c.name) for c in found.cameras] == [(0, "USB Camera: HD"), (2, "Doc Cam")]

    path = tmp_path / "node.toml"
    write_config(path, render(found, "hall-test", "370102"), force=False)
    config = load_config(path)
    devices = {d.id: d for d in config.device}
    assert sorted(devices) == ["cam-01", "cam-02", "id-07", "kp-07", "pcsc-01", "pcsc-02"]
    assert devices["kp-07"].port == "/dev/hallhub/keypad-07"
    assert (devices["kp-07"].baud, devices["kp-07"].address, devices["kp-07"].window) == (9600, 1, "07")
    assert (devices["id-07"].baud, devices["id-07"].window) == (115200, "07")
    assert devices["pcsc-01"].reader == "ACS ACR122U PICC Interface"
    assert (devices["cam-02"].transport, devices["cam-02"].source) == ("camera", "2")
    assert (config.broker.port, config.broker.username) == (1884, "hub")
    text = path.read_text()
    # Ports of unknown kind are offered commented out, with their stable by-id path filled in.
    assert '# port = "/dev/serial/by-id/usb-Prolific_PL2303-if00-port0"' in text
    assert "usb-FTDI" not in text

    # Uncommenting one offered block as it stands gives a working keypad entry.
    edited = text.replace("# [[device]]", "[[device]]", 1)
    for key in ("id", "kind", "transport", "port", "baud", "address", "window"):
        edited = edited.replace(f"# {key} = ", f"{key} = ", 1)
    write_config(tmp_path / "edited.toml", edited, force=False)
    serial = load_config(tmp_path / "edited.toml").devices_by_id["serial-01"]
    assert (serial.kind, serial.port) == ("keypad", "/dev/serial/by-id/usb-Newland_QR-if00")


def test_nothing_found_is_still_a_valid_config(tmp_path: Path) -> None:
    found = discover(tmp_path / "dev", tmp_path / "sys", readers=lambda: None)
    assert found == Found()
    path = tmp_path / "node.toml"
    write_config(path, render(found, "hall-x", "000000"), force=False)
    assert load_config(path).device == []


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("# mine\n")
    text = render(Found(), "hall-x", "370102")
    with pytest.raises(InitError, match="exists: not overwritten"):
        write_config(path, text, force=False)
    assert path.read_text() == "# mine\n"
    write_config(path, text, force=True)
    assert load_config(path).node.id == "hall-x"


def test_reader_filter_drops_pcscd_numbers() -> None:
    assert reader_filter("Gemalto PC Twin Reader (645D94C3) 00 00") == "Gemalto PC Twin Reader (645D94C3)"
    assert reader_filter("Virtual PCD 00 01") == "Virtual PCD"
    assert reader_filter("Plain") == "Plain"


def test_pcsc_lister_answers_either_way() -> None:
    """With or without a pcscd on this machine, the lister returns quickly and never raises."""
    readers = list_pcsc_readers()
    assert readers is None or all(isinstance(name, str) for name in readers)


def test_command_writes_then_refuses_then_forces(tmp_path: Path) -> None:
    path = tmp_path / "etc/node.toml"
    first = run_hallhub("init", "--output", str(path), "--node-id", "hall-cli", "--hall-code", "370102")
    assert first.returncode == 0, first.stderr
    assert f"wrote {path}" in first.stdout
    assert run_hallhub("config", "check", str(path)).returncode == 0

    again = run_hallhub("init", "--output", str(path), "--hall-code", "370102")
    assert again.returncode == 1
    assert "add --force" in again.stderr
    assert load_config(path).node.id == "hall-cli"

    devices = len(load_config(path).device)  # what this machine has plugged in
    edited = path.read_text() + "# the technician's own note\n"
    path.write_text(edited)
    forced = run_hallhub(
        "init", "--output", str(path), "--force", "--node-id", "hall-new", "--hall-code", "370102"
    )
    assert forced.returncode == 0, forced.stderr
    (backup,) = path.parent.glob("node.toml.*.bak")
    assert backup.read_text() == edited
    assert (
        f"replaced {path} (node hall-cli, {devices} devices); the previous file is kept as {backup}"
        in forced.stdout
    )
    assert load_config(path).node.id == "hall-new"
    bad = run_hallhub(
        "init", "--output", str(tmp_path / "other.toml"), "--node-id", "no spaces", "--hall-code", "370102"
    )
    assert bad.returncode == 1
    assert "node.id" in bad.stderr
    assert not (tmp_path / "other.toml").exists()


def test_init_without_a_hall_code_refuses_rather_than_writing_a_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    result = run_hallhub("init", "--output", str(path), "--node-id", "hall-x")
    assert result.returncode == 2
    assert "--hall-code is missing: give the hall's 6-digit administrative division code" in result.stderr
    assert not path.exists()


def test_init_asks_for_the_hall_code_on_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "init", "--output", str(path), "--node-id", "hall-x"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(controller, b"370102\n")
        stdout, stderr = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert process.returncode == 0, stderr
    assert "administrative division code (node.hall_code)" in stdout
    assert load_config(path).node.hall_code == "370102"


def test_a_found_camera_without_the_camera_extra_is_written_commented_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # as in a core install: OpenCV cannot be imported
    text = render(Found(cameras=[Camera(0, "USB Camera")]), "hall-x", "370102")
    assert "# [[device]]" in text
    assert "needs hallhub's [camera] extra (OpenCV)" in text
    path = tmp_path / "node.toml"
    write_config(path, text, force=False)
    assert load_config(path).device == []
