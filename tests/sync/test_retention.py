"""Retention: the hub's maintenance prunes delivered records past `outbox.retention_days` only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hub.ops.broker import MosquittoBroker
from hub.store.outbox import DEAD, DELIVERED, PENDING
from tests.support.hub import node_config, running_hub
from tests.sync.support import fill, open_outbox, outbox_states, ratings, wait_until


async def test_maintenance_prunes_old_deliveries_and_keeps_dead_letters(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port, outbox={"retention_days": 2.0})
    db = tmp_path / "data" / "outbox.db"
    records = ratings(config, 40)
    ids = [r.id for r in records]
    async with open_outbox(config) as outbox:
        await fill(outbox, records)
        assert await outbox.mark_delivered(ids[:10], via="push") == 10
        assert await outbox.ack_upto(records[19].seq, via="pull") == 10
        for record_id in ids[20:23]:
            assert await outbox.dead_letter(record_id, "rejected by the platform: test")
    conn = sqlite3.connect(db)
    with conn:
        # Deliveries three days old (past the two days kept), and one just inside the window.
        conn.executemany(
            "UPDATE records SET delivered_at = ? WHERE id = ?",
            [("2000-01-01T00:00:00.000Z", i) for i in ids[:15]],
        )
        conn.execute(
            "UPDATE records SET delivered_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-47 hours') WHERE id = ?",
            (ids[15],),
        )
    conn.close()

    async with running_hub(config) as hub:

        async def pruned() -> bool:
            return len(outbox_states(db)) == 25

        await wait_until(pruned, 10, "the start-up maintenance pass")
        dead = await hub.outbox.dead_letters()
    states = outbox_states(db)
    assert not set(ids[:15]) & set(states), "delivered past retention: pruned"
    assert [states[i][0] for i in ids[15:20]] == [DELIVERED] * 5, "delivered within retention: kept"
    assert [states[i][0] for i in ids[20:23]] == [DEAD] * 3, "dead letters are kept"
    assert sorted(d.id for d in dead) == sorted(ids[20:23])
    assert [states[i][0] for i in ids[23:]] == [PENDING] * 17
