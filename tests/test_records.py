"""Record ids and times (CONTRACTS §1): UUIDv7 in order, RFC 3339 UTC with milliseconds."""

from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

from contract.records import format_utc, new_record_id, normalized_utc, utc_now

UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def test_ids_are_uuid7_unique_and_in_order_even_many_per_millisecond() -> None:
    ids = [new_record_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids taken one after another sort in that order"
    for text in ids[:100]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert str(parsed) == text, "canonical lower-case form"


def test_id_time_is_the_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = int(new_record_id().replace("-", "")[:12], 16)
    after = time.time_ns() // 1_000_000
    assert before <= stamp <= after + 1


def test_ids_from_several_threads_never_collide() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        into.extend(new_record_id() for _ in range(5000))

    threads = [threading.Thread(target=take, args=(into,)) for into in found]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for into in found for i in into]
    assert len(set(every)) == len(every)


def test_times_are_utc_with_milliseconds() -> None:
    now = utc_now()
    assert UTC_MS.fullmatch(now)
    parsed = datetime.fromisoformat(now[:-1]).replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - parsed).total_seconds()) < 1
    east8 = datetime(2026, 1, 2, 3, 4, 5, 678_900, tzinfo=timezone(timedelta(hours=8)))
    assert format_utc(east8) == "2026-01-01T19:04:05.678Z"
    assert format_utc(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


def test_device_times_are_normalized_to_utc_with_milliseconds() -> None:
    assert normalized_utc("2026-11-22T09:30:00.123Z") == "2026-11-22T09:30:00.123Z"
    assert normalized_utc("2026-11-22T17:30:00.123+08:00") == "2026-11-22T09:30:00.123Z"
    assert normalized_utc("2026-11-22T09:30:00Z") == "2026-11-22T09:30:00.000Z"
    assert normalized_utc("2026-11-22t09:30:00.5z") == "2026-11-22T09:30:00.500Z"
    assert normalized_utc("2026-01-01T00:30:00.000+01:00") == "2025-12-31T23:30:00.000Z"
