"""`hallhub run` under a systemd-like supervisor: READY, WATCHDOG and STOPPING on NOTIFY_SOCKET.

The test plays systemd's part: it binds the unix datagram socket named by NOTIFY_SOCKET, starts the
hub as a process with WATCHDOG_USEC set, and reads what arrives. The outbox writer is made stuck for
real, by holding SQLite's write lock from another connection (`BEGIN EXCLUSIVE`), and the watchdog
pings must stop for as long as the lock is held, then come back.
"""

from __future__ import annotations

import itertools
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.ops.broker import MosquittoBroker
from tests.support.hub import HubProcess, process_config, terminals

WATCHDOG_USEC = 2_000_000  # WatchdogSec=2: the hub pings every 1 s
PING_S = WATCHDOG_USEC / 2 / 1_000_000


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: an abstract unix datagram socket, with arrival times."""

    def __init__(self) -> None:
        self.name = f"@hallhub-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.received: list[tuple[float, str]] = []

    def wait_for(self, message: str, timeout: float) -> float:
        """Read until `message` arrives; return its arrival time (monotonic)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.received.append((now, line))
                if line == message:
                    return now
        raise AssertionError(f"no {message} within {timeout} s; got {[m for _, m in self.received]}")

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Everything that arrives in the next `seconds`."""
        got: list[tuple[float, str]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            got += [(time.monotonic(), line) for line in data.decode().splitlines()]
        self.received += got
        return got

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    """A bound NOTIFY_SOCKET for one test."""
    sock = NotifySocket()
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def hub_process(
    tmp_path: Path, broker: MosquittoBroker, notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HubProcess]:
    """`hallhub run` with NOTIFY_SOCKET and WATCHDOG_USEC in its environment, as systemd sets them."""
    config_path, api_port = process_config(tmp_path, broker.port, terminals(1))
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.name)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    process = HubProcess(config_path, api_port, tmp_path / "hub.log")
    process.start()
    try:
        yield process
    finally:
        process.stop_quietly()


def watchdogs(messages: list[tuple[float, str]]) -> list[float]:
    """Arrival times of WATCHDOG=1."""
    return [at for at, line in messages if line == "WATCHDOG=1"]


@pytest.mark.slow
def test_ready_watchdog_and_stopping(hub_process: HubProcess, notify_socket: NotifySocket) -> None:
    notify_socket.wait_for("READY=1", timeout=20)
    beats = watchdogs(notify_socket.collect(4.5))
    assert len(beats) >= 3, notify_socket.received
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    # Half of WatchdogSec plus the time an empty transaction takes: clearly below the full interval.
    assert all(0.7 * PING_S <= gap <= 1.8 * PING_S for gap in gaps), gaps

    assert hub_process.process is not None
    hub_process.process.send_signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", timeout=10)
    assert hub_process.process.wait(30) == 0


@pytest.mark.slow
def test_no_watchdog_while_the_outbox_writer_is_stuck(
    hub_process: HubProcess, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    notify_socket.wait_for("READY=1", timeout=20)
    notify_socket.wait_for("WATCHDOG=1", timeout=5)

    # Hold SQLite's write lock: the writer's BEGIN IMMEDIATE waits, then fails with "locked".
    blocker = sqlite3.connect(tmp_path / "data" / "outbox.db", isolation_level=None, timeout=10)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        during = notify_socket.collect(4 * PING_S + 0.5)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    released_at = time.monotonic()

    # A ping that committed just before the lock may still report; none may after that.
    late = [at for at in watchdogs(during) if at > locked_at + 0.5 * PING_S]
    assert not late, f"WATCHDOG=1 at {[round(at - locked_at, 2) for at in late]} s with the writer stuck"

    # Once the lock is gone the writer answers again, and so do the pings, at their usual pace.
    first = notify_socket.wait_for("WATCHDOG=1", timeout=7 * PING_S)
    second = notify_socket.wait_for("WATCHDOG=1", timeout=2 * PING_S)
    assert first - released_at < 7 * PING_S
    assert 0.7 * PING_S <= second - first <= 1.8 * PING_S
    log = (tmp_path / "hub.log").read_text()
    assert "watchdog: the outbox writer did not answer" in log
