"""The suite's test ids are the same whenever and wherever they are collected.

pytest-xdist has every worker collect the suite and refuses to run when their lists differ, so an
id built from the clock (a gzip header's mtime, a timestamp) or from chance fails a CI run now and
then, depending on whether the workers collected in the same second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.clock import faketime_env

ROOT = Path(__file__).resolve().parents[1]


def _collected(offset_file: Path, offset: str) -> list[str]:
    env = {**os.environ, **faketime_env(offset_file, offset)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_test_ids_do_not_depend_on_the_clock_or_on_chance(tmp_path: Path) -> None:
    today = _collected(tmp_path / "now", "+0")
    tomorrow = _collected(tmp_path / "later", "+1d")
    assert len(today) > 1000
    differing = sorted(set(today) ^ set(tomorrow))
    assert not differing, "test ids that change between collections:\n" + "\n".join(differing[:10])
