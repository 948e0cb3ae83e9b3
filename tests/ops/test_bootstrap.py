"""scripts/bootstrap's Debian step against a fake apt-get and dpkg-query on PATH (scripts/lib/apt.sh).

The fakes keep their state in files: which packages are installed, until when another process
holds the dpkg lock, every apt-get call, and which versions of udev the mirror offers. The newest
`udev` would upgrade an installed package (a newer `systemd`), as on a real Debian box whose systemd
is one point release behind; the older `udev` matching the installed systemd, when the mirror still
offers it (Debian's security suite does), upgrades nothing. The checkout is a
copy with a `.venv` that is already up to date, so only the Debian step does anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f=FORMAT PACKAGE: installed when listed in $FAKE_APT/installed
pkg=$(eval echo \\${$#})
grep -qx "$pkg" "$FAKE_APT/installed" && { printf 'install ok installed'; exit 0; }
echo "dpkg-query: no packages found matching $pkg" >&2
exit 1
"""

FAKE_APT_GET = """#!/bin/sh
echo "$*" >> "$FAKE_APT/calls"
if [ -f "$FAKE_APT/lock-until" ] && [ "$(date +%s)" -lt "$(cat "$FAKE_APT/lock-until")" ]; then
  echo "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (unattended-upgr)" >&2
  echo "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?" >&2
  exit 100
fi
case " $* " in
  *" update "*)
    i=0; while [ $i -lt 60 ]; do echo "Hit:$i http://mirror.invalid/debian bookworm InRelease"; i=$((i+1)); done ;;
  *" -s "*)
    for pkg in "$@"; do case "$pkg" in -*|install) ;; udev|udev=252.36-1)
      echo "Inst systemd [252.30-1] (252.36-1 Debian:12.11/stable [amd64])"
      echo "Inst udev (252.36-1 Debian:12.11/stable [amd64])" ;;
      udev=252.30-1) echo "Inst udev (252.30-1 Debian-Security:12/stable-security [amd64])" ;;
      *) echo "Inst $pkg (1.0-1 Debian:12.11/stable [amd64])" ;; esac; done ;;
  *" install "*)
    for pkg in "$@"; do case "$pkg" in -*|install) ;; *)
      echo "Selecting previously unselected package $pkg."
      echo "Unpacking $pkg (1.0-1) ..."
      echo "Setting up $pkg (1.0-1) ..."
      echo "${pkg%%=*}" >> "$FAKE_APT/installed" ;; esac; done ;;
esac
exit 0
"""

FAKE_APT_CACHE = """#!/bin/sh
# apt-cache madison udev: the versions listed in $FAKE_APT/udev-versions, newest first
[ "$1" = madison ] || exit 1
[ "$2" = udev ] || exit 0
while read -r version; do
  echo "      udev | $version | http://mirror.invalid/debian bookworm/main amd64 Packages"
done < "$FAKE_APT/udev-versions"
"""


def _bootstrap_packages() -> list[str]:
    """The Debian packages scripts/bootstrap asks for."""
    text = (REPO / "scripts/bootstrap").read_text()
    start = text.index("DEB_PACKAGES=(") + len("DEB_PACKAGES=(")
    return text[start : text.index(")", start)].split()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of scripts/ with an up-to-date fake .venv, and fake apt-get, dpkg-query and sudo."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / "pyproject.toml").write_text("[project]\nname = 'hallhub'\n")
    venv = root / ".venv/bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\necho 'fake venv python must not be used' >&2\nexit 3\n")
    (venv / "python").chmod(0o755)
    old = time.time() - 3600
    os.utime(root / "pyproject.toml", (old, old))
    (root / ".venv/.hallhub-installed").touch()
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    for name, text in (
        ("dpkg-query", FAKE_DPKG_QUERY),
        ("apt-get", FAKE_APT_GET),
        ("apt-cache", FAKE_APT_CACHE),
        ("sudo", '#!/bin/sh\nexec "$@"\n'),
    ):
        (fake / "bin" / name).write_text(text)
        (fake / "bin" / name).chmod(0o755)
    absent = {"mosquitto", "udev", "faketime"}
    (fake / "installed").write_text("".join(f"{p}\n" for p in _bootstrap_packages() if p not in absent))
    (fake / "calls").touch()
    (fake / "udev-versions").write_text("252.36-1\n")
    return root


def run_bootstrap(checkout: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """scripts/bootstrap of the copy with the fakes first on PATH; and how long it took."""
    fake = checkout.parent / "fake"
    started = time.monotonic()
    result = subprocess.run(
        [str(checkout / "scripts/bootstrap")],
        env={
            **os.environ,
            "PATH": f"{fake / 'bin'}:{os.environ['PATH']}",
            "FAKE_APT": str(fake),
            "APT_LOCK_POLL_S": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


def test_a_held_lock_is_waited_for_then_only_the_missing_packages_are_installed(checkout: Path) -> None:
    fake = checkout.parent / "fake"
    (fake / "lock-until").write_text(str(int(time.time()) + 2))
    result, _elapsed = run_bootstrap(checkout)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "waiting up to 600 s for another package manager to finish" in result.stderr
    assert "held by process 4242 (unattended-upgr)" in result.stderr
    assert "root" not in out
    assert "mirror" not in out
    installed = (fake / "installed").read_text().split()
    assert {"mosquitto", "faketime"} <= set(installed)
    assert "udev" not in installed, "every udev the mirror offers would have upgraded systemd"
    assert "not installing udev: it would upgrade systemd on this machine" in result.stderr
    assert "bootstrap: installed mosquitto faketime" in result.stdout
    # Quiet: apt's ~60 lines of update and the dpkg lines of each package are not shown.
    assert len(out.splitlines()) <= 8, out
    calls = (fake / "calls").read_text().splitlines()
    real_installs = [c for c in calls if c.startswith("install -y")]
    assert real_installs, calls
    assert all("--no-upgrade" in c and "--no-install-recommends" in c for c in real_installs)


def test_a_lock_that_stays_held_is_reported_as_such_within_the_limit(checkout: Path) -> None:
    fake = checkout.parent / "fake"
    (fake / "lock-until").write_text(str(int(time.time()) + 3600))
    result, elapsed = run_bootstrap(checkout, APT_LOCK_WAIT_S="2")
    assert elapsed < 20
    assert "another package manager still holds the dpkg lock after 2 s" in result.stderr
    assert "held by process 4242" in result.stderr
    assert "root" not in result.stderr
    assert "mirror" not in result.stderr
    assert "mosquitto" not in (fake / "installed").read_text().split()


def test_nothing_missing_means_no_apt_get_at_all(checkout: Path) -> None:
    fake = checkout.parent / "fake"
    (fake / "installed").write_text("".join(f"{p}\n" for p in _bootstrap_packages()))
    result, _elapsed = run_bootstrap(checkout)
    assert result.returncode == 0, result.stderr
    assert (fake / "calls").read_text() == ""
    assert result.stdout == ""


def test_the_udev_matching_the_installed_systemd_is_taken_when_the_newest_would_upgrade_it(
    checkout: Path,
) -> None:
    fake = checkout.parent / "fake"
    (fake / "udev-versions").write_text("252.36-1\n252.30-1\n")
    result, _elapsed = run_bootstrap(checkout)
    assert result.returncode == 0, result.stderr
    assert "taking udev 252.30-1, the version that matches what this machine has" in result.stdout
    assert "udev" in (fake / "installed").read_text().split()
    real_installs = [c for c in (fake / "calls").read_text().splitlines() if c.startswith("install -y")]
    assert any("udev=252.30-1" in c and "--no-upgrade" in c for c in real_installs), real_installs
    assert not any(" udev " in f" {c} " for c in real_installs), "the newest udev is never asked for"
