"""Satisfaction figures over 400 days (CONTRACTS §14): what `GET /v1/stats` pays with a full year.

python bench/stats_range.py [--ratings-per-day 600] [--days 400]

Stores a hall's ratings for every day of the range through the outbox's one write path (the store
hook keeps the daily tallies in each transaction, so the fill also measures what the tallies cost a
rating), then times a 400-day report by each dimension, as `/v1/stats` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta

from _common import Figure, print_figures, work_dir, write_result

from contract.records import format_utc
from hub.config import parse_config
from hub.hall.deadlines import Deadlines
from hub.hall.followup import hall_books
from hub.hall.stats import SatisfactionStats
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.store.outbox import Outbox

ZONE = "Asia/Shanghai"
WINDOWS = 30
STAFF = 60
ITEMS = 200
BY = ("window", "staff", "item", "channel", "day")


def config_for(folder: str) -> object:
    devices = [
        {"id": f"pad-{w:02d}", "kind": "pad", "transport": "mqtt", "window": f"{w:02d}"}
        for w in range(WINDOWS)
    ]
    return parse_config(
        {
            "node": {
                "id": "bench-node",
                "hall_code": "370102",
                "data_dir": folder,
                "secret_file": f"{folder}/s",
            },
            "national": {"timezone": ZONE},
            "device": devices,
        }
    )


async def run(days: int, per_day: int, repeat: int) -> tuple[dict[str, Figure], dict[str, object]]:
    with work_dir("stats") as folder:
        config = config_for(str(folder))
        rules = Deadlines.from_config(ZONE, 60, 3, ())
        outbox = Outbox(folder / "outbox.db", max_bytes=0, store_hooks=[hall_books(rules).on_store])
        await outbox.open()
        intake = Intake(config, outbox, HubMetrics())  # type: ignore[arg-type]
        rng = random.Random(7)
        last = date(2026, 12, 6)
        first = last - timedelta(days=days - 1)
        stored = 0
        started = time.perf_counter()
        for offset in range(days):
            day = first + timedelta(days=offset)
            batch = []
            for n in range(per_day):
                device = config.device[rng.randrange(WINDOWS)]  # type: ignore[attr-defined]
                records = intake.evaluation(
                    device,
                    level=rng.choice((5, 5, 5, 4, 4, 3, 2, 1)),
                    reasons=[],
                    staff_id=f"S{rng.randrange(STAFF):03d}",
                    item_code=f"370102-{rng.randrange(ITEMS):03d}",
                )
                moment = datetime(day.year, day.month, day.day, 9, tzinfo=UTC) + timedelta(seconds=20 * n)
                for record in records:
                    record.created_at = format_utc(moment)
                batch += records
            await outbox.store(batch)
            stored += per_day
            if offset % 50 == 0:
                print(f"  day {offset + 1}/{days}: {stored:,} ratings stored", flush=True)
        fill_s = time.perf_counter() - started
        stats = SatisfactionStats(outbox, ZONE, 2)
        timings: dict[str, float] = {}
        rows: dict[str, int] = {}
        for by in BY:
            samples = []
            for _ in range(repeat):
                began = time.perf_counter()
                report = await stats.report(first, last, by)  # type: ignore[arg-type]
                samples.append((time.perf_counter() - began) * 1000)
            timings[by] = statistics.median(samples)
            rows[by] = len(report["rows"])
            assert report["total"]["total"] + report["total"]["excluded"] == stored, report["total"]
        tally_rows = await outbox.read(
            lambda conn: conn.execute("SELECT count(*) FROM tallies").fetchone()[0]
        )
        await outbox.close()
    figures = {
        f"stats.{by}_ms": Figure(timings[by], "ms", "lower", f"{days}-day report by {by} ({rows[by]} rows)")
        for by in BY
    }
    figures["stats.fill_per_rating_us"] = Figure(
        fill_s / stored * 1e6, "µs", "lower", "storing a rating with its tallies (batches of a day)"
    )
    details = {
        "days": days,
        "ratings": stored,
        "tally_rows": tally_rows,
        "rows_by": rows,
        "fill_s": round(fill_s, 1),
    }
    return figures, details


def main() -> None:
    """Run and report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=400, help="days of ratings (the §14 maximum range)")
    parser.add_argument("--ratings-per-day", type=int, default=600, help="ratings a day in the hall")
    parser.add_argument("--repeat", type=int, default=5, help="timed reports per dimension")
    args = parser.parse_args()
    figures, details = asyncio.run(run(args.days, args.ratings_per_day, args.repeat))
    print_figures(f"Satisfaction figures over {args.days} days ({details['ratings']:,} ratings)", figures)
    print(f"\n{details['tally_rows']:,} tally rows; fill {details['fill_s']} s")
    write_result(
        "stats_range", ("python bench/stats_range.py " + " ".join(sys.argv[1:])).strip(), figures, details
    )


if __name__ == "__main__":
    main()
