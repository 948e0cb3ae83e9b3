"""The data directory: the service user may write there, and its disk has room for the outbox's quota."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Final

from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.report import Finding

__all__ = ["check_disk"]

MIB: Final = 2**20


def _outbox_bytes(data_dir: Path) -> int:
    """What the outbox holds on disk now (the database and its WAL files): counted against the quota."""
    total = 0
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        with contextlib.suppress(OSError):
            total += (data_dir / name).stat().st_size
    return total


def check_disk(ctx: CheckContext) -> list[Finding]:
    """Room for the outbox's quota on the disk of `node.data_dir`, and the right to write there."""
    data_dir = Path(ctx.config.node.data_dir)
    subject = str(data_dir)
    existing = data_dir if data_dir.exists() else next((p for p in data_dir.parents if p.exists()), Path("/"))
    if not ctx.user.may(existing, os.W_OK | os.X_OK):
        what = (
            "" if existing == data_dir else f" (it does not exist yet; {existing} is the nearest directory)"
        )
        return [
            Finding.error(
                "disk",
                subject,
                f"user {ctx.user.name} cannot write there{what}",
                f"install -d -o {ctx.user.name} -m 750 {data_dir}",
            )
        ]
    usage = shutil.disk_usage(existing)
    used = _outbox_bytes(data_dir)
    quota = ctx.config.outbox.max_mb * MIB
    needed = max(0, quota - used)
    free_mb = usage.free // MIB
    if usage.free < needed:
        room = int((usage.free + used) * 0.9) // MIB
        return [
            Finding.error(
                "disk",
                subject,
                f"{free_mb} MB free for the outbox, but outbox.max_mb is {ctx.config.outbox.max_mb} MB"
                f" ({used // MIB} MB used)",
                "free space on that disk, move node.data_dir to a larger disk, or lower outbox.max_mb to at"
                f" most {room} MB",
            )
        ]
    return [
        Finding.ok(
            "disk",
            subject,
            f"{free_mb} MB free, outbox quota {ctx.config.outbox.max_mb} MB ({used // MIB} MB used)",
        )
    ]
