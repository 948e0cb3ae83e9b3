"""`hallhub run` under tracemalloc, dumping a snapshot every few seconds (for `bench/soak.py --trace`).

    python bench/_tracedhub.py OUT_DIR INTERVAL_S FRAMES run --config node.toml

Snapshots go to OUT_DIR/snapshot-NNNN.tracemalloc (`tracemalloc.Snapshot.load`), written by a
daemon thread, so that where the hub's Python memory grows can be compared between two moments of
a soak run. A diagnostic only: tracing costs CPU and memory, so its RSS figures are not the hub's.
"""

from __future__ import annotations

import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_SNAPSHOTS = 1000


def _dump_every(folder: Path, interval_s: float) -> None:
    """Write a snapshot every `interval_s` (at most MAX_SNAPSHOTS of them)."""
    for number in range(MAX_SNAPSHOTS):
        time.sleep(interval_s)
        snapshot = tracemalloc.take_snapshot()
        partial = folder / f".snapshot-{number:04d}.part"
        snapshot.dump(str(partial))
        partial.replace(folder / f"snapshot-{number:04d}.tracemalloc")


def main() -> None:
    """Start tracing and the dumping thread, then run the hub's CLI with the remaining arguments."""
    folder, interval, frames, *hub_args = sys.argv[1:]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(max(1, min(int(frames), 50)))
    threading.Thread(target=_dump_every, args=(out, max(1.0, float(interval))), daemon=True).start()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.argv = ["hallhub", *hub_args]
    runpy.run_module("hub", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
