"""Pull (CONTRACTS §5): paging while records arrive, acks, and pull and push on the same node."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.ops.broker import MosquittoBroker, free_port
from hub.store.outbox import DELIVERED, Outbox
from tests.support.hub import PULL_TOKEN, node_config, running_hub
from tests.sync.support import (
    central_rows,
    fill,
    hub_with_uplink,
    open_outbox,
    outbox_states,
    pending,
    ratings,
    recording_receiver,
    sync_config,
    wait_until,
)

AUTH = {"Authorization": f"Bearer {PULL_TOKEN}"}


async def _page(http: aiohttp.ClientSession, base: str, after: int, limit: int) -> dict[str, Any]:
    async with http.get(f"{base}/v1/records", params={"after": after, "limit": limit}) as response:
        assert response.status == 200, await response.text()
        page: dict[str, Any] = await response.json()
        return page


async def _ack(http: aiohttp.ClientSession, base: str, upto: int) -> int:
    async with http.post(f"{base}/v1/records/ack", json={"upto": upto}) as response:
        assert response.status == 200, await response.text()
        acked: int = (await response.json())["acked"]
        return acked


@pytest.mark.slow
async def test_paging_50000_records_while_new_ones_arrive(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = node_config(tmp_path / "data", broker.port)
    backlog = ratings(config, 50_000)
    arriving = ratings(config, 2_000, start=50_000)
    async with open_outbox(config) as outbox:
        await fill(outbox, backlog, chunk=5000)
    async with running_hub(config) as hub:

        async def trickle() -> None:
            for begin in range(0, len(arriving), 50):
                await fill(hub.outbox, arriving[begin : begin + 50])
                await asyncio.sleep(0.05)

        writer = asyncio.create_task(trickle())
        base = f"http://127.0.0.1:{hub.api_port}"
        served: list[str] = []
        after, acked = 0, 0
        async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as http:
            for number in range(2000):
                page = await _page(http, base, after, 5000)
                assert number > 0 or not writer.done(), "records arrive while the first pages are read"
                served += [record["id"] for record in page["records"]]
                seqs = [record["seq"] for record in page["records"]]
                assert seqs == sorted(seqs)
                assert all(seq > after for seq in seqs)
                if page["records"]:
                    acked += await _ack(http, base, page["next_after"])
                    again = await _page(http, base, 0, 10)
                    assert all(record["seq"] > page["next_after"] for record in again["records"]), (
                        "acked records are not served again"
                    )
                after = page["next_after"]
                if not page["more"]:
                    if writer.done() and not (await _page(http, base, after, 5000))["records"]:
                        break
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("paging did not finish within 2,000 pages")
            await writer
            assert (await _page(http, base, 0, 5000))["records"] == []
        assert await pending(hub.outbox) == 0
        delivered = hub.metrics.registry.get_sample_value("hallhub_records_delivered_total", {"via": "pull"})
    assert len(served) == len(set(served)) == 52_000
    assert set(served) == {r.id for r in backlog + arriving}
    assert acked == delivered == 52_000
    states = outbox_states(tmp_path / "data" / "outbox.db")
    assert set(states.values()) == {(DELIVERED, "pull")}


async def _failed_at_least(hub: Any, count: int) -> bool:
    value = hub.metrics.registry.get_sample_value("hallhub_sync_total", {"result": "failed"}) or 0.0
    return value >= count


async def _drained(outbox: Outbox) -> bool:
    return await pending(outbox) == 0


async def test_pulled_records_are_not_pushed_and_pushed_ones_not_served(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_port()
    config = sync_config(
        tmp_path / "data", f"http://127.0.0.1:{port}", broker_port=broker.port, batch_max=500
    )
    records = ratings(config, 2000)
    async with hub_with_uplink(config) as hub:
        await fill(hub.outbox, records)
        await wait_until(lambda: _failed_at_least(hub, 2), 10, "the uplink to hold a batch in flight")
        base = f"http://127.0.0.1:{hub.api_port}"
        async with aiohttp.ClientSession(headers=AUTH, timeout=aiohttp.ClientTimeout(total=30)) as http:
            page = await _page(http, base, 0, 1000)
            pulled = [record["id"] for record in page["records"]]
            assert await _ack(http, base, page["next_after"]) == 1000
            async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}", port=port) as central:
                await wait_until(lambda: _drained(hub.outbox), 20, "push to deliver the rest")
            assert (await _page(http, base, 0, 5000))["records"] == [], "pushed records are not served"
    pushed = {i for _s, i, _k in central_rows(tmp_path / "central.db")}
    assert pushed == {r.id for r in records} - set(pulled), "records delivered by pull are not pushed"
    assert len(set(central.keys())) == 2, "the batch in flight lost its pulled records: a new id"
    states = outbox_states(tmp_path / "data" / "outbox.db")
    assert {states[i] for i in pulled} == {(DELIVERED, "pull")}
    assert {states[i] for i in pushed} == {(DELIVERED, "push")}
