"""A hallhub command as a child process of a test: stopped by SIGKILL, SIGTERM, or at cleanup."""

from __future__ import annotations

import signal
import subprocess


class ChildProcess:
    """What every child-process helper of the tests shares once its subclass has started it."""

    process: subprocess.Popen[bytes] | None = None

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def stop_quietly(self) -> None:
        """Kill if still running (test cleanup)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
