"""Ingest benchmark: ratings from 50 MQTT rating pads through the hub to acked, durable records.

(a) throughput: every pad keeps `--window` ratings in flight (distinct msg_ids) and sends the next
    on each ack; the figure is acks per second over the measured interval, after a warm-up.
(b) latency: open loop at a fixed offered load (`--rate`, default 1,000 ratings/s), sent on a
    schedule whatever the acks do; latency runs from the scheduled send time to the ack.

The hub runs as its own process (`python -m hub run`) against a private Mosquitto; the pads run in
`--generators` separate processes (bench/loadgen.py). CPU time of hub, broker and generators is
sampled over the measured interval. At the end the hub is stopped and the outbox file is read: it
must hold exactly one evaluation per rating acked, and one alert per bad review acked.
`--profile` adds an extra throughput run with py-spy attached to the hub and prints where its
time goes; such a run writes bench/results/ingest_profile.{json,txt}, not ingest.json.

Run from the repository root:  .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import select
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    NODE_ID,
    PYTHON,
    REPO,
    RESULTS,
    CpuMeter,
    Figure,
    HubProc,
    bench_devices,
    mosquitto_pid,
    outbox_counts,
    print_figures,
    source_state,
    start_broker,
    summarize_ms,
    wait_for_quiet,
    work_dir,
    write_hub_config,
    write_result,
)

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
TARGET_RATE = 5000.0
TARGET_P99_MS = 50.0


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The next JSON line a generator prints, within `timeout_s`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            return dict(json.loads(line))
        if proc.poll() is not None:
            break
    raise RuntimeError(f"load generator {proc.pid} gave no answer within {timeout_s:.0f} s")


def run_phase(
    *,
    mode: str,
    hub: HubProc,
    broker_port: int,
    broker_pid: int,
    devices: list[str],
    kind: str,
    generators: int,
    window: int,
    rate: float,
    warmup_s: float,
    duration_s: float,
    log_dir: Path,
    quiet_wait_s: float,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """One measured run with fresh generator processes; returns merged tallies and CPU use."""
    run_id = uuid.uuid4().hex[:6]
    load_before = wait_for_quiet(max_wait_s=quiet_wait_s)
    groups = [devices[i::generators] for i in range(generators)]
    procs: list[subprocess.Popen[str]] = []
    profiler: subprocess.Popen[bytes] | None = None
    try:
        for index, group in enumerate(groups):
            spec = {
                "host": "127.0.0.1",
                "port": broker_port,
                "node_id": NODE_ID,
                "devices": group,
                "kind": kind,
                "mode": mode,
                "window": window,
                "rate": rate / generators,
                "warmup_s": warmup_s,
                "duration_s": duration_s,
                "retry_s": 5.0,
                "drain_s": 20.0,
                "run_id": f"{run_id}{index}",
                "seed": index + 1,
            }
            stderr = (log_dir / f"loadgen-{run_id}-{index}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [PYTHON, str(LOADGEN), json.dumps(spec)],
                    cwd=REPO,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            )
            stderr.close()
        for proc in procs:
            _read_line(proc, 30.0)
        start = time.time() + 0.3
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {start!r}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, start + warmup_s - time.time()))
        pids = {"hub": hub.pid, "mosquitto": broker_pid}
        pids.update({f"loadgen-{i}": proc.pid for i, proc in enumerate(procs)})
        if profile_to is not None:
            profiler = _start_profiler(hub.pid, duration_s, profile_to)
        meter = CpuMeter(pids)
        rss_start = psutil.Process(hub.pid).memory_info().rss
        time.sleep(max(0.0, start + warmup_s + duration_s - time.time()))
        cpu = meter.stop()
        rss_end = psutil.Process(hub.pid).memory_info().rss
        results = [_read_line(proc, 45.0) for proc in procs]
        if profiler is not None:
            profiler.wait(30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
            profiler.wait(10)
    merged = _merge(results, cpu, duration_s)
    merged["other_load_before_cores"] = load_before
    merged["hub_rss_mb"] = {"start": round(rss_start / 1e6, 2), "end": round(rss_end / 1e6, 2)}
    acks = merged["acks_in_window"]
    merged["hub_rss_growth_kb_per_10k"] = (rss_end - rss_start) / 1e3 / acks * 1e4 if acks else math.nan
    merged["mode"] = mode
    merged["offered_per_s"] = rate if mode == "open" else None
    merged["window_per_device"] = window if mode == "closed" else None
    return merged


def _merge(results: list[dict[str, Any]], cpu: dict[str, Any], duration_s: float) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    latencies: list[float] = []
    per_second: Counter[int] = Counter()
    rejections: list[str] = []
    generator_cpu = 0.0
    for result in results:
        for key in (
            "sent",
            "resent",
            "stored",
            "duplicate",
            "rejected",
            "late_acks",
            "errors",
            "bad_acked",
            "given_up",
            "unacked",
            "measured_acks",
            "connections_lost",
        ):
            totals[key] += int(result[key])
        latencies.extend(result["latencies_ms"])
        per_second.update({int(k): v for k, v in result["acks_per_second"].items()})
        rejections.extend(result["rejections"])
        generator_cpu += float(result["cpu_s"])
    acks_in_window = sum(per_second.values())
    hub_cpu = cpu["processes"]["hub"]["cpu_s"]
    return {
        "totals": dict(totals),
        "acks_in_window": acks_in_window,
        "acks_per_s": acks_in_window / duration_s,
        "acks_per_second_timeline": [per_second[k] for k in sorted(per_second)],
        "latency_ms": summarize_ms(latencies),
        "rejections": rejections[:5],
        "cpu": cpu,
        "hub_cpu_us_per_rating": hub_cpu / acks_in_window * 1e6 if acks_in_window else math.nan,
        "generator_cpu_s_whole_run": round(generator_cpu, 3),
    }


def _start_profiler(pid: int, duration_s: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy in raw (collapsed stack) format, sampling only threads that are running."""
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (.venv/bin/pip install py-spy): no profile taken")
        return None
    args = [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s)))]
    args += ["--rate", "200", "--format", "raw", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Frames every stack goes through (interpreter start-up, CLI, event loop, thread pool): not informative.
_PLUMBING = (
    "runpy",
    "typer/",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "threading.py",
    "concurrent/futures/thread.py",
    "hub/__main__.py",
    "hub/cli/commands.py",
    "hub/ops/runner.py",
)


# Pipeline stages, tested in this order against the functions on a sampled stack.
_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("writer thread: evaluation hook (national mapping)", ("make_evaluation_hook", "to_national")),
    ("writer thread: SQLite and record encoding", ("Outbox._apply_batch", "_StoreOp.apply")),
    (
        "MQTT publish: acks and event mirrors (aiomqtt/paho)",
        ("MqttGateway.publish", "Client.publish (aiomqtt"),
    ),
    ("MQTT socket read: messages in, PUBACKs (paho)", ("Client.loop_read", "_on_socket_open")),
    ("MQTT socket write (paho)", ("Client.loop_write", "_on_socket_register_write")),
    ("gateway: decode, validate, build records", ("MqttGateway._handle",)),
    ("loop side of commits: results, mirror listeners", ("Outbox._run_writer",)),
    ("message intake: aiomqtt queue, a task per message", ("MqttGateway._read", "MessagesIterator")),
    ("event loop: waiting in epoll", ("EpollSelector.select",)),
)


def _stage(stack: str) -> str:
    for name, markers in _STAGES:
        if any(marker in stack for marker in markers):
            return name
    return "event loop and other"


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Shares of samples per thread, self time per package and function, inclusive time per function."""
    self_time: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0].split(": ", 1)[-1]] += count
        if len(frames) < 2:
            continue
        stages[_stage(stack)] += count
        self_time[_short(frames[-1])] += count
        by_package[_package(frames[-1])] += count
        for name in {_short(frame) for frame in frames[1:] if not any(p in frame for p in _PLUMBING)}:
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(n / total * 100, 1)) for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "threads": shares(threads),
        "stages": shares(stages),
        "self_by_package": shares(by_package),
        "self": shares(self_time),
        "inclusive": shares(inclusive),
    }


def _where(frame: str) -> str:
    return frame.partition(" (")[2].rsplit(":", 1)[0]


def _short(frame: str) -> str:
    """`function (pkg/module.py:line)` → `function (pkg/module.py)`, so lines of one function merge."""
    name = frame.partition(" (")[0]
    where = _where(frame)
    return f"{name} ({where})" if where else name


def _package(frame: str) -> str:
    """The top-level package (or stdlib module) a frame's code belongs to."""
    where = _where(frame)
    return where.split("/", 1)[0].removesuffix(".py") if where else frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50, help="configured and connected rating devices")
    parser.add_argument(
        "--kind", choices=("terminal", "pad"), default="terminal", help="device kind (pads are serialised)"
    )
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    parser.add_argument("--window", type=int, default=4, help="ratings in flight per pad (throughput)")
    parser.add_argument("--rate", type=float, default=1000.0, help="offered ratings/s (latency run)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--profile", action="store_true", help="add a profiled run (py-spy on the hub)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="max s to wait for an idle machine before the first run",
    )
    parser.add_argument("--skip-latency", action="store_true", help="throughput run only")
    parser.add_argument("--sweep", default="250,500", help="lower offered loads for shorter latency runs")
    args = parser.parse_args()
    entries = bench_devices(max(1, min(args.devices, 500)), args.kind)
    devices = [entry["id"] for entry in entries]
    generators = max(1, min(args.generators, len(devices), 8))
    window = max(1, min(args.window, 200))
    rate = max(1.0, min(args.rate, 50_000.0))
    warmup = max(0.0, min(args.warmup, 30.0))
    duration = max(1.0, min(args.duration, 120.0))
    quiet_wait = max(0.0, min(args.quiet_wait, 600.0))
    sweep = [max(1.0, min(float(x), 50_000.0)) for x in args.sweep.split(",") if x.strip()][:5]
    command = (
        f"python bench/ingest.py --devices {len(devices)} --kind {args.kind} --generators {generators}"
        f" --window {window}"
        f" --rate {rate:g} --warmup {warmup:g} --duration {duration:g}"
        + (" --profile" if args.profile else "")
        + (" --skip-latency" if args.skip_latency else f" --sweep {','.join(f'{x:g}' for x in sweep)}")
    )
    print(command)
    details: dict[str, Any] = {
        "devices": len(devices),
        "kind": args.kind,
        "generators": generators,
        "window": window,
        "rate": rate,
    }
    with work_dir("ingest") as folder, start_broker(folder / "broker") as broker:
        config, api_port = write_hub_config(folder, broker.port, entries)
        hub = HubProc(config, api_port, folder)
        hub.start()
        common = {
            "hub": hub,
            "broker_port": broker.port,
            "broker_pid": mosquitto_pid(broker),
            "devices": devices,
            "kind": args.kind,
            "generators": generators,
            "window": window,
            "rate": rate,
            "warmup_s": warmup,
            "duration_s": duration,
            "log_dir": folder,
            "quiet_wait_s": quiet_wait,
        }
        phases: dict[str, dict[str, Any]] = {}
        try:
            print(
                f"throughput: {len(devices)} {args.kind}s, {window} in flight each, {duration:g} s measured"
            )
            phases["throughput"] = run_phase(mode="closed", **common)
            common["quiet_wait_s"] = min(quiet_wait, 10.0)  # later runs: a shorter wait
            _print_phase("throughput", phases["throughput"])
            if not args.skip_latency:
                print(f"latency: open loop at {rate:g} ratings/s, {duration:g} s measured")
                phases["latency"] = run_phase(mode="open", **common)
                _print_phase("latency", phases["latency"])
                for lower in sweep:
                    short = max(5.0, duration / 2)
                    print(f"latency: open loop at {lower:g} ratings/s, {short:g} s measured")
                    name = f"latency_{lower:g}"
                    phases[name] = run_phase(mode="open", **{**common, "rate": lower, "duration_s": short})
                    _print_phase(name, phases[name])
            if args.profile:
                raw = RESULTS / "ingest_profile.txt"
                print(f"profile: throughput run with py-spy attached to the hub, {duration:g} s")
                phases["profiled_throughput"] = run_phase(mode="closed", profile_to=raw, **common)
                _print_phase("profiled throughput", phases["profiled_throughput"])
                if raw.exists():
                    details["profile"] = summarize_profile(raw)
                    _print_profile(details["profile"])
        finally:
            exit_code = hub.stop()
        details["hub_exit_code"] = exit_code
        details["hub_log_tail"] = hub.log_tail(1500)
        details["verification"] = verify(hub.db_path, phases)
        details["phases"] = phases
    figures = make_figures(phases)
    print_figures("Ingest", figures)
    verification = details["verification"]
    print(
        f"\noutbox check: {verification['evaluations']} evaluations for "
        f"{verification['acked']} ratings acked: " + ("exact" if verification["exact"] else "MISMATCH")
    )
    for check, passed in verification["checks"].items():
        print(f"  {'ok  ' if passed else 'FAIL'} {check}")
    if args.profile:
        # A diagnostic run: its figures are taken under py-spy, so they do not replace ingest.json.
        path = RESULTS / "ingest_profile.json"
        document = {"command": command, "source": source_state(), "figures_under_profiling": {}, **details}
        document["figures_under_profiling"] = {key: figure.to_json() for key, figure in figures.items()}
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        path = write_result("ingest", command, figures, details)
    print(f"wrote {path}")


def verify(db: Path, phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The outbox, read after a clean stop, holds exactly one evaluation per acked rating.

    Ratings beyond the misuse limit (6 free ratings a minute per pad by default) are stored with the
    `suspect` flag and raise no alert, so alerts are checked against the unflagged bad reviews.
    """
    acked = sum(p["totals"]["stored"] + p["totals"]["duplicate"] for p in phases.values())
    bad = sum(p["totals"]["bad_acked"] for p in phases.values())
    unacked = sum(p["totals"]["unacked"] + p["totals"]["given_up"] for p in phases.values())
    counts = outbox_counts(db)
    checks = {
        "every rating acked": unacked == 0,
        "one evaluation per acked rating": counts.get("evaluation", 0) == acked,
        "one dedup entry per acked rating": counts["dedup"] == acked,
        "bad reviews stored as acked": counts["bad_evaluations"] == bad,
        "one alert per unflagged bad review": counts["bad_review_alerts"] == counts["bad_unflagged"],
        "no record stored twice": counts["duplicate_record_ids"] == 0,
    }
    return {
        "acked": acked,
        "bad_acked": bad,
        "unacked": unacked,
        "evaluations": counts.get("evaluation", 0),
        "alerts": counts["bad_review_alerts"],
        "outbox_counts": counts,
        "checks": checks,
        "exact": all(checks.values()),
    }


def make_figures(phases: dict[str, dict[str, Any]]) -> dict[str, Figure]:
    """The headline numbers compared across runs."""
    figures: dict[str, Figure] = {}
    throughput = phases.get("throughput")
    if throughput:
        figures["ingest.throughput"] = Figure(
            throughput["acks_per_s"], "ratings/s", "higher", "sustained ratings/s to acked", TARGET_RATE
        )
        figures["ingest.hub_cpu_per_rating"] = Figure(
            throughput["hub_cpu_us_per_rating"], "µs CPU", "lower", "hub CPU per rating (throughput run)"
        )
        figures["ingest.rss_growth"] = Figure(
            throughput["hub_rss_growth_kb_per_10k"],
            "KB/10k ratings",
            "lower",
            "hub RSS growth in the throughput run",
        )
        figures["ingest.throughput_p99"] = Figure(
            throughput["latency_ms"].get("p99", math.nan), "ms", "lower", "p99 latency in throughput run"
        )
        generators = [p for n, p in throughput["cpu"]["processes"].items() if n.startswith("loadgen")]
        acks = throughput["acks_in_window"]
        figures["ingest.loadgen_cpu_per_rating"] = Figure(
            sum(p["cpu_s"] for p in generators) / acks * 1e6 if acks else math.nan,
            "µs CPU",
            "lower",
            "load generators' CPU per rating",
        )
    latency = phases.get("latency")
    if latency:
        at = f"{latency['offered_per_s']:,.0f}/s"
        figures["ingest.latency_p50"] = Figure(
            latency["latency_ms"].get("p50", math.nan), "ms", "lower", f"p50 publish→ack at {at}"
        )
        figures["ingest.latency_p99"] = Figure(
            latency["latency_ms"].get("p99", math.nan),
            "ms",
            "lower",
            f"p99 publish→ack at {at}",
            TARGET_P99_MS,
        )
        figures["ingest.hub_cpu_at_1000"] = Figure(
            latency["cpu"]["processes"]["hub"]["percent_of_one_core"],
            "% of a core",
            "lower",
            f"hub CPU at {at}",
        )
    for name, phase in phases.items():
        if name.startswith("latency_"):
            offered = name.removeprefix("latency_")
            figures[f"ingest.{name}_p99"] = Figure(
                phase["latency_ms"].get("p99", math.nan), "ms", "lower", f"p99 publish→ack at {offered}/s"
            )
    return figures


def _print_phase(name: str, phase: dict[str, Any]) -> None:
    totals = phase["totals"]
    lat = phase["latency_ms"]
    procs = phase["cpu"]["processes"]
    machine = phase["cpu"]["machine"]
    cpu_text = ", ".join(f"{n} {p['percent_of_one_core']:.0f}%" for n, p in procs.items())
    print(
        f"  {name}: {phase['acks_per_s']:,.0f} acks/s; latency p50 {lat.get('p50', math.nan):.1f} ms, "
        f"p99 {lat.get('p99', math.nan):.1f} ms, max {lat.get('max', math.nan):.1f} ms\n"
        f"    sent {totals['sent']}, stored {totals['stored']}, duplicate {totals['duplicate']}, "
        f"rejected {totals['rejected']}, resent {totals['resent']}, unacked {totals['unacked']}, "
        f"connections lost {totals['connections_lost']}\n"
        f"    CPU (% of one core): {cpu_text}; machine busy {machine['busy_percent_of_all_cores']:.0f}% "
        f"of {machine['cores']} cores (other processes {machine['other_processes_core_s']:.1f} core-s)\n"
        f"    hub CPU per rating {phase['hub_cpu_us_per_rating']:.0f} µs; other work before the run "
        f"{phase['other_load_before_cores']:.2f} cores\n"
        f"    hub RSS {phase['hub_rss_mb']['start']:.1f} -> {phase['hub_rss_mb']['end']:.1f} MB "
        f"({phase['hub_rss_growth_kb_per_10k']:+.0f} KB per 10,000 ratings)"
    )


def _print_profile(profile: dict[str, Any]) -> None:
    print(f"\nhub profile: {profile['samples']} samples of running threads (shares of all samples)")
    for title, key, count in (
        ("by thread", "threads", 5),
        ("by pipeline stage", "stages", 12),
        ("self time by package", "self_by_package", 12),
        ("self time by function", "self", 20),
        ("inclusive time by function", "inclusive", 25),
    ):
        print(f"  {title}:")
        for name, share in profile[key][:count]:
            print(f"    {share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
