"""The `pcscd` fixture: a pcscd with vpcd's virtual readers for the `pcsc` tests.

If a pcscd already answers (a system one), the tests use it, and cannot restart it. Otherwise the
fixture starts its own (`pcscd --foreground --debug`, logging to a file in the session's temporary
directory) and stops it at the end of the module. pcscd's socket is host-wide, so the tests that use
it (`-m pcsc` marks them) take turns through a lock file: with two test workers (scripts/test), the
module `test_live.py` holds it for all its tests and `doctor`'s PC/SC test for its own. Without pcscd or vpcd the tests are
skipped with the reason; on the project's machines (scripts/bootstrap installs `pcscd` and
`vsmartcard-vpcd`) they run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest
from smartcard import scard

from tests.support.hygiene import outlives_tests

VPCD_CONF = Path("/etc/reader.conf.d/vpcd")
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class VpcdReader:
    """One of vpcd's virtual readers: its PC/SC name and the TCP port a fake card connects to."""

    name: str
    port: int


def read_vpcd_conf(path: Path = VPCD_CONF) -> tuple[str, int]:
    """FRIENDLYNAME and CHANNELID (the first reader's port) from vpcd's reader.conf."""
    text = path.read_text(encoding="utf-8")
    friendly = re.search(r'^\s*FRIENDLYNAME\s+"([^"]+)"', text, re.MULTILINE)
    channel = re.search(r"^\s*CHANNELID\s+(\S+)", text, re.MULTILINE)
    if friendly is None or channel is None:
        raise ValueError(f"{path} has no FRIENDLYNAME or CHANNELID line")
    return friendly.group(1), int(channel.group(1), 0)


def list_readers() -> list[str] | None:
    """pcscd's readers, or None if pcscd does not answer."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult & U32 != scard.SCARD_S_SUCCESS:
        return None
    try:
        hresult, names = scard.SCardListReaders(context, [])
        if hresult & U32 == scard.SCARD_E_NO_READERS_AVAILABLE & U32:
            return []
        return [str(name) for name in names] if hresult & U32 == scard.SCARD_S_SUCCESS else None
    finally:
        scard.SCardReleaseContext(context)


@dataclass
class Pcscd:
    """The pcscd the tests use; `stop`/`start` work only when the fixture owns it."""

    friendly_name: str
    channel: int
    owned: bool
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    def readers(self) -> list[VpcdReader]:
        """vpcd's readers as pcscd names them (`<FRIENDLYNAME> <nn> <slot>`), slot = port offset."""
        found = []
        for name in list_readers() or []:
            if name.startswith(self.friendly_name + " "):
                slot = int(name.rsplit(" ", 1)[1], 16)
                found.append(VpcdReader(name, self.channel + slot))
        return sorted(found, key=lambda reader: reader.port)

    def start(self) -> None:
        """Start our pcscd and wait until vpcd's readers are listed (at most 10 s)."""
        if not self.owned:
            raise RuntimeError("this pcscd was not started by the tests")
        assert self.log_path is not None
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            ["pcscd", "--foreground", "--debug"], stdout=self._log, stderr=subprocess.STDOUT
        )
        outlives_tests(self._process.pid)  # the session's pcscd, even when a test restarts it
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"pcscd exited with status {self._process.returncode}: {self.log_tail()}")
            if len(self.readers()) >= 1:
                return
            time.sleep(POLL_S)
        self.stop()
        raise RuntimeError(f"pcscd did not list vpcd's readers within {READY_TIMEOUT_S} s")

    def stop(self) -> None:
        """Stop our pcscd (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 15) -> str:
        """The end of our pcscd's log, for failure messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


PCSCD_LOCK = Path(tempfile.gettempdir()) / "hallhub-tests-pcscd.lock"
"""Held by whoever uses the machine's pcscd in a test run; every test worker sees the same file."""


@contextlib.contextmanager
def pcscd_turn() -> Iterator[None]:
    """Wait for the machine's pcscd to be free of other test workers, and keep it until the end."""
    with PCSCD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def pcscd_owned_here() -> Iterator[None]:
    """This module's turn with the machine's pcscd (`pcscd_turn`)."""
    with pcscd_turn():
        yield


@pytest.fixture(scope="module")
def pcscd(pcscd_owned_here: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    """A pcscd with vpcd's readers for the module's tests, or a skip that says what is missing."""
    if shutil.which("pcscd") is None:
        pytest.skip("pcscd is not installed (Debian package pcscd; scripts/bootstrap installs it)")
    if not VPCD_CONF.exists():
        pytest.skip(
            f"vpcd is not installed: {VPCD_CONF} is missing (Debian package vsmartcard-vpcd; "
            "scripts/bootstrap installs it)"
        )
    friendly, channel = read_vpcd_conf()
    if list_readers() is not None:
        service = Pcscd(friendly, channel, owned=False)
        if not service.readers():
            pytest.skip(
                f"a pcscd not started by the tests is running without vpcd's '{friendly}' readers; "
                "restart it after installing vsmartcard-vpcd, or stop it"
            )
        yield service
        return
    service = Pcscd(friendly, channel, owned=True, log_path=tmp_path_factory.mktemp("pcscd") / "pcscd.log")
    try:
        service.start()
    except (OSError, RuntimeError) as exc:
        hint = "" if os.geteuid() == 0 else " (pcscd needs root to create /run/pcscd)"
        pytest.skip(f"cannot start pcscd here{hint}: {exc}")
    try:
        yield service
    finally:
        with contextlib.suppress(OSError):
            service.stop()


@pytest.fixture
def vpcd_readers(pcscd: Pcscd) -> list[VpcdReader]:
    """vpcd's two readers, slot 0 first."""
    readers = pcscd.readers()
    if len(readers) < 2:
        pytest.fail(f"expected vpcd's two readers, pcscd lists {readers}: {pcscd.log_tail()}")
    return readers
