"""Store hooks run in the writer's transaction; one that fails is undone alone and never costs a record."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from contract.records import Kind, Record
from hub.store.outbox import Outbox, Stored


async def test_a_failing_store_hook_is_undone_alone_and_the_records_are_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def good(conn: sqlite3.Connection, records: list[Record]) -> None:
        conn.execute("INSERT INTO kv (key, value) VALUES ('good', ?)", (records[0].id,))
        seen.extend(r.id for r in records)

    def bad(conn: sqlite3.Connection, records: list[Record]) -> None:
        conn.execute("INSERT INTO kv (key, value) VALUES ('bad', 'half-done')")
        raise RuntimeError("a bug in a hook")

    outbox = Outbox(tmp_path / "outbox.db", store_hooks=[bad, good])
    await outbox.open()
    try:
        record = Record(kind=Kind.EVALUATION, data={"level": 5})
        result = await outbox.store([record])
        assert isinstance(result, Stored)
        assert seen == [record.id], "the next hook still ran, in the same transaction"
        assert await outbox.get_record(record.id) is not None
        assert await outbox.kv_get("good") == record.id
        assert await outbox.kv_get("bad") is None, "the failing hook's writes were rolled back"
    finally:
        await outbox.close()
    assert "a store hook failed on 1 records" in caplog.text
