"""scripts/build-deb: the .deb's metadata and files, and the package installed, upgraded and removed
by dpkg itself in a throw-away root.

`dpkg --root=ROOT --force-script-chrootless` unpacks into ROOT with its own database there and runs
the maintainer scripts on this machine with DPKG_ROOT=ROOT, so the postinst lays the node out under
ROOT exactly as install-node --prefix does; `--force-depends` because ROOT has no Debian system in it
(Mosquitto and Python are this machine's). Nothing outside ROOT is touched. One core-only build
(about a minute) serves every test in the module.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub import __version__
from tests.ops.node import REPO
from tests.ops.test_install import OPTIONAL, systemd_root, verify

BUILD_DEB = REPO / "scripts" / "build-deb"


def _run(*command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`command`, its output captured; never raises on failure."""
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    """A core-only hallhub .deb built by scripts/build-deb (the slow part, once per module): gzip, as
    xz took 17 of the build's 35 s, gzip's fastest level takes ~3, and dpkg unpacks either alike."""
    out = Path(tempfile.mkdtemp(prefix="hallhub-deb-out-"))
    try:
        result = _run(BUILD_DEB, "--out", out, "--compression", "gzip", timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        (built,) = out.glob("*.deb")
        yield built
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _python_package() -> str:
    """The Debian package of the Python the venv is built with (python3.11 on bookworm)."""
    return Path(os.path.realpath("/usr/bin/python3")).name


def test_the_package_is_named_and_depends_as_debian_expects(deb: Path) -> None:
    arch = _run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"hallhub_{__version__}_{arch}.deb"
    fields = _run("dpkg-deb", "--field", deb, "Package", "Version", "Architecture", "Depends").stdout
    assert f"Package: hallhub\nVersion: {__version__}\nArchitecture: {arch}\n" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.MULTILINE)
    assert depends is not None
    assert depends.group(1).split(", ") == [_python_package(), "mosquitto"]  # the core: no pcscd, no libzbar0


def test_the_files_are_roots_and_none_is_config(deb: Path) -> None:
    """Every file root's (the hub runs as hallhub and must not change its own program); nothing under
    /etc, so dpkg never replaces a node's config: postinst writes /etc/hallhub once and keeps it."""
    listing = _run("dpkg-deb", "--contents", deb).stdout.splitlines()
    entries = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split() for line in listing}
    assert all(fields[1] == "root/root" for fields in entries.values())
    assert not any(path.startswith("./etc") for path in entries)
    assert entries["./opt/hallhub/venv/bin/hallhub"][0] == "-rwxr-xr-x"
    assert entries["./opt/hallhub/lib/scripts/install-node"][0] == "-rwxr-xr-x"
    assert entries["./opt/hallhub/lib/systemd/hallhub.service"][0] == "-rw-r--r--"
    assert not any("/setuptools/" in path for path in entries)
    assert not any(fields[0][8] == "w" for fields in entries.values() if not fields[0].startswith("l"))


def _dpkg(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """dpkg on the throw-away `root`, its maintainer scripts run here with DPKG_ROOT=root."""
    return _run(
        "dpkg",
        f"--root={root}",
        "--force-depends",
        "--force-script-chrootless",
        "--force-not-root",
        *args,
        timeout=300,
    )


def _empty_root(root: Path) -> Path:
    """A directory with an empty dpkg database."""
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    return root


def _with_version(deb: Path, version: str, out: Path) -> Path:
    """The same package as `version`: what an upgrade looks like to dpkg, without a second build."""
    tree = out / "tree"
    out.mkdir()
    assert _run("dpkg-deb", "--raw-extract", deb, tree).returncode == 0
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    newer = out / f"hallhub_{version}.deb"
    built = _run("dpkg-deb", "--root-owner-group", "-Znone", "--build", tree, newer, timeout=300)
    assert built.returncode == 0, built.stderr
    return newer


def mode(path: Path) -> int:
    """Permission bits."""
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    """The package installed by dpkg into a throw-away root (removed afterwards)."""
    root = _empty_root(Path(tempfile.mkdtemp(prefix="hallhub-dpkg-root-")))
    try:
        result = _dpkg(root, "--install", deb)
        assert result.returncode == 0, result.stderr
        assert "install-node: created" in result.stdout  # postinst ran the installed install-node
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_postinst_lays_out_the_node_with_its_modes(installed: Path) -> None:
    etc = installed / "etc/hallhub"
    assert (etc / "node.toml").read_text() == (REPO / "config/node.example.toml").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", (etc / "secret").read_text())
    assert mode(etc) == 0o750
    assert mode(etc / "secret") == 0o600
    for name in ("node.toml", "broker-password", "pull-token", "control-token", "central-token"):
        assert mode(etc / name) == 0o640, name
    assert mode(installed / "var/lib/hallhub") == 0o750
    broker = installed / "etc/mosquitto/hallhub"
    assert re.fullmatch(r"hub:\$7\$\S+\n", (broker / "hub.passwd").read_text())
    assert mode(broker / "hub.passwd") == 0o640
    assert (installed / "etc/systemd/system/hallhub.service").read_bytes() == (
        REPO / "systemd/hallhub.service"
    ).read_bytes()
    assert (installed / "etc/udev/rules.d/99-hallhub.rules").is_file()
    assert mode(installed / "opt/hallhub/venv/bin/hallhub") == 0o755


@pytest.mark.slow
def test_the_venv_runs_where_it_was_unpacked_with_the_core_only(installed: Path) -> None:
    python = installed / "opt/hallhub/venv/bin/python"
    assert _run(python, "-m", "hub", "version").stdout.strip() == __version__
    probe = f"import importlib.util as u; print([m for m in {OPTIONAL!r} if u.find_spec(m)])"
    assert _run(python, "-c", probe).stdout.strip() == "[]"
    hallhub = (installed / "opt/hallhub/venv/bin/hallhub").read_text()
    assert hallhub.startswith("#!/opt/hallhub/venv/bin/python\n")
    assert "/opt/hallhub/venv" in (installed / "opt/hallhub/venv/pyvenv.cfg").read_text()
    named = _run("grep", "-rlF", "hallhub-deb.", installed / "opt/hallhub")
    assert named.stdout == ""  # no script or bytecode names the build directory


@pytest.mark.slow
def test_the_core_package_serves_the_reference_receiver_on_sqlite(installed: Path, tmp_path: Path) -> None:
    """psycopg is the postgres extra: a core install's receiver opens SQLite, and asked for PostgreSQL
    says which extra to install, on one line although piped (no wrap at 80 columns)."""
    python = installed / "opt/hallhub/venv/bin/python"
    probe = (
        "import sys; from sync.receiver import open_store; open_store(sys.argv[1]);"
        "print(sorted(m for m in sys.modules if m.startswith('psycopg')))"
    )
    opened = _run(python, "-c", probe, f"sqlite:///{tmp_path}/central.db")
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == "[]"
    central = _run(
        python, "-m", "hub", "central", "--db", "postgresql://u@127.0.0.1:1/central", "--token", "t"
    )
    assert central.returncode == 1
    (line,) = central.stderr.splitlines()
    assert "a postgresql:// database needs hallhub's [postgres] extra (psycopg, psycopg-pool)" in line
    assert "pip install 'hallhub[postgres]'" in line


@pytest.mark.slow
def test_systemd_accepts_the_installed_unit(installed: Path) -> None:
    checked = verify(systemd_root(installed), "hallhub.service", "mosquitto.service")
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == "", checked.stderr


@pytest.mark.slow
def test_upgrades_in_place_keeping_config_secrets_and_data_then_removes(deb: Path, tmp_path: Path) -> None:
    root = _empty_root(tmp_path / "root")
    assert _dpkg(root, "--install", deb).returncode == 0
    etc = root / "etc/hallhub"
    broker = root / "etc/mosquitto/hallhub"
    (etc / "node.toml").write_text("# the technician's own config\n")
    (etc / "central-token").write_text("platform-token\n")
    (broker / "mosquitto.conf").write_text((broker / "mosquitto.conf").read_text() + "max_connections 100\n")
    (root / "var/lib/hallhub/outbox.db").write_bytes(b"records")
    kept = {p: p.read_bytes() for p in (*etc.iterdir(), root / "var/lib/hallhub/outbox.db")}
    hub_account = (broker / "hub.passwd").read_text().split(":")[0]

    upgraded = _dpkg(root, "--install", _with_version(deb, f"{__version__}+1", tmp_path / "newer"))
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"kept {etc}/node.toml" in upgraded.stdout
    assert {p: p.read_bytes() for p in kept} == kept
    assert (broker / "hub.passwd").read_text().split(":")[0] == hub_account  # hashed again, same password
    assert (broker / "mosquitto.conf").read_text().endswith("max_connections 100\n")
    assert (broker / "mosquitto.conf.new").read_bytes() == (
        REPO / "config/mosquitto/hallhub.conf"
    ).read_bytes()
    status = _run("dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "hallhub").stdout
    assert status == f"hallhub\t{__version__}+1\n"
    assert _run(root / "opt/hallhub/venv/bin/python", "-m", "hub", "version").returncode == 0

    # Remove, then purge: the program and the units go; the outbox stays (it may hold unsent records).
    assert _dpkg(root, "--remove", "hallhub").returncode == 0
    assert not (root / "opt/hallhub/venv").exists()
    assert not (root / "etc/systemd/system/hallhub.service").exists()
    assert (etc / "node.toml").is_file()
    purged = _dpkg(root, "--purge", "hallhub")
    assert purged.returncode == 0, purged.stderr
    assert not etc.exists()
    assert not broker.exists()
    assert (root / "var/lib/hallhub/outbox.db").read_bytes() == b"records"
    assert "kept /var/lib/hallhub" in purged.stdout


def test_a_compression_dpkg_is_not_asked_for_is_refused_before_building() -> None:
    result = _run(BUILD_DEB, "--compression", "bzip2", timeout=30)
    assert result.returncode == 1
    assert "--compression must be xz or gzip, not 'bzip2'" in result.stderr
    assert "--compression T  xz (default" in _run(BUILD_DEB, "--help", timeout=30).stdout
