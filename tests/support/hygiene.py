"""What a test must not leave behind, checked around every test by tests/conftest.py.

The idea of Home Assistant's `verify_cleanup`: a hub runs for months, so a thread, a child process,
an open file, a pending task or timer, or an exception nobody looked at is a defect, and the test
that shows one fails. Resources of longer-lived fixtures are taken as they are at the start of each
test; a session-wide process a test restarts on purpose is declared with `outlives_tests`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

GRACE_S = 3.0
"""How long teardown waits for threads and processes that are already on their way out."""

_long_lived: set[int] = set()


def outlives_tests(pid: int) -> None:
    """Declare a process owned by a session-wide fixture (started again inside a test)."""
    _long_lived.add(pid)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Threads, child processes and open files of this process at one moment."""

    threads: frozenset[threading.Thread]
    children: frozenset[int]
    files: frozenset[str]

    @classmethod
    def take(cls) -> Snapshot:
        """What exists now."""
        me = psutil.Process()
        return cls(frozenset(threading.enumerate()), frozenset(_children(me)), frozenset(_open_files(me)))

    def left_behind(self) -> list[str]:
        """What appeared since this snapshot and is still there after the grace period."""
        me = psutil.Process()

        def threads() -> list[str]:
            return [
                t.name
                for t in threading.enumerate()
                if t not in self.threads and t.is_alive() and not t.daemon
            ]

        def children() -> list[str]:
            return [
                f"{pid}: {cmd}"
                for pid, cmd in _children(me).items()
                if pid not in self.children and pid not in _long_lived
            ]

        def files() -> list[str]:
            return sorted(_open_files(me) - self.files)

        return [
            f"{what} left behind: {left}"
            for what, left in (
                ("threads", _settled(threads)),
                ("child processes", _settled(children)),
                ("open files", _settled(files)),
            )
            if left
        ]


def _open_files(process: psutil.Process) -> set[str]:
    return {f.path for f in process.open_files()}


def _children(process: psutil.Process) -> dict[int, str]:
    found = {}
    for child in process.children(recursive=True):
        try:
            found[child.pid] = " ".join(child.cmdline())[:200]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _settled(check: Callable[[], list[str]]) -> list[str]:
    """What `check` still reports after up to GRACE_S (things closing right now get the time)."""
    deadline = time.monotonic() + GRACE_S
    while True:
        left = check()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
