"""Open bad-review alerts on a real outbox: listed until acknowledged, bounded however many pile up."""

from __future__ import annotations

from pathlib import Path

from contract.records import Kind, Record
from hub.hall.alerts import MAX_OPEN, AlertBook
from hub.store.outbox import Outbox, Stored


def bad_review(n: int) -> Record:
    return Record(kind=Kind.ALERT, data={"type": "bad_review", "evaluation_id": f"e{n}", "level": 1})


async def test_only_the_newest_open_alerts_are_listed_and_older_ones_can_still_be_acknowledged(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    await outbox.open()
    try:
        book = AlertBook(outbox)
        outbox.add_listener(book.on_commit)
        ids = []
        for n in range(MAX_OPEN + 20):
            result = await outbox.store([bad_review(n)])
            assert isinstance(result, Stored)
            ids.append(result.records[0].id)
        listed = [alert["id"] for alert in book.open_alerts()]
        assert listed == ids[20:], "the newest MAX_OPEN, oldest first"
        ack = await book.acknowledge(ids[0], by="值班长")
        assert ack is not None, "an unlisted alert is still acknowledged"
        assert ack["id"] == ids[0]
        assert await book.acknowledge(ids[-1], by=None) is not None
        assert [alert["id"] for alert in book.open_alerts()] == ids[20:-1]

        restarted = AlertBook(outbox)
        await restarted.load()
        assert [alert["id"] for alert in restarted.open_alerts()] == ids[20:-1]
    finally:
        await outbox.close()
