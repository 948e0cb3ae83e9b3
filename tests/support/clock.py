"""A hub process whose wall clock the test moves: libfaketime, driven by a file of offsets.

Only the wall clock moves; the monotonic clock stays real (timeouts and dedup windows run on it).
"""

from __future__ import annotations

from pathlib import Path

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime_env(offset_file: Path, offset: str = "+0") -> dict[str, str]:
    """The environment for a process whose wall clock is shifted by what `offset_file` says
    (`+0`, `-1h`, `+2d`; rewritten by the test as it goes); fails if libfaketime is missing
    (scripts/bootstrap installs the Debian package faketime)."""
    if not LIBFAKETIME.exists():
        raise AssertionError(f"libfaketime is missing ({LIBFAKETIME}): scripts/bootstrap installs faketime")
    offset_file.write_text(offset + "\n")
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
