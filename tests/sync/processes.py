"""`hallhub central` and `hallhub central pull` as child processes, for multi-process and kill -9 tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hub.ops.broker import free_port, port_open
from tests.support.child import ChildProcess


class CentralProcess(ChildProcess):
    """One `hallhub central …` process; its output goes to a log file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id (started processes only)."""
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start it (output appended to the log)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub", "central", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
            )

    def log(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        """Whether it is still alive."""
        return self.process is not None and self.process.poll() is None


def start_receiver_process(
    db_url: str, table: str, token: str, log_path: Path, *extra: str
) -> tuple[CentralProcess, str]:
    """A `hallhub central` receiver on a free loopback port, started and answering; (process, url)."""
    port = free_port()
    process = CentralProcess(
        ["--listen", f"127.0.0.1:{port}", "--db", db_url, "--table", table, "--token", token, *extra],
        log_path,
    )
    process.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"receiver exited: {process.log()[-2000:]}")
        if port_open("127.0.0.1", port):
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.stop_quietly()
    raise RuntimeError(f"receiver did not start: {process.log()[-2000:]}")
