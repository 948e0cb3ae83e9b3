"""Shared helpers of the benchmark suite: broker, config, hub process, sampling, figures, JSON.

Every benchmark runs the hub as a separate process (`python -m hub run --config ...`) against a
private Mosquitto on a free loopback port, and writes its results to `bench/results/<name>.json`
with a `figures` table that `bench/run_all.py` compares with `bench/results/baseline.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hub.config import HubConfig  # noqa: E402
from hub.ops.broker import MosquittoBroker, free_port, mosquitto_binary  # noqa: E402
from tests.support.hub import NODE_ID, PULL_TOKEN, node_raw, terminals, write_toml  # noqa: E402

RESULTS = REPO / "bench" / "results"
BASELINE = RESULTS / "baseline.json"
PYTHON = sys.executable
REGRESSION_TOLERANCE = 0.20

Better = Literal["higher", "lower"]

__all__ = [
    "BASELINE",
    "NODE_ID",
    "PULL_TOKEN",
    "PYTHON",
    "REGRESSION_TOLERANCE",
    "REPO",
    "RESULTS",
    "CpuMeter",
    "Figure",
    "HubProc",
    "bench_devices",
    "compare_figures",
    "load_json",
    "machine_info",
    "memory_of",
    "mosquitto_pid",
    "outbox_counts",
    "percentile",
    "print_figures",
    "source_state",
    "start_broker",
    "summarize_ms",
    "wait_for_quiet",
    "work_dir",
    "write_hub_config",
    "write_result",
]


# -- figures and results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    """One headline number: its value, unit, which direction is better, and an optional target."""

    value: float
    unit: str
    better: Better
    label: str
    target: float | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON form, as stored under `figures` in a result file."""
        data: dict[str, Any] = {
            "value": round(self.value, 4),
            "unit": self.unit,
            "better": self.better,
            "label": self.label,
        }
        if self.target is not None:
            data["target"] = self.target
        return data

    def meets_target(self) -> bool | None:
        """Whether the value meets its target (None when there is none)."""
        if self.target is None:
            return None
        return self.value >= self.target if self.better == "higher" else self.value <= self.target


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    """Count, mean and p50/p90/p99/p99.9/max of a list of milliseconds."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 3),
        "p50": round(percentile(ordered, 50), 3),
        "p90": round(percentile(ordered, 90), 3),
        "p99": round(percentile(ordered, 99), 3),
        "p99_9": round(percentile(ordered, 99.9), 3),
        "max": round(ordered[-1], 3),
    }


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were taken on: CPU, cores, kernel, Python, SQLite, Mosquitto, load."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    binary = mosquitto_binary()
    return {
        "platform": platform.platform(),
        "processor": model,
        "cpus": os.cpu_count(),
        "memory_mb": psutil.virtual_memory().total // 2**20,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": _command_output([binary, "-h"]) if binary else "not installed",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def source_state() -> dict[str, Any]:
    """The commit measured and how many files differ from it (read-only git queries)."""
    state: dict[str, Any] = {"commit": "unknown", "modified_files": None}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        status = subprocess.run(  # --no-optional-locks: never touch the index
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return state
    if head.returncode == 0:
        state["commit"] = head.stdout.strip()
    if status.returncode == 0:
        state["modified_files"] = len(status.stdout.splitlines())
    return state


def write_result(name: str, command: str, figures: dict[str, Figure], details: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` (figures, details, machine, command, time) and return it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    document = {
        "benchmark": name,
        "command": command,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "source": source_state(),
        "figures": {key: figure.to_json() for key, figure in figures.items()},
        "details": details,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def print_figures(title: str, figures: dict[str, Figure]) -> None:
    """A plain table of figures with their targets."""
    print(f"\n{title}")
    header = f"{'figure':<46} {'value':>12} {'unit':<14} {'target':>10}  ok"
    print(header)
    print("-" * len(header))
    for figure in figures.values():
        target = "" if figure.target is None else f"{figure.target:g}"
        met = figure.meets_target()
        mark = "" if met is None else ("yes" if met else "NO")
        print(f"{figure.label:<46} {figure.value:>12,.2f} {figure.unit:<14} {target:>10}  {mark}")


def compare_figures(
    current: dict[str, dict[str, Any]],
    baseline: dict[str, dict[str, Any]],
    tolerance: float = REGRESSION_TOLERANCE,
) -> list[dict[str, Any]]:
    """Each current figure against the baseline: change in %, and whether it got worse by > tolerance."""
    rows = []
    for key, figure in current.items():
        row: dict[str, Any] = {"key": key, "label": figure.get("label", key), "value": figure["value"]}
        row.update({"unit": figure.get("unit", ""), "baseline": None, "change": None, "regressed": False})
        old = baseline.get(key)
        if old is not None and isinstance(old.get("value"), (int, float)):
            before, now = float(old["value"]), float(figure["value"])
            row["baseline"] = before
            if before != 0:
                change = (now - before) / abs(before)
                row["change"] = change
                worse = -change if figure.get("better", "higher") == "higher" else change
                row["regressed"] = worse > tolerance
        rows.append(row)
    return rows


# -- work directories, broker and config ----------------------------------------------------------


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A fresh directory on the real disk (/var/tmp, not a tmpfs), removed afterwards."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())
    path = Path(tempfile.mkdtemp(prefix=f"hallhub-bench-{name}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def start_broker(folder: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free loopback port (the node broker's settings), stopped afterwards."""
    broker = MosquittoBroker(folder)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def bench_devices(count: int, kind: str = "terminal") -> list[dict[str, Any]]:
    """`count` MQTT rating devices (`terminal-00`, ... or `pad-00`, ... with windows w0, w1, ...)."""
    return terminals(count, kind)


def write_hub_config(
    folder: Path,
    broker_port: int,
    devices: list[dict[str, Any]],
    *,
    lift_rate_limit: bool = True,
    sections: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, int]:
    """A node config for these devices; returns (path, API port).

    The per-device rate limit (`[limits]`, 50 messages/s a device by default) is lifted unless told
    otherwise: it protects the hub from one flooding device, and it would cap 50 devices at 2,500/s.
    `sections` adds keys to (or adds) tables, e.g. `{"central": {"url": ...}}`.
    """
    api_port = free_port()
    raw = node_raw(folder / "data", broker_port, devices)
    raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN}
    if lift_rate_limit and "limits" in HubConfig.__struct_fields__:
        raw["limits"] = {"device_msgs_per_s": 100_000.0, "device_burst": 1_000_000}
    for name, table in (sections or {}).items():
        raw[name] = {**raw.get(name, {}), **table}
    return write_toml(folder / "node.toml", raw), api_port


# -- the hub process --------------------------------------------------------------------------------


@dataclass
class HubProc:
    """`python -m hub run --config PATH` with NOTIFY_SOCKET set, so that READY=1 can be timed."""

    config_path: Path
    api_port: int
    folder: Path
    wrapper: list[str] = field(default_factory=list)  # e.g. bench/_tracedhub.py and its arguments
    process: subprocess.Popen[bytes] | None = None
    ready_s: float = math.nan
    healthy_s: float = math.nan
    _notify: socket.socket | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The hub's process id."""
        assert self.process is not None
        return self.process.pid

    @property
    def db_path(self) -> Path:
        """The outbox file."""
        return self.folder / "data" / "outbox.db"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start; wait for READY=1 on the notify socket and for /healthz to answer 200."""
        address = self.folder / f"notify-{time.monotonic_ns()}.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(address))
        log = (self.folder / "hub.log").open("ab")
        env = {**os.environ, "NOTIFY_SOCKET": str(address), "PYTHONUNBUFFERED": "1"}
        env.pop("WATCHDOG_USEC", None)
        started = time.monotonic()
        self.process = subprocess.Popen(
            [PYTHON, *(self.wrapper or ["-m", "hub"]), "run", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = started + timeout_s
        self._notify.settimeout(0.1)
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(TimeoutError):
                message = self._notify.recv(4096)
                if b"READY=1" in message.split(b"\n"):
                    self.ready_s = time.monotonic() - started
                    break
        else:
            self.stop()
            raise RuntimeError(f"hub sent no READY=1 within {timeout_s:.0f} s: {self.log_tail()}")
        while time.monotonic() < deadline:
            self._check_alive()
            if self.healthz() == 200:
                self.healthy_s = time.monotonic() - started
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"hub not healthy within {timeout_s:.0f} s: {self.log_tail()}")

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"hub exited with {self.process.returncode}: {self.log_tail()}")

    def healthz(self) -> int:
        """The status code of GET /healthz (0 when it does not answer)."""
        url = f"http://127.0.0.1:{self.api_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the hub's log."""
        path = self.folder / "hub.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (clean shutdown: the writer flushes), then SIGKILL if it hangs; the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            code = self.process.returncode
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return code


# -- CPU and memory sampling ------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by named processes (all threads) and the whole machine between two points."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._start: dict[str, float] = {}
        self._start_split: dict[str, tuple[float, float]] = {}
        self._system_start: Any = None
        self._wall_start = 0.0
        self.start()

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        return sum(CpuMeter._split(proc))

    @staticmethod
    def _split(proc: psutil.Process) -> tuple[float, float]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            return float(times.user), float(times.system)
        return math.nan, math.nan

    def start(self) -> None:
        """Start (or restart) the interval."""
        self._start_split = {name: self._split(proc) for name, proc in self.procs.items()}
        self._start = {name: sum(split) for name, split in self._start_split.items()}
        self._system_start = psutil.cpu_times()
        self._wall_start = time.monotonic()

    def stop(self) -> dict[str, Any]:
        """Per process: CPU seconds and % of one core; machine: busy % of all cores."""
        wall = time.monotonic() - self._wall_start
        result: dict[str, Any] = {"wall_s": round(wall, 3), "processes": {}}
        for name, proc in self.procs.items():
            user, system = self._split(proc)
            user -= self._start_split[name][0]
            system -= self._start_split[name][1]
            used = user + system
            result["processes"][name] = {
                "cpu_s": round(used, 3),
                "user_s": round(user, 3),
                "system_s": round(system, 3),
                "percent_of_one_core": round(used / wall * 100, 1) if wall else math.nan,
            }
        end = psutil.cpu_times()
        idle = (end.idle + getattr(end, "iowait", 0.0)) - (
            self._system_start.idle + getattr(self._system_start, "iowait", 0.0)
        )
        total = sum(end) - sum(self._system_start)
        cores = psutil.cpu_count() or 1
        busy_core_s = (total - idle) if total > 0 else 0.0
        ours = sum(p["cpu_s"] for p in result["processes"].values() if not math.isnan(p["cpu_s"]))
        result["machine"] = {
            "cores": cores,
            "busy_percent_of_all_cores": round(busy_core_s / total * 100, 1) if total > 0 else math.nan,
            "busy_core_s": round(busy_core_s, 3),
            "other_processes_core_s": round(max(0.0, busy_core_s - ours), 3),
            "steal_core_s": round(getattr(end, "steal", 0.0) - getattr(self._system_start, "steal", 0.0), 3),
        }
        return result


def busy_cores(sample_s: float = 2.0) -> float:
    """How many cores the whole machine kept busy over the last `sample_s` seconds."""
    before = psutil.cpu_times()
    time.sleep(sample_s)
    after = psutil.cpu_times()
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    cores = psutil.cpu_count() or 1
    return max(0.0, (total - idle) / total * cores) if total > 0 else 0.0


def wait_for_quiet(max_busy_cores: float = 0.3, max_wait_s: float = 30.0) -> float:
    """Wait (at most `max_wait_s`) until other work keeps under `max_busy_cores` busy; the last load.

    The machine is shared: figures taken while others run tests are noisy. This only waits; the load
    seen during each measurement is recorded with the results either way.
    """
    deadline = time.monotonic() + max_wait_s
    load = busy_cores()
    while load > max_busy_cores and time.monotonic() < deadline:
        print(f"  (machine busy with other work: {load:.2f} cores; waiting for it to calm down)", flush=True)
        load = busy_cores(5.0)
    return round(load, 2)


def memory_of(pid: int) -> dict[str, float]:
    """RSS, and USS/PSS where the kernel gives them, in MB."""
    proc = psutil.Process(pid)
    info: dict[str, float] = {}
    try:
        full = proc.memory_full_info()
        info["rss_mb"] = full.rss / 2**20
        for name in ("uss", "pss", "swap"):
            if hasattr(full, name):
                info[f"{name}_mb"] = getattr(full, name) / 2**20
    except psutil.AccessDenied:
        info["rss_mb"] = proc.memory_info().rss / 2**20
    info["threads"] = float(proc.num_threads())
    return {key: round(value, 2) for key, value in info.items()}


def mosquitto_pid(broker: MosquittoBroker) -> int:
    """The broker's process id."""
    assert broker.process is not None
    return broker.process.pid


def outbox_counts(db: Path, bad_level: int = 2) -> dict[str, int]:
    """Records by kind, bad reviews and their alerts, dedup entries, read straight from the SQLite file.

    `bad_unflagged` counts bad reviews not flagged `suspect` (beyond the misuse limits): only those
    raise an alert.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = {
            str(kind): int(n) for kind, n in conn.execute("SELECT kind, count(*) FROM records GROUP BY kind")
        }
        counts["dedup"] = int(conn.execute("SELECT count(*) FROM dedup").fetchone()[0])
        counts["bad_evaluations"], counts["bad_unflagged"] = (
            int(n or 0)
            for n in conn.execute(
                "SELECT count(*), sum(json_extract(body, '$.data.flags') NOT LIKE '%suspect%')"
                " FROM records WHERE kind = 'evaluation' AND json_extract(body, '$.data.level') <= ?",
                (bad_level,),
            ).fetchone()
        )
        counts["bad_review_alerts"] = int(
            conn.execute(
                "SELECT count(*) FROM records WHERE kind = 'alert'"
                " AND json_extract(body, '$.data.type') = 'bad_review'"
            ).fetchone()[0]
        )
        counts["duplicate_record_ids"] = int(
            conn.execute("SELECT count(*) - count(DISTINCT id) FROM records").fetchone()[0]
        )
    finally:
        conn.close()
    return counts


def load_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
