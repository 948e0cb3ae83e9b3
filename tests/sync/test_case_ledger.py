"""One rating per case, durably (CONTRACTS §15): the case ledger in the outbox file.

The two defects of issue 16 are reproduced first: 一次一评 was judged from the records still in the
outbox, so a case whose ratings were delivered and pruned (by retention or by quota shedding) was
forgotten. Every test runs on a real SQLite file through the outbox's one write path.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import jsonschema

from contract.records import Record
from hub.config import HubConfig
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.ops.broker import MosquittoBroker
from hub.store.outbox import Outbox, Stored
from hub.store.schema import MIGRATIONS, migrate, open_connection
from sync.annotate import make_evaluation_hook
from sync.national import national_record_schema
from tests.support.hub import node_config, running_hub
from tests.sync.support import open_outbox, sync_config, wait_until

VALIDATOR = jsonschema.Draft202012Validator(national_record_schema())
LONG_AGO = "2000-01-01T00:00:00.000Z"
OLD_INSERT = (
    "INSERT INTO records (seq, id, kind, priority, created_at, device_id, case_no, body, sealed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _config(tmp_path: Path, **national: Any) -> HubConfig:
    devices = [
        {"id": "kp-07", "kind": "keypad", "transport": "serial", "port": "/dev/null", "window": "07"},
        {"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "01"},
    ]
    return sync_config(tmp_path / "data", "http://127.0.0.1:1", device=devices, national=national)


def _db(config: HubConfig) -> Path:
    return Path(config.node.data_dir) / "outbox.db"


def _records(config: HubConfig, level: int, device: str = "pad-01", **fields: Any) -> list[Record]:
    """An evaluation (and its alert when bad) as the hub builds it, not yet stored."""
    intake = Intake(config, Outbox(":memory:"), HubMetrics())
    return intake.evaluation(config.devices_by_id[device], level=level, reasons=[], **fields)


async def _rate(outbox: Outbox, config: HubConfig, level: int, **fields: Any) -> tuple[str, dict[str, Any]]:
    """Store one rating through the outbox's write path; its id and stored `data`."""
    records = _records(config, level, **fields)
    assert isinstance(await outbox.store(records), Stored)
    stored = await outbox.get_record(records[0].id)
    assert stored is not None
    data: dict[str, Any] = stored["data"]
    if "national" in data:
        VALIDATOR.validate(data["national"])
    return records[0].id, data


def _assess(data: dict[str, Any]) -> int | None:
    national = data.get("national")
    return None if national is None else int(national["assessNumber"])


def _ledger(db: Path) -> dict[tuple[str, str], tuple[int, int | None]]:
    """(case_no, channel) → (first level, second level), read straight from the file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT case_no, channel, first_level, second_level FROM case_ledger").fetchall()
    finally:
        conn.close()
    return {(case, channel): (first, second) for case, channel, first, second in rows}


def _sql(db: Path, statement: str, *args: Any) -> int:
    """Change the file while no hub has it open (a test's way to age rows)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            return int(conn.execute(statement, args).rowcount)
    finally:
        conn.close()


async def test_a_bad_review_delivered_and_pruned_then_re_rated_is_assess_number_2(tmp_path: Path) -> None:
    """Defect 1: rated 1, delivered, pruned by retention, re-rated: was assessNumber 1, must be 2."""
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        first_id, first = await _rate(outbox, config, 1, case_no="C-PRUNED-1")
        assert await outbox.mark_delivered([first_id], via="push") == 1
    _sql(_db(config), "UPDATE records SET delivered_at = ? WHERE id = ?", LONG_AGO, first_id)
    async with open_outbox(config) as outbox:
        records, _dedup = await outbox.prune(2 * 86400, 2 * 86400)
        assert records == 1
        assert await outbox.get_record(first_id) is None, "the first rating was really pruned"
        _, again = await _rate(outbox, config, 4, case_no="C-PRUNED-1")
        _, third = await _rate(outbox, config, 5, case_no="C-PRUNED-1")
    assert _assess(first) == 1
    assert _assess(again) == 2
    assert again["flags"] == []
    assert _assess(third) is None
    assert third["flags"] == ["repeat"]


async def test_a_good_review_pruned_then_rated_again_is_a_repeat(tmp_path: Path) -> None:
    """Defect 2: rated 5, pruned, rated again: was sent as a first rating, must be a repeat."""
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        first_id, first = await _rate(outbox, config, 5, case_no="C-PRUNED-5")
        assert await outbox.mark_delivered([first_id], via="pull") == 1
    _sql(_db(config), "UPDATE records SET delivered_at = ? WHERE id = ?", LONG_AGO, first_id)
    async with open_outbox(config) as outbox:
        assert (await outbox.prune(86400, 86400))[0] == 1
        assert await outbox.get_record(first_id) is None
        _, again = await _rate(outbox, config, 1, case_no="C-PRUNED-5")
        alerts = await outbox.recent_records("alert", 10)
    assert _assess(first) == 1
    assert "national" not in again
    assert again["flags"] == ["repeat"]
    assert [a["data"]["evaluation_id"] for a in alerts if a["data"]["type"] == "bad_review"], (
        "a repeated bad review is still stored and still raises its alert"
    )


async def test_the_ledger_survives_quota_shedding(tmp_path: Path) -> None:
    """Near the quota the outbox sheds every delivered record: the cases are still remembered."""
    config = _config(tmp_path)
    hook = make_evaluation_hook(config)
    async with open_outbox(config) as outbox:
        good_id, _ = await _rate(outbox, config, 5, case_no="C-SHED-5")
        bad_id, _ = await _rate(outbox, config, 2, case_no="C-SHED-2")
        assert await outbox.mark_delivered([good_id, bad_id], via="push") == 2
        used = (await outbox.stats()).used_bytes
    tight = Outbox(_db(config), max_bytes=used, evaluation_hook=hook)
    await tight.open()
    try:
        await _rate(tight, config, 4, case_no="C-OTHER")

        async def shed() -> bool:
            alerts = await tight.recent_records("alert", 20)
            return any(a["data"]["type"] == "outbox_near_full" for a in alerts)

        await wait_until(shed, 10, "the outbox_near_full alert after shedding")
        assert await tight.get_record(good_id) is None, "shed: delivered records are gone"
        assert await tight.get_record(bad_id) is None
        _, good_again = await _rate(tight, config, 3, case_no="C-SHED-5")
        _, bad_again = await _rate(tight, config, 4, case_no="C-SHED-2")
    finally:
        await tight.close()
    assert good_again["flags"] == ["repeat"]
    assert "national" not in good_again
    assert _assess(bad_again) == 2


async def test_a_suspect_press_is_never_a_first_or_second_rating(tmp_path: Path) -> None:
    """A `suspect` press after a bad review got assessNumber 2; now it gets no national record and the
    real re-evaluation after 整改 is still number 2."""
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        _, bad = await _rate(outbox, config, 1, case_no="C-SUS")
        _, suspect = await _rate(outbox, config, 1, case_no="C-SUS", flags=["suspect"])
        _, re_rated = await _rate(outbox, config, 4, case_no="C-SUS")
        _, suspect_first = await _rate(outbox, config, 5, case_no="C-SUS-2", flags=["suspect"])
        _, real_first = await _rate(outbox, config, 5, case_no="C-SUS-2")
    assert _assess(bad) == 1
    assert "national" not in suspect
    assert suspect["flags"] == ["suspect"], "not a repeat either: it simply does not count"
    assert _assess(re_rated) == 2
    assert "national" not in suspect_first
    assert _assess(real_first) == 1
    assert _ledger(_db(config)) == {("C-SUS", "pad"): (1, 4), ("C-SUS-2", "pad"): (5, None)}


async def test_cases_are_forgotten_only_after_case_history_days(tmp_path: Path) -> None:
    config = _config(tmp_path, case_history_days=30)
    async with open_outbox(config) as outbox:
        await _rate(outbox, config, 5, case_no="C-OLD")
        await _rate(outbox, config, 5, case_no="C-RECENT")
    db = _db(config)
    _sql(db, "UPDATE case_ledger SET first_at = ?, last_at = ? WHERE case_no = 'C-OLD'", LONG_AGO, LONG_AGO)
    _sql(
        db,
        "UPDATE case_ledger SET last_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-29 days') WHERE case_no = ?",
        "C-RECENT",
    )
    async with open_outbox(config) as outbox:
        assert await outbox.prune(0, 0) == (0, 0), "record retention does not touch the ledger"
        assert set(_ledger(db)) == {("C-OLD", "pad"), ("C-RECENT", "pad")}
        assert await outbox.prune_case_ledger(config.national.case_history_days * 86400) == 1
        _, old_again = await _rate(outbox, config, 5, case_no="C-OLD")
        _, recent_again = await _rate(outbox, config, 5, case_no="C-RECENT")
    assert _assess(old_again) == 1, "past case_history_days the case starts afresh"
    assert recent_again["flags"] == ["repeat"]


async def test_the_hubs_maintenance_prunes_the_ledger_by_case_history_days(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A real hub's maintenance pass (at start-up) applies `national.case_history_days`."""
    config = node_config(tmp_path / "data", broker.port, national={"case_history_days": 2})
    async with open_outbox(config) as outbox:
        for case in ("H-OLD", "H-NEW"):
            records = Intake(config, outbox, HubMetrics()).evaluation(
                config.devices_by_id["pad-00"], level=5, reasons=[], case_no=case
            )
            assert isinstance(await outbox.store(records), Stored)
    db = _db(config)
    _sql(
        db,
        "UPDATE case_ledger SET last_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-49 hours') WHERE case_no = ?",
        "H-OLD",
    )
    async with running_hub(config):

        async def pruned() -> bool:
            return set(_ledger(db)) == {("H-NEW", "pad")}

        await wait_until(pruned, 10, "the start-up maintenance pass")


# -- migration from schema 3 (the outbox before the ledger) ------------------------------------------


def _old_row(seq: int, record: Record, national: dict[str, Any] | None, flags: list[str]) -> tuple[Any, ...]:
    """A row as the hub of schema 3 wrote it: §1 body with the flags and national record it judged."""
    record.seq = seq
    record.data["flags"] = flags
    if national is not None:
        record.data["national"] = national
    wire = record.to_wire()
    return (
        seq,
        record.id,
        str(record.kind),
        0 if str(record.kind) == "alert" else 1,
        record.created_at,
        record.data.get("device_id"),
        record.data.get("case_no"),
        json.dumps(wire, ensure_ascii=False),
        None,
    )


async def test_an_outbox_of_schema_3_gains_the_ledger_from_the_evaluations_it_holds(tmp_path: Path) -> None:
    config = _config(tmp_path)
    db = _db(config)
    db.parent.mkdir(parents=True)
    conn = open_connection(db)
    assert migrate(conn, MIGRATIONS[:3]) == 3

    def national(number: int) -> dict[str, Any]:
        return {"assessNumber": number, "satisfaction": 3}

    plan: list[tuple[int, str, str, dict[str, Any] | None, list[str]]] = [
        (1, "pad-01", "M-A", national(1), []),  # a bad review ...
        (4, "pad-01", "M-A", national(2), []),  # ... and its re-evaluation: (1, 4)
        (5, "pad-01", "M-B", national(1), []),  # a good review ...
        (3, "pad-01", "M-B", None, ["repeat"]),  # ... and a repeat, which does not count: (5, -)
        (2, "kp-07", "M-B", national(1), []),  # the same case through another channel
        (1, "pad-01", "M-C", None, ["suspect"]),  # only a suspect press, never sent: no row
        (2, "pad-01", "M-D", national(1), ["suspect"]),  # a suspect press that was sent: it counted
        (4, "pad-01", "", national(1), []),  # a free rating: no case, no row
    ]
    rows: list[tuple[Any, ...]] = []
    for level, device, case, sent, flags in plan:
        for record in _records(config, level, device=device, case_no=case or None):
            rows.append(
                _old_row(len(rows) + 1, record, sent if str(record.kind) == "evaluation" else None, flags)
            )
    with conn:
        conn.executemany(OLD_INSERT, rows)
        conn.execute("UPDATE records SET state = 1, delivered_at = ? WHERE seq <= 3", (LONG_AGO,))
    before = {row[0]: row[1:] for row in conn.execute("SELECT seq, id, body, state FROM records")}
    conn.close()

    async with open_outbox(config) as outbox:
        after_upgrade = _ledger(db)
        _, a = await _rate(outbox, config, 5, case_no="M-A")
        _, b = await _rate(outbox, config, 4, case_no="M-B")
        _, c = await _rate(outbox, config, 2, case_no="M-C")
        _, d = await _rate(outbox, config, 5, case_no="M-D")
        _, b_keypad = await _rate(outbox, config, 5, device="kp-07", case_no="M-B")
    conn = sqlite3.connect(db)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        kept = {
            row[0]: row[1:]
            for row in conn.execute("SELECT seq, id, body, state FROM records WHERE seq <= ?", (len(rows),))
        }
    finally:
        conn.close()
    assert version == len(MIGRATIONS)
    assert kept == before, "every record is kept as it was, delivered ones included"
    assert after_upgrade == {
        ("M-A", "pad"): (1, 4),
        ("M-B", "pad"): (5, None),
        ("M-B", "keypad"): (2, None),
        ("M-D", "pad"): (2, None),
    }
    assert a["flags"] == ["repeat"]
    assert b["flags"] == ["repeat"]
    assert _assess(c) == 1, "the suspect press that was never sent did not count"
    assert _assess(d) == 2, "the suspect press that was sent counted for the platform"
    assert _assess(b_keypad) == 2


async def test_ratings_of_one_case_in_one_commit_are_judged_in_turn_by_the_ledger(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with open_outbox(config) as outbox:
        batches = [_records(config, level, case_no="C-ONE-COMMIT") for level in (2, 3, 5)]
        results = await asyncio.gather(*(outbox.store(records) for records in batches))
        assert all(isinstance(result, Stored) for result in results)
        data = [((await outbox.get_record(records[0].id)) or {})["data"] for records in batches]
    assert [_assess(d) for d in data] == [1, 2, None]
    assert _ledger(_db(config)) == {("C-ONE-COMMIT", "pad"): (2, 3)}
