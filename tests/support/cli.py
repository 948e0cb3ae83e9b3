"""`hallhub` in its own process, the way a technician runs it: from the repository, stdin closed,
output read whole and one message per line (a wide `COLUMNS`, so nothing is wrapped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_hallhub(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`hallhub ARGS` (as `python -m hub`), its exit status and its whole stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "1000"},
        check=False,
    )
