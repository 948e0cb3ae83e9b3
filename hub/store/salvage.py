"""Moving a damaged outbox aside and reading back what SQLite still can."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)


def move_aside(path: Path) -> Path:
    """Rename the store and its WAL/SHM files to `<name>.corrupt-<time>`; never delete them."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target


def salvage_records(damaged: Path, into: sqlite3.Connection) -> int:
    """Copy the pending records SQLite can still read from `damaged` into a fresh store.

    Reads row by row in seq order and stops at the first unreadable page: what is copied keeps its
    id and seq, so the central side still de-duplicates it.
    """
    copied = 0
    try:
        source = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        log.error("outbox: cannot open %s to salvage records: %s", damaged, exc)
        return 0
    try:
        cursor = source.execute(
            "SELECT seq, id, kind, priority, created_at, device_id, case_no, body FROM records"
            " WHERE state = 0 ORDER BY seq"
        )
        into.execute("BEGIN IMMEDIATE")
        while True:
            try:
                row = cursor.fetchone()
            except sqlite3.Error as exc:
                log.error("outbox: salvage stopped at an unreadable page: %s", exc)
                break
            if row is None:
                break
            into.execute(
                "INSERT OR IGNORE INTO records"
                " (seq, id, kind, priority, created_at, device_id, case_no, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            copied += 1
        into.execute("COMMIT")
    except sqlite3.Error as exc:
        log.error("outbox: salvage of %s failed: %s", damaged, exc)
        with contextlib.suppress(sqlite3.Error):
            into.execute("ROLLBACK")
    finally:
        source.close()
    return copied
