"""The §6 batch built from stored record texts (`wire.stored_batch_body`) and the uplink's byte budget."""

from __future__ import annotations

import gzip
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from contract import wire
from contract.records import Kind, Record
from hub.config import ConfigError, parse_config
from hub.store.outbox import DELIVERED, Outbox
from tests.sync.support import (
    StubHost,
    central_rows,
    fill,
    open_outbox,
    outbox_states,
    pending,
    ratings,
    recording_receiver,
    running_uplink,
    sync_config,
    sync_raw,
    wait_until,
)


async def test_stored_texts_make_the_batch_the_model_describes(tmp_path: Path) -> None:
    """Records stored by a real outbox, joined as they are: the same `Batch` as `new_batch` of them."""
    config = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    async with open_outbox(config) as outbox:
        records = ratings(config, 300, bad_every=7)
        records.append(Record(kind=Kind.ALERT, data={"type": "note", "text": '窗口 07 排队 "很长"\n'}))
        await fill(outbox, records)
        rows = await outbox.next_batch(5000)
    texts = [row.body for row in rows]
    sent_at = wire.format_timestamp(datetime(2026, 12, 1, 8, 30, 0, 123000, tzinfo=UTC))
    body = wire.stored_batch_body(config.node.id, "b-1", sent_at, texts)

    built = msgspec.json.decode(gzip.decompress(body), type=wire.Batch)
    expected = wire.new_batch(
        config.node.id,
        [json.loads(text) for text in texts],
        batch_id="b-1",
        sent_at=wire.parse_timestamp(sent_at),
    )
    assert built == expected
    assert [r.id for r in built.records] == [row.id for row in rows]
    assert built.records[0].kind == "alert", "alerts first, as next_batch ordered them"
    assert wire.stored_batch_body(config.node.id, "b-1", sent_at, texts, compress=False) == gzip.decompress(
        body
    )

    decoded = wire.decode_batch(body)
    assert decoded.rejected == ()
    assert list(decoded.records) == list(expected.records)
    assert (decoded.node_id, decoded.batch_id, decoded.sent_at) == (config.node.id, "b-1", sent_at)


@pytest.mark.parametrize(
    ("node_id", "batch_id", "sent_at", "count", "why"),
    [
        ("hall 1", "b", "2026-12-01T08:30:00.000Z", 1, "node_id"),
        ('n"1', "b", "2026-12-01T08:30:00.000Z", 1, "node_id"),
        ("n1", 'b"', "2026-12-01T08:30:00.000Z", 1, "batch_id"),
        ("n1", "", "2026-12-01T08:30:00.000Z", 1, "batch_id"),
        ("n1", "b", "2026-12-01 08:30:00", 1, "RFC 3339"),
        ("n1", "b", "2026-12-01T08:30:00.000Z", 0, "1-5000 records"),
        ("n1", "b", "2026-12-01T08:30:00.000Z", wire.MAX_BATCH_RECORDS + 1, "1-5000 records"),
    ],
)
def test_stored_batch_body_refuses_a_bad_envelope(
    node_id: str, batch_id: str, sent_at: str, count: int, why: str
) -> None:
    """Only the envelope is the function's own text: it is checked, so that it cannot break the JSON."""
    text = '{"id":"x"}'
    with pytest.raises(ValueError, match=why):
        wire.stored_batch_body(node_id, batch_id, sent_at, [text] * count)


def test_the_byte_budget_has_a_default_and_bounds(tmp_path: Path) -> None:
    """4 MiB by default (under the reference receiver's 16 MiB), `batch_max` still 500; outside 64 KiB–16 MiB an error."""
    raw = sync_raw(tmp_path / "data", "http://127.0.0.1:1")
    del raw["central"]["batch_max"]
    config = parse_config(raw)
    assert config.central.batch_max_bytes == 4 * 2**20
    assert config.central.batch_max == 500
    for wrong in (1000, 16 * 2**20 + 1, "4M"):
        raw = sync_raw(tmp_path / "data", "http://127.0.0.1:1", central={"batch_max_bytes": wrong})
        with pytest.raises(ConfigError, match=r"central\.batch_max_bytes"):
            parse_config(raw, tmp_path / "node.toml")


async def test_uplink_keeps_each_batch_within_the_byte_budget(tmp_path: Path) -> None:
    """`central.batch_max_bytes` binds before `batch_max`: more, smaller batches, every record once."""
    budget = 65_536
    central_db = tmp_path / "central.db"
    async with recording_receiver(f"sqlite:///{central_db}") as central:
        config = sync_config(
            tmp_path / "data", central.url, batch_max=5000, central={"batch_max_bytes": budget}
        )
        assert config.central.batch_max_bytes == budget
        async with open_outbox(config) as outbox:
            records = ratings(config, 1500, bad_every=50)
            await fill(outbox, records)
            sizes = [len(row.body.encode("utf-8")) + 1 for row in await outbox.next_batch(5000)]
            host = StubHost(config, outbox)
            async with running_uplink(host):
                await wait_until(lambda: _drained(outbox), 60, "the backlog to drain")
    rows = central_rows(central_db)
    assert sorted(i for _s, i, _k in rows) == sorted(r.id for r in records), "every record exactly once"
    assert {seen.status for seen in central.requests} == {200}, "no batch over a limit, none refused"
    least = math.ceil(sum(sizes) / budget)
    assert least <= len(central.requests) <= least + math.ceil(least * max(sizes) / budget) + 1
    assert len(set(central.keys())) == len(central.requests)
    assert {state for state, _via in outbox_states(tmp_path / "data" / "outbox.db").values()} == {DELIVERED}


async def _drained(outbox: Outbox) -> bool:
    return await pending(outbox) == 0
