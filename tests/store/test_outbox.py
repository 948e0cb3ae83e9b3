"""The outbox on a real SQLite file: group commit, dedup, quota, corruption, migrations, typed reads,
and a second process attached beside the owner."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from contract.records import Kind, Record
from hub.store.outbox import (
    DeadLetter,
    DedupKey,
    Duplicate,
    Outbox,
    PendingRecord,
    RatingCount,
    Rejected,
    Stored,
    StoreUnavailable,
    pending_by_kind,
)
from hub.store.schema import MIGRATIONS, SCHEMA_VERSION, SchemaError, migrate, open_connection


def evaluation(level: int = 5, **data: object) -> Record:
    return Record(kind=Kind.EVALUATION, data={"level": level, "device_id": "t1", **data})


@pytest.fixture
async def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    box = Outbox(tmp_path / "outbox.db")
    await box.open()
    yield box
    await box.close()


async def test_concurrent_writes_share_commits_and_get_growing_seqs(outbox: Outbox) -> None:
    results = await asyncio.gather(
        *(outbox.store([evaluation()], DedupKey("t1", f"m{n}")) for n in range(1000))
    )
    assert all(isinstance(r, Stored) for r in results)
    seqs = [r.records[0].seq for r in results if isinstance(r, Stored)]
    assert sorted(seqs) == list(range(1, 1001))
    assert outbox.commits < 100, "1,000 concurrent writes should share far fewer commits"


async def test_dedup_answers_first_id(outbox: Outbox) -> None:
    first = await outbox.store([evaluation()], DedupKey("t1", "same"))
    assert isinstance(first, Stored)
    for _ in range(4):
        again = await outbox.store([evaluation()], DedupKey("t1", "same"))
        assert again == Duplicate(record_id=first.records[0].id)
    other_device = await outbox.store([evaluation()], DedupKey("t2", "same"))
    assert isinstance(other_device, Stored)
    assert (await outbox.stats()).pending == 2


async def test_windowed_dedup_expires(outbox: Outbox) -> None:
    key = DedupKey("kp", "seq7", window_s=0.2)
    assert isinstance(await outbox.store([evaluation()], key), Stored)
    assert isinstance(await outbox.store([evaluation()], key), Duplicate)
    await asyncio.sleep(0.3)
    assert isinstance(await outbox.store([evaluation()], key), Stored)


async def test_seq_never_reused_after_pruning(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    await box.open()
    stored = await box.store([evaluation(), evaluation()])
    assert isinstance(stored, Stored)
    await box.ack_upto(2)
    assert await box.prune(delivered_older_than_s=-1, dedup_older_than_s=1e9) == (2, 0)
    await box.close()
    box = Outbox(tmp_path / "o.db")
    await box.open()
    again = await box.store([evaluation()])
    assert isinstance(again, Stored)
    assert again.records[0].seq == 3
    await box.close()


async def test_pull_paging_kind_filter_and_ack(outbox: Outbox) -> None:
    for n in range(10):
        kind = Kind.SCAN if n % 2 else Kind.EVALUATION
        await outbox.store([Record(kind=kind, data={"n": n})])
    bodies, last, more = await outbox.pending_page(0, 4)
    assert (len(bodies), last, more) == (4, 4, True)
    bodies, last, more = await outbox.pending_page(8, 4)
    assert (len(bodies), last, more) == (2, 10, False)
    scans, last, _ = await outbox.pending_page(0, 100, "scan")
    assert len(scans) == 5
    assert last == 10
    assert await outbox.ack_upto(4) == 4
    bodies, _, _ = await outbox.pending_page(0, 100)
    assert len(bodies) == 6


async def test_alerts_come_first_in_batches(outbox: Outbox) -> None:
    await outbox.store([evaluation(5)])
    await outbox.store([evaluation(1), Record(kind=Kind.ALERT, data={"type": "bad_review"})])
    batch = await outbox.next_batch(10)
    assert [row.seq for row in batch] == [3, 1, 2]


async def test_the_uplinks_next_batch_leaves_out_seqs_and_marks_by_seq(outbox: Outbox) -> None:
    """The uplink reads the batch after the one in flight by leaving that one's seqs out, and marks
    an answered batch delivered by seq; only pending records count."""
    await outbox.store([evaluation(n % 5 + 1) for n in range(6)])
    first = await outbox.next_batch(2)
    second = await outbox.next_batch(2, exclude=[row.seq for row in first])
    assert [row.seq for row in first] == [1, 2]
    assert [row.seq for row in second] == [3, 4]
    assert await outbox.mark_delivered_seqs([1, 2, 99], via="push") == 2
    assert await outbox.mark_delivered_seqs([1, 2], via="push") == 0, "already delivered"
    assert [row.seq for row in await outbox.next_batch(10, exclude=[3, 4])] == [5, 6]
    assert (await outbox.stats()).pending == 4


async def test_dead_letter_and_retry(outbox: Outbox) -> None:
    stored = await outbox.store([evaluation()])
    assert isinstance(stored, Stored)
    record_id = stored.records[0].id
    assert await outbox.dead_letter(record_id, "satisfaction: invalid")
    assert (await outbox.stats()).pending == 0
    assert (await outbox.dead_letters())[0].reason == "satisfaction: invalid"
    assert await outbox.retry_dead_letters([record_id]) == ([record_id], [])
    assert (await outbox.stats()).pending == 1
    assert await outbox.mark_delivered([record_id], "push") == 1
    assert await outbox.mark_delivered([record_id], "push") == 0


async def test_quota_sheds_telemetry_first_never_evaluations(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=256 * 1024)
    await box.open()
    alerts: list[Record] = []
    box.add_listener(lambda records: alerts.extend(r for r in records if r.kind is Kind.ALERT))
    blob = "x" * 2000
    shed = None
    for n in range(400):
        result = await box.store([Record(kind=Kind.DEVICE_STATUS, data={"n": n, "blob": blob})])
        if isinstance(result, Rejected):
            shed = result
            break
    assert shed is not None
    assert shed.reason == "outbox near full: device telemetry is shed"
    for _ in range(50):
        await asyncio.sleep(0.01)
        if alerts:
            break
    assert alerts[0].data["type"] == "outbox_near_full"
    assert alerts[0].data["state"] == "raised"
    for n in range(300):
        assert isinstance(await box.store([evaluation(blob=blob, n=n)]), Stored)
    scan = await box.store([Record(kind=Kind.SCAN, data={"blob": blob})])
    assert isinstance(scan, Rejected)
    assert scan.reason.startswith("outbox full")
    stats = await box.stats()
    assert stats.pending_by_kind["evaluation"] == 300
    assert "device_status" not in stats.pending_by_kind, "pending telemetry was shed to make room"
    await box.close()


async def test_corrupt_file_is_moved_aside_and_records_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    await box.open()
    for n in range(200):
        await box.store([evaluation(n=n, pad="p" * 200)])
    await box.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    middle = len(raw) // page // 2
    raw[middle * page : (middle + 1) * page] = b"\xff" * page
    path.write_bytes(bytes(raw))

    box = Outbox(path)
    await box.open()
    assert box.recovered_from is not None
    assert box.recovered_from.exists(), "the damaged file is kept for inspection"
    assert 0 < box.salvaged < 200
    stats = await box.stats()
    assert stats.pending_by_kind["evaluation"] == box.salvaged
    assert stats.pending_by_kind["alert"] == 1
    fresh = await box.store([evaluation()])
    assert isinstance(fresh, Stored)
    assert fresh.records[0].seq > box.salvaged
    await box.close()


async def test_garbage_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path)
    await box.open()
    assert box.recovered_from is not None
    assert box.recovered_from.read_bytes().startswith(b"this is not")
    assert box.salvaged == 0
    await box.close()


def test_migrations_from_empty_and_refusal_of_newer(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "a.db")
    assert migrate(conn) == SCHEMA_VERSION
    assert migrate(conn) == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaError, match="written by a newer hallhub"):
        migrate(conn)
    conn.close()


def test_a_later_migration_applies_to_an_old_store(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "b.db")
    migrate(conn)
    conn.execute("INSERT INTO kv (key, value) VALUES ('kept', 'yes')")
    extra = "ALTER TABLE kv ADD COLUMN note TEXT;\nCREATE INDEX kv_note ON kv (note);"

    assert migrate(conn, [*MIGRATIONS, extra]) == SCHEMA_VERSION + 1
    assert conn.execute("SELECT value, note FROM kv").fetchall() == [("yes", None)]
    broken = "ALTER TABLE nowhere ADD COLUMN x;"
    with pytest.raises(SchemaError, match=f"migration to schema {SCHEMA_VERSION + 2} failed"):
        migrate(conn, [*MIGRATIONS, extra, broken])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


async def test_committed_records_survive_without_close(tmp_path: Path) -> None:
    """What the writer acknowledged is in the file even if close() never runs (a crash)."""
    path = tmp_path / "o.db"
    box = Outbox(path)
    await box.open()
    result = await box.store([evaluation()], DedupKey("t1", "m1"))
    assert isinstance(result, Stored)
    reader = sqlite3.connect(path)
    assert reader.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    reader.close()
    await box.close()


async def test_a_version_1_store_with_data_migrates_and_keeps_working(tmp_path: Path) -> None:
    """A store written by schema 1 (before monotonic dedup) opens, migrates, and keeps its answers."""
    from hub.store.schema import MIGRATIONS

    path = tmp_path / "old.db"
    conn = open_connection(path)
    assert migrate(conn, MIGRATIONS[:1]) == 1
    conn.execute(
        "INSERT INTO records (seq, id, kind, priority, created_at, device_id, body)"
        " VALUES (7, 'old-id', 'evaluation', 1, '2026-01-01T00:00:00.000Z', 't1', '{}')"
    )
    conn.execute(
        "INSERT INTO dedup (device_id, msg_id, record_id, expires_at, created_at) VALUES ('t1', 'm1', 'old-id', NULL, 0)"
    )
    conn.close()
    box = Outbox(path)
    await box.open()
    assert await box.store([evaluation()], DedupKey("t1", "m1")) == Duplicate(record_id="old-id")
    fresh = await box.store([evaluation()], DedupKey("kp", "free-seq-1", window_s=60))
    assert isinstance(fresh, Stored)
    assert fresh.records[0].seq == 8
    assert isinstance(await box.store([evaluation()], DedupKey("kp", "free-seq-1", window_s=60)), Duplicate)
    await box.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    check.close()


async def test_repeats_within_one_commit_are_duplicates_of_the_first(outbox: Outbox) -> None:
    results = await asyncio.gather(*(outbox.store([evaluation()], DedupKey("t1", "burst")) for _ in range(5)))
    first = results[0]
    assert isinstance(first, Stored)
    assert results[1:] == [Duplicate(record_id=first.records[0].id)] * 4
    assert outbox.commits <= 2, "the five writes should have shared a commit"
    assert (await outbox.stats()).pending == 1


async def test_a_failing_write_fails_alone_in_its_batch(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    clash = evaluation()
    assert isinstance(await outbox.store([clash]), Stored)
    writes = [[evaluation()], [clash], [evaluation()]]  # the second reuses a stored record id
    results = await asyncio.gather(*(outbox.store(w) for w in writes), return_exceptions=True)
    assert isinstance(results[0], Stored)
    assert isinstance(results[2], Stored)
    assert isinstance(results[1], StoreUnavailable)
    assert "UNIQUE constraint failed: records.id" in str(results[1])
    assert "retrying them one by one" in caplog.text
    assert (await outbox.stats()).pending == 3
    seqs = [r.records[0].seq for r in (results[0], results[2]) if isinstance(r, Stored)]
    assert seqs == [2, 3], "no seq is skipped by the failed attempt"


def _counted(path: Path) -> dict[str, int]:
    """Pending by kind, counted the slow way, as the truth to compare with."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT kind, count(*) FROM records WHERE state = 0 GROUP BY kind").fetchall()
    finally:
        conn.close()
    return {str(kind): int(n) for kind, n in rows}


async def test_pending_counts_stay_exact_through_every_kind_of_write(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    await box.open()
    try:

        async def check() -> None:
            assert (await box.stats()).pending_by_kind == _counted(path)

        stored = [await box.store([evaluation(n=n)], DedupKey("t1", f"m{n}")) for n in range(6)]
        stored.append(await box.store([Record(kind=Kind.SCAN, data={"data": "x"})]))
        stored.append(await box.store([Record(kind=Kind.DEVICE_STATUS, data={"online": True})]))
        ids = [r.records[0].id for r in stored if isinstance(r, Stored)]
        await check()
        assert (await box.stats()).pending_by_kind == {"evaluation": 6, "scan": 1, "device_status": 1}
        assert await box.mark_delivered(ids[:2], via="push") == 2
        await check()
        assert await box.ack_upto(3) == 1
        await check()
        assert await box.dead_letter(ids[3], "rejected")
        await check()
        assert (await box.stats()).pending_by_kind["evaluation"] == 2
        assert await box.retry_dead_letters([ids[3]]) == ([ids[3]], [])
        await check()
        assert await box.prune(delivered_older_than_s=-60, dedup_older_than_s=86400) == (3, 0)
        await check()
        outside = sqlite3.connect(path)  # another writer, as the CLI is
        outside.execute("DELETE FROM records WHERE kind = 'device_status'")
        outside.commit()
        outside.close()
        await check()
        assert (await box.stats()).pending_by_kind == {"evaluation": 3, "scan": 1}
    finally:
        await box.close()


def test_migrating_a_store_counts_what_is_already_pending(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = open_connection(path)
    migrate(conn, MIGRATIONS[:2])
    for n, (kind, state) in enumerate([("evaluation", 0), ("evaluation", 0), ("scan", 0), ("evaluation", 1)]):
        conn.execute(
            "INSERT INTO records (seq, id, kind, priority, created_at, body, state) VALUES (?, ?, ?, 1, ?, '{}', ?)",
            (n + 1, f"r{n}", kind, f"2026-11-22T09:00:0{n}.000Z", state),
        )
    assert migrate(conn) == SCHEMA_VERSION
    assert pending_by_kind(conn) == ({"evaluation": 2, "scan": 1}, "2026-11-22T09:00:00.000Z")
    conn.close()


def test_an_unmigrated_store_is_still_counted(tmp_path: Path) -> None:
    """The CLI may read a store an older hub wrote, before the new hub has migrated it."""
    conn = open_connection(tmp_path / "v2.db")
    migrate(conn, MIGRATIONS[:2])
    conn.execute(
        "INSERT INTO records (seq, id, kind, priority, created_at, body) VALUES (1, 'r', 'alert', 0, 't', '{}')"
    )
    assert pending_by_kind(conn) == ({"alert": 1}, "t")
    conn.close()


async def test_a_write_alone_after_a_failed_batch_still_dedups_sheds_and_numbers(outbox: Outbox) -> None:
    """The one-by-one retry stores each write as a run of one, through the same function."""
    clash = evaluation()
    assert isinstance(await outbox.store([clash]), Stored)
    writes = [
        outbox.store([evaluation()], DedupKey("t1", "again")),
        outbox.store([clash]),
        outbox.store([evaluation()], DedupKey("t1", "again")),
        outbox.store([evaluation()]),
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    first = results[0]
    assert isinstance(first, Stored)
    assert isinstance(results[1], StoreUnavailable)
    assert results[2] == Duplicate(record_id=first.records[0].id)
    assert isinstance(results[3], Stored)
    assert [first.records[0].seq, results[3].records[0].seq] == [2, 3]


async def test_batches_and_resends_come_as_typed_rows_with_their_sealed_identity(outbox: Outbox) -> None:
    plain = evaluation(5)
    sealed = evaluation(4)
    sealed.sealed = "v1.sealed-token"
    alert = Record(kind=Kind.ALERT, data={"type": "bad_review"})
    assert isinstance(await outbox.store([plain, sealed, alert]), Stored)
    batch = await outbox.next_batch(10)
    assert [row.id for row in batch] == [alert.id, plain.id, sealed.id]
    assert batch[2] == PendingRecord(seq=2, id=sealed.id, body=sealed.wire_json, sealed="v1.sealed-token")
    assert batch[1].sealed is None
    again = await outbox.pending_by_ids([sealed.id, plain.id, alert.id, "not-stored"])
    assert again == batch
    await outbox.mark_delivered([sealed.id], via="push")
    assert [row.id for row in await outbox.pending_by_ids([sealed.id, plain.id])] == [plain.id]


async def test_dead_letters_are_typed_and_queued_again_in_one_commit(outbox: Outbox) -> None:
    stored = await outbox.store([evaluation(n=n) for n in range(4)])
    assert isinstance(stored, Stored)
    ids = [record.id for record in stored.records]
    for record_id in ids[:3]:
        assert await outbox.dead_letter(record_id, f"no: {record_id}")
    dead = await outbox.dead_letters()
    assert dead[0] == DeadLetter(ids[2], 3, "evaluation", f"no: {ids[2]}", dead[0].failed_at)
    commits = outbox.commits
    assert await outbox.retry_dead_letters([ids[1], "unknown", ids[1], ids[0]]) == (
        [ids[1], ids[0]],
        ["unknown"],
    )
    assert outbox.commits == commits + 1
    assert await outbox.retry_dead_letters() == ([ids[2]], [])
    assert await outbox.dead_letters() == []
    assert (await outbox.stats()).pending == 4
    assert await outbox.retry_dead_letters() == ([], [])


async def test_a_retried_dead_letter_that_is_no_longer_dead_stays_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    await box.open()
    try:
        stored = await box.store([evaluation()])
        assert isinstance(stored, Stored)
        record_id = stored.records[0].id
        assert await box.dead_letter(record_id, "rejected")
        conn = sqlite3.connect(path)  # a record delivered although a dead letter still names it
        conn.execute("UPDATE records SET state = 1")
        conn.commit()
        conn.close()
        assert await box.retry_dead_letters([record_id]) == ([record_id], [])
        assert (await box.stats()).pending == 0, "a delivered record is not sent again"
    finally:
        await box.close()


async def test_delivered_records_are_counted_by_how_they_went(outbox: Outbox) -> None:
    stored = await outbox.store([evaluation(n=n) for n in range(5)])
    assert isinstance(stored, Stored)
    ids = [record.id for record in stored.records]
    await outbox.mark_delivered(ids[:2], via="push")
    await outbox.ack_upto(3)
    assert await outbox.delivered_by_via() == {"push": 2, "pull": 1}


async def test_ratings_are_counted_by_window_and_level_since_a_moment(outbox: Outbox) -> None:
    old = evaluation(5, window="07")
    old.created_at = "2026-11-21T23:59:59.999Z"
    today = [
        evaluation(5, window="07"),
        evaluation(5, window="07"),
        evaluation(1, window="08"),
        evaluation(3),
    ]
    for record in today:
        record.created_at = "2026-11-22T08:00:00.000Z"
    await outbox.store([old, *today, Record(kind=Kind.ALERT, data={"type": "bad_review", "level": 1})])
    counts = await outbox.ratings_since("2026-11-22T00:00:00.000Z")
    assert sorted(counts, key=lambda c: (c.window or "", c.level)) == [
        RatingCount(None, 3, 1),
        RatingCount("07", 5, 2),
        RatingCount("08", 1, 1),
    ]


async def test_ratings_of_a_closed_outbox_are_unavailable(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    with pytest.raises(StoreUnavailable):
        await box.ratings_since("2026-11-22T00:00:00.000Z")


async def test_reads_in_a_snapshot_see_one_state_of_the_file(outbox: Outbox) -> None:
    await outbox.store([evaluation()])
    async with outbox.read_snapshot():
        assert (await outbox.stats()).pending == 1
        await outbox.store([evaluation()])
        async with outbox.read_snapshot():
            assert len(await outbox.next_batch(10)) == 1, "the snapshot holds"
        assert (await outbox.stats()).pending == 1
    assert (await outbox.stats()).pending == 2


# -- attached beside the owner -----------------------------------------------------------------


async def test_an_attached_outbox_reads_and_writes_beside_the_running_owner(outbox: Outbox) -> None:
    stored = await outbox.store([evaluation(), evaluation()])
    assert isinstance(stored, Stored)
    dead_id = stored.records[0].id
    await outbox.dead_letter(dead_id, "rejected")
    await outbox.kv_set("uplink.inflight", '{"ids": []}')
    tool = Outbox.attach(outbox.path, writable=True, busy_timeout_s=5)
    await tool.open()
    try:
        assert (await tool.stats()).pending == 1
        assert await tool.kv_get("uplink.inflight") == '{"ids": []}'
        assert await tool.retry_dead_letters([dead_id]) == ([dead_id], [])
        with pytest.raises(StoreUnavailable, match="stores no records"):
            await tool.store([evaluation()])
        with pytest.raises(StoreUnavailable, match="stores no records"):
            await tool.store_soon([evaluation()])
    finally:
        await tool.close()
    assert (await outbox.stats()).pending == 2, "the owner sees the retried record"
    after = await outbox.store([evaluation()])
    assert isinstance(after, Stored)
    assert after.records[0].seq == 3, "the owner's seqs go on undisturbed"


async def test_a_read_only_attachment_refuses_writes(outbox: Outbox) -> None:
    await outbox.store([evaluation()])
    tool = Outbox.attach(outbox.path)
    await tool.open()
    try:
        assert len(await tool.next_batch(10)) == 1
        with pytest.raises(StoreUnavailable, match="attached read-only"):
            await tool.kv_set("k", "v")
    finally:
        await tool.close()


async def test_attaching_never_creates_migrates_or_adopts_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreUnavailable, match="cannot read it"):
        await Outbox.attach(missing).open()
    assert not missing.exists()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="cannot read it"):
        await Outbox.attach(garbage, writable=True).open()
    assert garbage.read_bytes().startswith(b"this is not"), "a tool never moves a file aside"
    assert [p.name for p in tmp_path.iterdir()] == ["garbage.db"]

    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(SchemaError, match="not a hallhub outbox"):
        await Outbox.attach(foreign, writable=True).open()
    check = sqlite3.connect(foreign)
    assert [name for (name,) in check.execute("SELECT name FROM sqlite_master")] == ["t"]
    check.close()

    older = tmp_path / "v2.db"
    conn = open_connection(older)
    migrate(conn, MIGRATIONS[:2])
    conn.execute(
        "INSERT INTO records (seq, id, kind, priority, created_at, body) VALUES (1, 'r', 'scan', 1, 't', '{}')"
    )
    conn.close()
    tool = Outbox.attach(older, writable=True)
    await tool.open()
    try:
        assert (await tool.stats()).pending_by_kind == {"scan": 1}
    finally:
        await tool.close()
    check = sqlite3.connect(older)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 2, "migrating is the hub's job"
    check.close()

    newer = tmp_path / "v9.db"
    conn = open_connection(newer)
    migrate(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaError, match="written by a newer hallhub"):
        await Outbox.attach(newer).open()


async def test_an_attached_writer_waits_for_the_owners_lock(outbox: Outbox) -> None:
    stored = await outbox.store([evaluation()])
    assert isinstance(stored, Stored)
    await outbox.dead_letter(stored.records[0].id, "rejected")
    holder = sqlite3.connect(outbox.path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    tool = Outbox.attach(outbox.path, writable=True, busy_timeout_s=0.2)
    await tool.open()
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            await tool.retry_dead_letters()
        holder.execute("COMMIT")
        assert await tool.retry_dead_letters() == ([stored.records[0].id], [])
    finally:
        holder.close()
        await tool.close()
    assert (await outbox.stats()).pending == 1
