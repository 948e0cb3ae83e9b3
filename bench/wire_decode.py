"""The receiver's per-record cost: `contract.wire.receive_batch` of one 500-record batch, on one core.

`receive_batch` (gunzip, JSON, envelope, every record and its `data` checked for its kind, `data`
kept as the text it came as) is what the central receiver does for each batch before storing it;
this measures it alone, without HTTP or a database, as records/s and µs per record, gzip and plain,
and `decode_batch` (the same checks, every `data` decoded into a dict) beside it. The batch holds
evaluations as the hub writes them, with one alert and one window record in every 50.

    .venv/bin/python bench/wire_decode.py
    .venv/bin/python bench/wire_decode.py --records 500 --rounds 200

Results are printed as a table and written to bench/results/wire_decode.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Figure, print_figures, write_result
from contract import wire
from contract.records import new_record_id

NODE = "hall-370102-01"
TARGET_RECORDS_PER_S = 50_000.0


def _record(seq: int) -> dict[str, Any]:
    """A §1 record as the hub writes it: mostly evaluations, an alert and a window event in 50."""
    created = datetime(2026, 12, 1, 8, 0, tzinfo=UTC) + timedelta(milliseconds=seq)
    data: dict[str, Any]
    kind = "evaluation"
    if seq % 50 == 0:
        kind, data = "alert", {"type": "bad_review", "evaluation_id": new_record_id(), "level": 1}
    elif seq % 50 == 1:
        kind = "window"
        data = {
            "window": "07",
            "event": "sign_in",
            "staff_id": "S001",
            "node_id": NODE,
            "hall_code": "370102",
        }
    else:
        data = {
            "level": 1 + seq % 5,
            "reasons": ["slow"] if seq % 5 == 0 else [],
            "comment": None,
            "channel": "keypad",
            "device_id": "kp-07",
            "window": "07",
            "staff_id": f"S{seq % 17:03d}",
            "case_no": f"CASE-{seq}",
            "item_code": "370102-001",
            "session": seq,
            "citizen_ref": None,
            "citizen_masked": None,
            "device_ts": "2026-12-01T16:00:00.000+08:00",
            "node_id": NODE,
            "hall_code": "370102",
            "flags": [],
        }
    return {
        "id": new_record_id(),
        "seq": seq,
        "kind": kind,
        "created_at": wire.format_timestamp(created),
        "data": data,
    }


def batch_body(records: int) -> bytes:
    """The plain JSON body of one batch, compact as the uplink sends it."""
    document = {
        "node_id": NODE,
        "batch_id": new_record_id(),
        "sent_at": wire.format_timestamp(datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
        "records": [_record(seq) for seq in range(1, records + 1)],
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def rate(
    decode: Callable[..., wire.ReceivedBatch | wire.DecodedBatch],
    body: bytes,
    encoding: str | None,
    records: int,
    rounds: int,
) -> dict[str, float]:
    """Decode `body` `rounds` times (after a warm-up); the median round's records/s and µs/record."""
    decoded = decode(body, content_encoding=encoding)
    if len(decoded.records) != records or decoded.rejected:
        raise SystemExit(f"the batch did not decode cleanly: {len(decoded.rejected)} rejected")
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        decode(body, content_encoding=encoding)
        times.append(time.perf_counter() - started)
    best, median = min(times), sorted(times)[len(times) // 2]
    return {
        "records_per_s": records / median,
        "best_records_per_s": records / best,
        "us_per_record": median / records * 1e6,
    }


def main() -> None:
    """Measure, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    plain = batch_body(args.records)
    gz = gzip.compress(plain, compresslevel=6, mtime=0)
    results = {
        "gzip": rate(wire.receive_batch, gz, "gzip", args.records, args.rounds),
        "plain": rate(wire.receive_batch, plain, None, args.records, args.rounds),
        "decode_batch_gzip": rate(wire.decode_batch, gz, "gzip", args.records, args.rounds),
    }
    figures = {
        "gzip_records_per_s": Figure(
            results["gzip"]["records_per_s"],
            "records/s",
            "higher",
            f"receive_batch, gzip, {args.records} records (median round)",
            TARGET_RECORDS_PER_S,
        ),
        "gzip_us_per_record": Figure(
            results["gzip"]["us_per_record"], "µs", "lower", "receive_batch, gzip, per record"
        ),
        "plain_records_per_s": Figure(
            results["plain"]["records_per_s"],
            "records/s",
            "higher",
            f"receive_batch, plain JSON, {args.records} records (median round)",
        ),
        "plain_us_per_record": Figure(
            results["plain"]["us_per_record"], "µs", "lower", "receive_batch, plain JSON, per record"
        ),
        "decode_batch_gzip_us_per_record": Figure(
            results["decode_batch_gzip"]["us_per_record"],
            "µs",
            "lower",
            "decode_batch (data as dicts), gzip, per record",
        ),
    }
    print_figures(
        f"receive_batch of one {args.records}-record batch ({len(plain)} bytes, {len(gz)} gzip)", figures
    )
    details = {"records": args.records, "rounds": args.rounds, "bytes": len(plain), "gzip_bytes": len(gz)}
    command = f".venv/bin/python bench/wire_decode.py --records {args.records} --rounds {args.rounds}"
    path = write_result("wire_decode", command, figures, details | results)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
