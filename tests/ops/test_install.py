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
    """install-node --prefix ROOT with the venv (pip install of this checkout): the slow path, once."""
    root = Path(tempfile.mkdtemp(prefix="hallhub-venv-"))
    try:
        result = run_install(root)
        assert result.returncode == 0, result.stderr[-3000:]
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_the_venv_runs_hallhub(venv_node: Path) -> None:
    hallhub = venv_node / "opt/hallhub/venv/bin/hallhub"
    version = subprocess.run([hallhub, "version"], capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == __version__
    check = subprocess.run(
        [hallhub, "config", "check", venv_node / "etc/hallhub/node.toml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
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
