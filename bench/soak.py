"""Soak benchmark: the hub's memory through a hall's day, compressed (20x real pace, 30 minutes).

The hub runs as its own process (`python -m hub run`) against a private Mosquitto on a free
loopback port, configured as a hall: keypads on an RS-485 line and rating pads at 12 windows, ID
card readers and QR scanners (serial over ptys, and MQTT), self-service terminals, push to a
reference central receiver. A separate process (bench/hallday.py) plays the hall's day at
`--speed` times its real pace: evaluation sessions asked by the window PCs, ratings, walk-aways and
re-asks, bad reviews and their alerts (most acknowledged by staff), card reads, scans, prints,
paper running out, pads switched off and on, the status page polled, staff signing in, pausing
and handing over (`window/{w}/staff`, §12), bad reviews called back and settled (§11).

The hub's RSS (and USS) is sampled every `--sample` seconds, with the evaluations stored so far
(`/metrics`, which is also the scrape a Prometheus would make). After `--warmup` seconds the RSS
slope is fitted by least squares, per minute and per 1,000 evaluations; the run fails (exit 1) if
the slope per minute is above `--max-slope`. `--trace N` runs the hub under tracemalloc (N frames)
and prints where its Python memory grew between the end of the warm-up and the end (a diagnostic:
its RSS is not the hub's own, so such a run writes bench/results/soak_trace.json, not soak.json).

Run from the repository root:  .venv/bin/python bench/soak.py [--duration 1800]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import select
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    NODE_ID,
    PYTHON,
    REPO,
    RESULTS,
    Figure,
    HubProc,
    memory_of,
    outbox_counts,
    print_figures,
    source_state,
    start_broker,
    wait_for_quiet,
    work_dir,
    write_hub_config,
    write_result,
)
from hallday import hall_devices

from hub.config import ApiSection, load_config
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.store.outbox import DedupKey, Outbox
from sync.annotate import make_evaluation_hook

HALLDAY = Path(__file__).resolve().parent / "hallday.py"
TRACED_HUB = Path(__file__).resolve().parent / "_tracedhub.py"
CENTRAL_TOKEN = "soak-central-token-loopback"  # the run's own loopback receiver
CONTROL_TOKEN = "soak-control-token-loopback"  # the run's own loopback hub
DEFAULT_MAX_SLOPE_KB_PER_MIN = 20.0
OFFLINE_AFTER_S = 10.0  # a pad switched off for 5 hall minutes (15 s at 20x) raises its alert
EVALUATIONS_METRIC = 'hallhub_records_stored_total{kind="evaluation"}'


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """The next JSON line the hall process prints, within `timeout_s`."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            return dict(json.loads(line))
        if proc.poll() is not None:
            break
    raise RuntimeError(f"the hall process {proc.pid} gave no answer within {timeout_s:.0f} s")


async def seed_outbox(config_path: Path, count: int, writers: int = 50) -> dict[str, Any]:
    """Fill the outbox as a week of the hall would have: `count` evaluations (5 % bad reviews with
    their alerts) with their dedup entries, all delivered (kept for `outbox.retention_days`).

    A node that has run for days has indexes larger than SQLite's page caches, so the caches fill
    in the first minutes; on a new, empty store they fill only as fast as the store grows.
    """
    config = load_config(config_path)
    outbox = Outbox(Path(config.node.data_dir) / "outbox.db", evaluation_hook=make_evaluation_hook(config))
    await outbox.open()
    intake = Intake(config, outbox, HubMetrics())
    raters = [d for d in config.device if d.kind in ("keypad", "pad", "terminal")]
    started = time.monotonic()

    async def writer(index: int) -> None:
        for n in range(index, count, writers):
            device = raters[n % len(raters)]
            level = 1 if n % 20 == 0 else 5 - n % 3
            records = intake.evaluation(
                device, level=level, reasons=["R1"] if level <= 2 else [], case_no=f"SD{n:09d}"
            )
            await intake.store(records, DedupKey(device.id, f"seed-{n:08x}"))

    try:
        await asyncio.gather(*(writer(i) for i in range(writers)))
        stats = await outbox.stats()
        delivered = await outbox.ack_upto(stats.last_seq, via="pull")
    finally:
        await outbox.close()
    size = Path(config.node.data_dir, "outbox.db").stat().st_size
    return {
        "evaluations": count,
        "records_delivered": delivered,
        "seconds": round(time.monotonic() - started, 1),
        "outbox_mb": round(size / 2**20, 1),
    }


def stored_evaluations(api_port: int) -> int | None:
    """Evaluations stored since the hub started, from its /metrics (None if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5.0) as response:
            text = response.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError):
        return None
    for line in text.splitlines():
        if line.startswith(EVALUATIONS_METRIC):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def fit_slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs (NaN with fewer than 3 points or no spread in xs)."""
    n = len(xs)
    if n < 3:
        return math.nan
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def summarize(samples: list[dict[str, float]], warmup_s: float) -> dict[str, Any]:
    """Slopes of RSS and USS after the warm-up, per minute and per 1,000 evaluations."""
    measured = [s for s in samples if s["t_s"] >= warmup_s]
    minutes = [s["t_s"] / 60 for s in measured]
    rss_kb = [s["rss_mb"] * 1024 for s in measured]
    uss_kb = [s.get("uss_mb", math.nan) * 1024 for s in measured]
    evaluations = [s["evaluations"] for s in measured]
    result: dict[str, Any] = {"samples_measured": len(measured)}
    if len(measured) < 3:
        return result
    per_min = fit_slope(minutes, rss_kb)
    elapsed_min = minutes[-1] - minutes[0]
    evals = evaluations[-1] - evaluations[0]
    result.update(
        {
            "from_min": round(minutes[0], 2),
            "to_min": round(minutes[-1], 2),
            "rss_slope_kb_per_min": round(per_min, 2),
            "uss_slope_kb_per_min": round(fit_slope(minutes, uss_kb), 2),
            "rss_slope_kb_per_1000_evaluations": round(fit_slope(evaluations, rss_kb) * 1000, 2),
            "rss_mb_at_warmup_end": round(measured[0]["rss_mb"], 2),
            "rss_mb_end": round(measured[-1]["rss_mb"], 2),
            "rss_mb_min": round(min(s["rss_mb"] for s in measured), 2),
            "rss_mb_max": round(max(s["rss_mb"] for s in measured), 2),
            "evaluations_measured": int(evals),
            "evaluations_per_min": round(evals / elapsed_min, 1) if elapsed_min > 0 else math.nan,
        }
    )
    half = len(measured) // 2
    result["rss_mb_mean_first_half"] = round(sum(s["rss_mb"] for s in measured[:half]) / half, 2)
    result["rss_mb_mean_second_half"] = round(
        sum(s["rss_mb"] for s in measured[half:]) / (len(measured) - half), 2
    )
    return result


def trace_report(folder: Path, warmup_s: float, trace_every_s: float, top: int = 15) -> list[str]:
    """Where the hub's Python memory grew between the end of the warm-up and the last snapshot."""
    snapshots = sorted(folder.glob("snapshot-*.tracemalloc"))
    if len(snapshots) < 2:
        return ["(fewer than two tracemalloc snapshots were written)"]
    first_index = min(len(snapshots) - 2, max(0, int(warmup_s // trace_every_s) - 1))
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    first = tracemalloc.Snapshot.load(str(snapshots[first_index])).filter_traces(ignore)
    last = tracemalloc.Snapshot.load(str(snapshots[-1])).filter_traces(ignore)
    stats = last.compare_to(first, "traceback")
    total = sum(stat.size_diff for stat in stats)
    span_min = (len(snapshots) - 1 - first_index) * trace_every_s / 60
    rate = total / 1024 / max(span_min, 1e-9)
    head = f"tracemalloc: {snapshots[first_index].name} -> {snapshots[-1].name} ({span_min:.1f} min): "
    lines = [f"{head}traced Python memory {total / 1024:+.1f} KB ({rate:+.1f} KB/min)"]
    for stat in stats[:top]:
        lines.append(
            f"  {stat.size_diff / 1024:+9.1f} KB {stat.count_diff:+7d} blocks (now {stat.size / 1024:.1f} KB)"
        )
        for frame in stat.traceback.format()[-12:]:
            text = frame.strip()
            if text.startswith("File") and ("/hub/" in text or "/drivers/" in text or "/sync/" in text):
                lines.append(f"      {text.replace(str(REPO) + '/', '')}")
            elif text.startswith("File") and "site-packages" in text:
                lines.append(f"      {text.split('site-packages/', 1)[-1]}")
    return lines


def run(args: argparse.Namespace, folder: Path) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Broker, hall process, hub; the sampled RSS timeline and what the hall and the outbox say."""
    details: dict[str, Any] = {}
    tty_dir = folder / "tty"
    devices = hall_devices(tty_dir)
    spec = {
        "broker_port": 0,
        "node_id": NODE_ID,
        "speed": args.speed,
        "duration_s": args.duration,
        "tty_dir": str(tty_dir),
        "work_dir": str(folder),
        "central_token": CENTRAL_TOKEN,
        "control_token": CONTROL_TOKEN if "control_token" in ApiSection.__struct_fields__ else "",
        "seed": args.seed,
    }
    samples: list[dict[str, float]] = []
    with start_broker(folder / "broker") as broker:
        spec["broker_port"] = broker.port
        log = (folder / "hallday.log").open("w")
        hall = subprocess.Popen(
            [PYTHON, str(HALLDAY), json.dumps(spec)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        hub: HubProc | None = None
        try:
            ready = _read_line(hall, 60.0)
            api: dict[str, Any] = {}
            if spec["control_token"]:
                api["control_token"] = CONTROL_TOKEN
            sections: dict[str, dict[str, Any]] = {
                "central": {"url": ready["central_url"], "token": CENTRAL_TOKEN},
                "alerts": {"offline_after_s": OFFLINE_AFTER_S},
                "api": api,
            }
            config, api_port = write_hub_config(
                folder, broker.port, devices, lift_rate_limit=False, sections=sections
            )
            if args.seed_records:
                details["seeded"] = asyncio.run(seed_outbox(config, args.seed_records))
                print(
                    f"outbox seeded with {args.seed_records:,} delivered evaluations (a week of the hall): "
                    f"{details['seeded']['outbox_mb']} MB in {details['seeded']['seconds']} s",
                    flush=True,
                )
            wrapper = []
            if args.trace:
                wrapper = [str(TRACED_HUB), str(folder / "trace"), str(args.trace_every), str(args.trace)]
            hub = HubProc(config, api_port, folder, wrapper=wrapper)
            hub.start(timeout_s=60.0 if args.trace else 20.0)
            details["hub_ready_s"] = round(hub.ready_s, 3)
            assert hall.stdin is not None
            hall.stdin.write(f"go http://127.0.0.1:{api_port}\n")
            hall.stdin.flush()
            started = time.monotonic()
            samples = sample(hub, api_port, started, args)
            result = _read_line(hall, 120.0)
        finally:
            if hall.poll() is None:
                hall.kill()
            hall.wait(10)
            for stream in (hall.stdout, hall.stdin):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if hub is not None:
                details["hub_exit_code"] = hub.stop()
                details["hub_log_tail"] = hub.log_tail(1500)
        details["hall"] = result
        assert hub is not None
        details["outbox"] = outbox_counts(hub.db_path)
    return samples, details


def sample(hub: HubProc, api_port: int, started: float, args: argparse.Namespace) -> list[dict[str, float]]:
    """RSS, USS and evaluations every `--sample` seconds until `--duration` has passed."""
    samples: list[dict[str, float]] = []
    next_at = started
    last_print = -60.0
    limit = int(args.duration / args.sample) + 2
    while len(samples) < limit:
        now = time.monotonic()
        if now - started > args.duration:
            break
        time.sleep(max(0.0, next_at - now))
        next_at += args.sample
        if hub.process is None or hub.process.poll() is not None:
            raise RuntimeError(f"the hub exited during the run: {hub.log_tail()}")
        memory = memory_of(hub.pid)
        evaluations = stored_evaluations(api_port)
        point = {
            "t_s": round(time.monotonic() - started, 2),
            "rss_mb": memory["rss_mb"],
            "uss_mb": memory.get("uss_mb", math.nan),
            "evaluations": float(evaluations if evaluations is not None else math.nan),
        }
        samples.append(point)
        if point["t_s"] - last_print >= 60.0:
            last_print = point["t_s"]
            print(
                f"  {point['t_s'] / 60:5.1f} min: hub RSS {point['rss_mb']:6.2f} MB "
                f"(USS {point['uss_mb']:.2f}), {int(point['evaluations'])} evaluations stored",
                flush=True,
            )
    return samples


def make_figures(summary: dict[str, Any], max_slope: float) -> dict[str, Figure]:
    """The headline numbers compared across runs."""
    if "rss_slope_kb_per_min" not in summary:
        return {}
    return {
        "soak.rss_slope": Figure(
            summary["rss_slope_kb_per_min"], "KB/min", "lower", "hub RSS slope after warm-up", max_slope
        ),
        "soak.rss_slope_per_1000_evaluations": Figure(
            summary["rss_slope_kb_per_1000_evaluations"],
            "KB/1k evals",
            "lower",
            "hub RSS slope per 1,000 evaluations",
        ),
        "soak.rss_end": Figure(summary["rss_mb_end"], "MB", "lower", "hub RSS at the end of the day"),
    }


def main() -> None:
    """Run the soak, print and write its figures; exit 1 if the RSS slope is above --max-slope."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of compressed hall day")
    parser.add_argument("--speed", type=float, default=20.0, help="times the hall's real pace")
    parser.add_argument("--warmup", type=float, default=600.0, help="seconds before the slope is fitted")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument(
        "--max-slope", type=float, default=DEFAULT_MAX_SLOPE_KB_PER_MIN, help="KB/min above which it fails"
    )
    parser.add_argument("--seed", type=int, default=1, help="the hall's random seed")
    parser.add_argument(
        "--seed-records",
        type=int,
        default=20_000,
        help="delivered evaluations in the outbox at start (0: none)",
    )
    parser.add_argument("--trace", type=int, default=0, help="run the hub under tracemalloc with N frames")
    parser.add_argument(
        "--trace-every", type=float, default=60.0, help="seconds between tracemalloc snapshots"
    )
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="max s to wait for an idle machine")
    args = parser.parse_args()
    args.duration = max(60.0, min(args.duration, 6 * 3600.0))
    args.speed = max(1.0, min(args.speed, 200.0))
    args.sample = max(1.0, min(args.sample, 300.0))
    args.warmup = max(0.0, min(args.warmup, args.duration / 2))
    args.trace = max(0, min(args.trace, 50))
    args.seed_records = max(0, min(args.seed_records, 2_000_000))
    args.trace_every = max(5.0, min(args.trace_every, 600.0))
    command = (
        f"python bench/soak.py --duration {args.duration:g} --speed {args.speed:g} --warmup {args.warmup:g}"
        f" --sample {args.sample:g} --max-slope {args.max_slope:g} --seed {args.seed}"
        f" --seed-records {args.seed_records}"
        + (f" --trace {args.trace} --trace-every {args.trace_every:g}" if args.trace else "")
    )
    print(command)
    hall_hours = args.duration * args.speed / 3600
    print(f"a hall's day at {args.speed:g}x for {args.duration / 60:g} min ({hall_hours:.1f} h of hall time)")
    details: dict[str, Any] = {
        "other_load_before_cores": wait_for_quiet(max_wait_s=max(0.0, args.quiet_wait))
    }
    with work_dir("soak") as folder:
        samples, ran = run(args, folder)
        details.update(ran)
        summary = summarize(samples, args.warmup)
        trace = trace_report(folder / "trace", args.warmup, args.trace_every) if args.trace else []
    details["summary"] = summary
    details["samples"] = samples
    figures = make_figures(summary, args.max_slope)
    print_summary(details, summary)
    print_figures("Soak (hub process alone)", figures)
    if trace:
        print("\n" + "\n".join(trace))
        details["trace"] = trace
        path = RESULTS / "soak_trace.json"
        document = {"command": command, "source": source_state(), "figures_under_tracing": {}, **details}
        document["figures_under_tracing"] = {key: figure.to_json() for key, figure in figures.items()}
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        path = write_result("soak", command, figures, details)
    print(f"wrote {path}")
    slope = summary.get("rss_slope_kb_per_min", math.nan)
    if args.trace:
        return
    if math.isnan(slope) or slope > args.max_slope:
        print(f"FAIL: hub RSS slope {slope:.1f} KB/min is above {args.max_slope:g} KB/min (or unknown)")
        sys.exit(1)
    print(f"ok: hub RSS slope {slope:.1f} KB/min is within {args.max_slope:g} KB/min")


def print_summary(details: dict[str, Any], summary: dict[str, Any]) -> None:
    """What the hall did and what the outbox holds, then the memory summary."""
    hall = details.get("hall", {})
    n = hall.get("counts", {})
    print(
        f"\nhall: {n.get('citizens', 0)} citizens, {n.get('evaluate_requests', 0)} evaluation requests; "
        f"sessions {json.dumps(hall.get('sessions', {}))}"
    )
    print(
        f"  ratings: keypads {n.get('keypad_presses', 0)}, pads {n.get('pad_ratings', 0)}, "
        f"terminals {n.get('terminal_ratings', 0)}; bad reviews {n.get('bad_reviews', 0)}; "
        f"cards {n.get('cards_placed', 0)}; scans {n.get('scans_serial', 0)} serial + "
        f"{n.get('scans_mqtt', 0)} MQTT + {n.get('pickup_scans', 0)} pickup; prints {n.get('prints', 0)}; "
        f"health reports {n.get('health_reports', 0)}; pads switched off {n.get('pads_switched_off', 0)}"
    )
    print(
        f"  staff: {n.get('staff_sign_in', 0)} sign-ins, {n.get('staff_sign_out', 0)} sign-outs, "
        f"{n.get('staff_pause', 0)} pauses, {n.get('staff_resume', 0)} resumes; "
        f"{n.get('window_states_heard', 0)} window states, {n.get('window_errors_heard', 0)} refusals heard"
    )
    print(
        f"  acks {json.dumps(hall.get('acks', {}))}; not acked {n.get('not_acked', 0)}; "
        f"HTTP {json.dumps(hall.get('http', {}))}"
    )
    print(f"  outbox: {json.dumps(details.get('outbox', {}))}")
    print(f"  central: {json.dumps(hall.get('central', {}))}")
    if "rss_slope_kb_per_min" not in summary:
        return
    s = summary
    print(
        f"\nhub RSS {s['rss_mb_at_warmup_end']:.2f} MB after the warm-up -> {s['rss_mb_end']:.2f} MB "
        f"at the end (min {s['rss_mb_min']:.2f}, max {s['rss_mb_max']:.2f}; half means "
        f"{s['rss_mb_mean_first_half']:.2f} / {s['rss_mb_mean_second_half']:.2f}); "
        f"{s['evaluations_measured']} evaluations in {s['to_min'] - s['from_min']:.1f} min "
        f"({s['evaluations_per_min']:.0f}/min)\n"
        f"slope: {s['rss_slope_kb_per_min']:+.1f} KB/min RSS ({s['uss_slope_kb_per_min']:+.1f} USS), "
        f"{s['rss_slope_kb_per_1000_evaluations']:+.1f} KB per 1,000 evaluations"
    )


if __name__ == "__main__":
    main()
