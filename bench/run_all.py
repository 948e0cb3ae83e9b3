"""Run the benchmark suite one benchmark at a time, print one summary, and compare with the baseline.

By default it runs baselines, ingest, footprint, roundtrip and camera_decode (never two at once:
they would share the same 2 cores), then prints every figure found in `bench/results/*.json` next to the last
recorded figures in `bench/results/baseline.json`, and says clearly which got worse by more than
20 %. A worse figure is reported, never turned into a failing exit code (a benchmark that crashes
is: exit 1). `--update-baseline` records this run's figures as the new baseline.

Run from the repository root:  .venv/bin/python bench/run_all.py [--update-baseline]
Other benchmark scripts in bench/ (drain, keypad, idcard, soak) run with `--with NAME`; the figures
of any result file present are summarised either way. `--add-to-baseline NAME` records only those
benchmarks' present results in the baseline and keeps every other figure as it was (for a long run
such as the 30-minute soak, taken on its own).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BASELINE,
    PYTHON,
    REGRESSION_TOLERANCE,
    REPO,
    RESULTS,
    compare_figures,
    load_json,
    machine_info,
    source_state,
)

BENCH = Path(__file__).resolve().parent
DEFAULT_SUITE = ("baselines", "ingest", "footprint", "roundtrip", "camera_decode")
NOT_BENCHMARKS = frozenset({"_common", "_tracedhub", "hallday", "loadgen", "run_all"})
TIMEOUT_S = 600
TIMEOUTS_S = {"soak": 2700}  # its default run is a 30-minute day plus start and settle


def run_benchmark(name: str, extra: list[str]) -> bool:
    """Run bench/<name>.py to completion (bounded by its timeout); True if it exited 0."""
    script = BENCH / f"{name}.py"
    print(f"\n=== {name}: {PYTHON} {script.relative_to(REPO)} {' '.join(extra)}".rstrip(), flush=True)
    started = time.monotonic()
    timeout = TIMEOUTS_S.get(name, TIMEOUT_S)
    try:
        done = subprocess.run([PYTHON, str(script), *extra], cwd=REPO, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"=== {name}: did not finish within {timeout} s")
        return False
    print(f"=== {name}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
    return done.returncode == 0


def camera_figures(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Headline figures from bench/camera_decode.py's own result format."""
    figures: dict[str, dict[str, Any]] = {}
    for cell in document.get("decode", []):
        if not cell.get("code_in_view"):
            continue
        size = "480p" if cell["size"] == "640x480" else "720p"
        figures[f"camera.{cell['decoder']}_{size}_fps"] = {
            "value": cell["fps"],
            "unit": "frames/s",
            "better": "higher",
            "label": f"{cell['decoder']} decode {cell['size']}, code in view",
        }
    for cell in document.get("driver_cpu", []):
        size = "480p" if cell["size"] == "640x480" else "720p"
        figures[f"camera.driver_{cell['decoder']}_{size}_cpu"] = {
            "value": cell["cpu_percent_of_one_core"],
            "unit": "% of a core",
            "better": "lower",
            "label": f"camera driver CPU, {cell['decoder']} {cell['size']} 5 fps",
        }
    return figures


def collect() -> dict[str, dict[str, Any]]:
    """Every result file's figures, by benchmark, with when each was generated."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path == BASELINE:
            continue
        document = load_json(path)
        if document is None:
            continue
        name = path.stem
        figures = camera_figures(document) if name == "camera_decode" else document.get("figures")
        if isinstance(figures, dict) and figures:
            found[name] = {"generated_at": document.get("generated_at", "?"), "figures": figures}
    return found


def _format(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if value != value:  # NaN
        return "nan"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.2f}"


def _target_mark(figure: dict[str, Any]) -> str:
    target = figure.get("target")
    if target is None:
        return ""
    value = figure["value"]
    met = value >= target if figure.get("better") == "higher" else value <= target
    return f"{'ok' if met else 'MISSED'} ({'≥' if figure.get('better') == 'higher' else '≤'} {target:g})"


def summarize(current: dict[str, dict[str, Any]], baseline: dict[str, Any] | None) -> list[str]:
    """Print the summary table; return the regressions found."""
    old = baseline.get("figures", {}) if baseline else {}
    regressions = []
    print("\nSummary (figures of this machine; change against bench/results/baseline.json)")
    if baseline:
        source = baseline.get("source", {})
        print(
            f"baseline recorded {baseline.get('generated_at', '?')} at commit {source.get('commit', '?')}"
            f" ({source.get('modified_files', '?')} files modified)"
        )
    else:
        print("no baseline recorded yet: run with --update-baseline to record one")
    header = (
        f"{'benchmark':<14} {'figure':<44} {'value':>10} {'unit':<12} {'baseline':>10} {'change':>8}  target"
    )
    print(header)
    print("-" * (len(header) + 16))
    for name, entry in current.items():
        rows = compare_figures(entry["figures"], old.get(name, {}), REGRESSION_TOLERANCE)
        for row in rows:
            figure = entry["figures"][row["key"]]
            change = "" if row["change"] is None else f"{row['change'] * 100:+.0f}%"
            flag = "  << WORSE by more than 20 %" if row["regressed"] else ""
            print(
                f"{name:<14} {row['label'][:44]:<44} {_format(row['value']):>10} {row['unit'][:12]:<12} "
                f"{_format(row['baseline']):>10} {change:>8}  {_target_mark(figure)}{flag}"
            )
            if row["regressed"]:
                regressions.append(
                    f"{name}: {row['label']} {_format(row['baseline'])} → {_format(row['value'])}"
                )
    return regressions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (names of bench/*.py)")
    parser.add_argument("--with", dest="also", nargs="*", default=[], help="also run these (e.g. drain)")
    parser.add_argument("--no-run", action="store_true", help="only summarise the results present")
    parser.add_argument("--update-baseline", action="store_true", help="record this run as the baseline")
    parser.add_argument(
        "--add-to-baseline",
        nargs="*",
        default=[],
        metavar="NAME",
        help="record only these benchmarks' present results in the baseline, keeping the others",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test, noisier figures)")
    args = parser.parse_args()
    available = {path.stem for path in BENCH.glob("*.py")} - NOT_BENCHMARKS
    suite = list(args.only) if args.only else [*DEFAULT_SUITE, *args.also]
    unknown = [name for name in suite if name not in available]
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)} (available: {', '.join(sorted(available))})")
    quick = {
        "ingest": ["--duration", "5", "--warmup", "1"],
        "footprint": ["--idle", "5", "--starts", "2"],
        "baselines": ["--rounds", "2", "--seconds", "1"],
        "camera_decode": ["--frames", "20", "--seconds", "2"],
        # 3 minutes are inside the 10 during which ended sessions still accumulate: a smoke test only.
        "soak": ["--duration", "180", "--warmup", "60", "--max-slope", "1000"],
    }
    failed = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not args.no_run:
        print(f"machine: {json.dumps(machine_info())}")
        for name in suite:
            if not run_benchmark(name, quick.get(name, []) if args.quick else []):
                failed.append(name)
    current = collect()
    baseline = load_json(BASELINE)
    regressions = summarize(current, baseline)
    stale = [n for n, e in current.items() if not args.no_run and n in suite and e["generated_at"] < started]
    if stale:
        print(f"\nnot refreshed by this run (results are older): {', '.join(stale)}")
    if regressions:
        print(f"\n{len(regressions)} figure(s) got worse by more than 20 % against the baseline:")
        for line in regressions:
            print(f"  - {line}")
        print("(a report, not a failure: the machine is shared, so re-run before drawing conclusions)")
    elif baseline:
        print("\nno figure got worse by more than 20 % against the baseline")
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}")
    if args.update_baseline:
        document = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": source_state(),
            "machine": machine_info(),
            "figures": {name: entry["figures"] for name, entry in current.items()},
            "generated_by": {name: entry["generated_at"] for name, entry in current.items()},
        }
        BASELINE.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"\nwrote {BASELINE.relative_to(REPO)}")
    if args.add_to_baseline:
        add_to_baseline(args.add_to_baseline, current)
    sys.exit(1 if failed else 0)


def add_to_baseline(names: list[str], current: dict[str, dict[str, Any]]) -> None:
    """Put these benchmarks' present figures into the baseline, leaving every other entry as it was."""
    document = load_json(BASELINE) or {"figures": {}, "generated_by": {}}
    for name in names:
        entry = current.get(name)
        if entry is None:
            print(f"\nno result file for {name}: not added to the baseline")
            continue
        document.setdefault("figures", {})[name] = entry["figures"]
        document.setdefault("generated_by", {})[name] = entry["generated_at"]
        print(f"\nadded {name} (results of {entry['generated_at']}) to {BASELINE.relative_to(REPO)}")
    BASELINE.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
