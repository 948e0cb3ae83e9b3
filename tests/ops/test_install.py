"""scripts/install-node: the files it lays out, what an upgrade keeps, the real venv, and the units.

The systemd units are checked with `systemd-analyze verify --root=PREFIX`: systemd loads them as it
would on the node (with the installed drop-in, Debian's mosquitto.service and the standard targets
copied from this machine), and fails on a command that is not there. Unknown keys and bad values are
only warnings to systemd, so the check also requires that it prints nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import __version__
from tests.ops.node import INSTALL_NODE, REPO, run_install

NOBODY = "65534"


def _packages() -> tuple[str, ...]:
    """The top-level packages pyproject.toml builds into the wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return tuple(pattern.removesuffix("*") for pattern in patterns)


PACKAGES = _packages()


def test_install_node_builds_the_wheel_from_every_package() -> None:
    """A package missing from the copy install-node builds from is a wheel that cannot import."""
    listed = re.search(r"^PARTS=\((.*)\)$", INSTALL_NODE.read_text(), re.MULTILINE)
    assert listed is not None
    assert set(PACKAGES) <= set(listed.group(1).split())


def mode(path: Path) -> int:
    """Permission bits."""
    return stat.S_IMODE(path.lstat().st_mode)


def test_fresh_install_layout(installed: Path) -> None:
    etc = installed / "etc/hallhub"
    assert (etc / "node.toml").read_text() == (REPO / "config/node.example.toml").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", (etc / "secret").read_text())
    for token in ("broker-password", "pull-token", "control-token"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}\n", (etc / token).read_text())
    assert (etc / "central-token").read_text() == ""
    assert mode(etc) == 0o750
    assert mode(etc / "secret") == 0o600
    for name in ("node.toml", "broker-password", "pull-token", "control-token", "central-token"):
        assert mode(etc / name) == 0o640, name
    assert mode(installed / "var/lib/hallhub") == 0o750

    broker = installed / "etc/mosquitto/hallhub"
    assert (broker / "mosquitto.conf").read_bytes() == (REPO / "config/mosquitto/hallhub.conf").read_bytes()
    assert (broker / "devices.acl").read_bytes() == (REPO / "config/mosquitto/devices.acl").read_bytes()
    assert (broker / "hub.acl").read_bytes() == (REPO / "config/mosquitto/hub.acl").read_bytes()
    assert (broker / "devices.passwd").read_text() == ""
    assert re.fullmatch(r"hub:\$7\$\S+\n", (broker / "hub.passwd").read_text())
    for name in ("mosquitto.conf", "devices.acl", "hub.acl", "devices.passwd", "hub.passwd"):
        assert mode(broker / name) == 0o640, name

    units = installed / "etc/systemd/system"
    assert (units / "hallhub.service").read_bytes() == (REPO / "systemd/hallhub.service").read_bytes()
    assert (units / "mosquitto.service.d/hallhub.conf").is_file()
    assert (installed / "etc/modules-load.d/hallhub.conf").is_file()
    assert (installed / "etc/udev/rules.d/99-hallhub.rules").is_file()
    assert os.readlink(installed / "usr/local/bin/hallhub") == "/opt/hallhub/venv/bin/hallhub"
    assert not (installed / "opt/hallhub/venv").exists()  # --skip-venv


def test_a_second_run_keeps_config_secrets_and_data(installed: Path) -> None:
    etc = installed / "etc/hallhub"
    broker = installed / "etc/mosquitto/hallhub"
    (etc / "node.toml").write_text("# the technician's own config\n")
    (etc / "central-token").write_text("platform-token\n")
    (etc / "secret").chmod(0o644)  # loosened by hand: tightened again, content kept
    (broker / "mosquitto.conf").write_text((broker / "mosquitto.conf").read_text() + "max_connections 100\n")
    (installed / "var/lib/hallhub/outbox.db").write_bytes(b"records")
    (installed / "etc/udev/rules.d/99-hallhub.rules").write_text("# site rules\n")
    kept = {
        p: p.read_bytes()
        for p in (etc / "node.toml", etc / "secret", etc / "broker-password", etc / "pull-token")
    }

    result = run_install(installed, "--skip-venv")
    assert result.returncode == 0, result.stderr

    assert {p: p.read_bytes() for p in kept} == kept
    assert (etc / "central-token").read_text() == "platform-token\n"
    assert mode(etc / "secret") == 0o600
    assert (installed / "var/lib/hallhub/outbox.db").read_bytes() == b"records"
    assert (broker / "mosquitto.conf").read_text().endswith("max_connections 100\n")
    assert (broker / "mosquitto.conf.new").read_bytes() == (
        REPO / "config/mosquitto/hallhub.conf"
    ).read_bytes()
    assert (installed / "etc/udev/rules.d/99-hallhub.rules").read_text() == "# site rules\n"
    assert (installed / "etc/udev/rules.d/99-hallhub.rules.new").is_file()
    assert "kept your" in result.stdout
    assert f"kept {etc}/node.toml" in result.stdout


@pytest.fixture
def readable_source(prefix: Path) -> Path:
    """The parts of this checkout install-node reads, copied where any account can read them."""
    source = prefix / "src"
    for part in ("scripts", "config", "systemd", "docs", *PACKAGES):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    return source


def run_as_nobody(source: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """install-node as an unprivileged account (nobody through setpriv when we are root)."""
    command = [str(source / "scripts/install-node"), *args]
    if os.geteuid() == 0:
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_without_root_under_a_prefix(readable_source: Path, prefix: Path) -> None:
    target = prefix / "node"
    target.mkdir()
    if os.geteuid() == 0:
        os.chown(target, int(NOBODY), int(NOBODY))
    result = run_as_nobody(readable_source, "--prefix", str(target), "--skip-venv")
    assert result.returncode == 0, result.stderr
    assert "no system user created under a prefix" in result.stdout
    assert "no Debian packages installed" in result.stdout
    assert (target / "etc/hallhub/node.toml").is_file()
    assert mode(target / "etc/hallhub/secret") == 0o600
    owner = int(NOBODY) if os.geteuid() == 0 else os.geteuid()
    assert (target / "etc/hallhub/secret").stat().st_uid == owner


def test_refuses_to_install_to_root_without_root(readable_source: Path) -> None:
    result = run_as_nobody(readable_source, "--skip-venv")
    assert result.returncode == 1
    assert "installing to / needs root: run it with sudo" in result.stderr


def test_rejects_unknown_options(prefix: Path) -> None:
    result = run_install(prefix, "--skip-venv", "--frobnicate")
    assert result.returncode == 2
    assert "unknown option --frobnicate" in result.stderr
    assert not (prefix / "etc").exists()


SANDBOX = """
set -eu
mount -t overlay overlay -o lowerdir=/etc,upperdir=$1/etc.up,workdir=$1/etc.work /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir=$1/var.up,workdir=$1/var.work /var/lib
mount --bind "$1/opt" /opt
mount --bind "$1/bin" /usr/local/bin
"$2" --skip-venv --no-apt
"$2" --skip-venv --no-apt
id hallhub
as() { setpriv --reuid="$1" --regid="$1" --init-groups sh -c "$2" && echo "$1 can: $2" || echo "$1 cannot: $2"; }
as hallhub 'cat /etc/hallhub/node.toml /etc/hallhub/secret /etc/hallhub/broker-password /etc/hallhub/pull-token >/dev/null'
as hallhub 'touch /var/lib/hallhub/outbox.db'
as hallhub 'echo x >> /etc/hallhub/node.toml'
as hallhub 'cat /etc/mosquitto/hallhub/hub.passwd'
as mosquitto 'cat /etc/mosquitto/hallhub/mosquitto.conf /etc/mosquitto/hallhub/*.passwd /etc/mosquitto/hallhub/*.acl >/dev/null'
as mosquitto 'cat /etc/hallhub/broker-password'
as nobody 'cat /etc/hallhub/node.toml'
"""


def test_install_to_root_in_a_sandbox(prefix: Path) -> None:
    """install-node to / as root, twice, in a private mount namespace whose /etc, /var/lib, /opt and
    /usr/local/bin writes land in overlays under `prefix`: the user, the owners and who can read what."""
    if os.geteuid() != 0:
        pytest.skip("installing to / is sandboxed in a mount namespace, which needs root (unshare -m)")
    for name in ("etc.up", "etc.work", "var.up", "var.work", "opt", "bin"):
        (prefix / name).mkdir()
    host_passwd = Path("/etc/passwd").read_bytes()
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SANDBOX,
            "sh",
            str(prefix),
            str(INSTALL_NODE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "created system user hallhub (in dialout and video)" in out
    assert "user hallhub exists (in dialout and video)" in out  # the second run
    assert re.search(r"groups=\d+\(hallhub\),20\(dialout\),\d+\(video\)", out), out
    for line in (
        "hallhub can: cat /etc/hallhub/node.toml",
        "hallhub can: touch /var/lib/hallhub/outbox.db",
        "hallhub cannot: echo x >> /etc/hallhub/node.toml",
        "hallhub cannot: cat /etc/mosquitto/hallhub/hub.passwd",
        "mosquitto can: cat /etc/mosquitto/hallhub/mosquitto.conf",
        "mosquitto cannot: cat /etc/hallhub/broker-password",
        "nobody cannot: cat /etc/hallhub/node.toml",
    ):
        assert line in out, out
    assert (prefix / "etc.up/hallhub/node.toml").is_file()
    assert (prefix / "bin/hallhub").is_symlink()
    assert Path("/etc/passwd").read_bytes() == host_passwd  # the host is untouched


# -- the real thing: a venv with hallhub and its dependencies, and systemd's view of the units --------


@pytest.fixture(scope="module")
def venv_node() -> Iterator[Path]:
    """install-node --prefix ROOT --extras none: a real venv with the core only (the slow path, once)."""
    root = Path(tempfile.mkdtemp(prefix="hallhub-venv-"))
    try:
        result = run_install(root, "--extras", "none")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "the core only" in result.stdout
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


OPTIONAL = ("cv2", "numpy", "zxingcpp", "pyzbar", "smartcard", "psycopg", "sqlalchemy", "sqlmodel", "psutil")
"""Modules of the extras (and of the benchmarks): none of them in a core install."""

CORE_VENV_MAX_MB = 100


def _hallhub(node: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The installed `hallhub` with `args`."""
    return subprocess.run(
        [node / "opt/hallhub/venv/bin/hallhub", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _present(node: Path, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` the installed venv can import."""
    probe = f"import importlib.util as u; print(' '.join(m for m in {modules!r} if u.find_spec(m)))"
    result = subprocess.run(
        [node / "opt/hallhub/venv/bin/python", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.split()


def tree_mb(path: Path) -> float:
    """Bytes of the regular files under `path`, in MB."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


@pytest.mark.slow
def test_the_core_venv_is_slim_and_each_command_names_the_extra_a_device_needs(venv_node: Path) -> None:
    version = _hallhub(venv_node, "version")
    assert version.stdout.strip() == __version__, version.stderr
    assert _present(venv_node, OPTIONAL) == []
    assert tree_mb(venv_node / "opt/hallhub/venv") <= CORE_VENV_MAX_MB

    # The example config has a camera and a PC/SC reader: every command names the extra and the command.
    config = venv_node / "etc/hallhub/node.toml"
    camera = 'device[4].transport: device "cam-01" needs hallhub\'s [camera] extra (OpenCV, NumPy, zxing-cpp)'
    pcsc = 'device[5].transport: device "pcsc-01" needs hallhub\'s [pcsc] extra (pyscard)'
    check = _hallhub(venv_node, "config", "check", config)
    assert check.returncode == 1
    for needed in (camera, pcsc):
        assert needed in check.stderr, check.stderr
    assert "sudo ./scripts/install-node --extras camera" in check.stderr
    assert "-m pip install 'hallhub[pcsc]'" in check.stderr
    run = _hallhub(venv_node, "run", "--config", config)
    assert run.returncode == 1
    assert camera in run.stderr
    assert "Traceback" not in run.stderr
    doctor = _hallhub(venv_node, "doctor", "--config", config, "--timeout", "1")
    assert doctor.returncode == 1
    assert "cam-01" in doctor.stdout
    assert "[camera] extra" in doctor.stdout
    assert _hallhub(venv_node, "config", "extras", config).stdout.split() == ["camera", "pcsc"]


@pytest.mark.slow
def test_install_node_adds_the_extras_the_config_needs(venv_node: Path) -> None:
    """Run again without --extras (an upgrade): it installs what node.toml's devices need, no more."""
    result = run_install(venv_node)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "installing the extras the devices need: camera,pcsc" in result.stdout
    assert set(_present(venv_node, OPTIONAL)) == {"cv2", "numpy", "zxingcpp", "pyzbar", "smartcard"}
    check = _hallhub(venv_node, "config", "check", venv_node / "etc/hallhub/node.toml")
    assert check.returncode == 0, check.stderr
    assert "ok" in check.stdout


def systemd_root(root: Path) -> Path:
    """Make `root` look like a Debian node to systemd: its unit directory and the commands units run."""
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True
    )
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")
    for command in ("/usr/sbin/mosquitto", "/usr/bin/mkdir", "/usr/bin/chown", "/usr/bin/kill"):
        target = root / command.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(command, target)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of installed units, inside `root`."""
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_systemd_accepts_the_installed_units(venv_node: Path) -> None:
    root = systemd_root(venv_node)
    result = verify(root, "hallhub.service", "mosquitto.service")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr

    # The check is not blind: a misspelt key and a missing program are both caught.
    units = root / "etc/systemd/system"
    text = (units / "hallhub.service").read_text()
    (units / "typo.service").write_text(text.replace("WatchdogSec=", "WatchdogSecs="))
    typo = verify(root, "typo.service")
    assert "Unknown key 'WatchdogSecs'" in typo.stderr
    (units / "missing.service").write_text(
        text.replace("/opt/hallhub/venv/bin/hallhub", "/opt/nowhere/hallhub")
    )
    missing = verify(root, "missing.service")
    assert missing.returncode != 0
    assert "/opt/nowhere/hallhub is not executable" in missing.stderr
