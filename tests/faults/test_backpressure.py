"""A burst faster than the outbox commits: the hub stops reading from the broker instead of dropping.

A publisher that does not retry (like a bench, or a device with a broken retry) sends thousands of
QoS-1 ratings at once. Over PAUSE_AT messages in progress the gateway pauses reading; the broker
keeps the persistent session's messages queued and sends them on resume, so every one is stored
and acked, and none is dropped for overload (found by the side-by-side bench, which lost ~1,700 of
20,000 in one round before).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import pytest

from hub.ingest import gateway
from hub.ops.broker import MosquittoBroker
from tests.support.hub import NODE_ID, node_config, running_hub, terminals
from tests.support.mqtt import observe

ROOT = f"hall/v1/{NODE_ID}"
BURST = 6000


async def test_a_burst_without_retries_is_stored_whole(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway, "MAX_CONCURRENT_MESSAGES", 1500)
    monkeypatch.setattr(gateway, "PAUSE_AT", 200)
    monkeypatch.setattr(gateway, "RESUME_AT", 50)
    config = node_config(
        tmp_path / "data",
        broker.port,
        terminals(50),
        limits={"device_msgs_per_s": 100_000, "device_burst": 100_000},
    )
    async with running_hub(config) as hub, observe(broker.port, f"{ROOT}/dev/+/ack") as acks:
        async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=1000) as publisher:
            await asyncio.gather(
                *(
                    publisher.publish(
                        f"{ROOT}/dev/terminal-{n % 50:02d}/rating",
                        json.dumps({"msg_id": f"burst-{n}", "level": 1 + n % 5}),
                        qos=1,
                    )
                    for n in range(BURST)
                )
            )
        async with asyncio.timeout(90):
            while sum(len(m) for m in acks.messages.values()) < BURST:
                await asyncio.sleep(0.1)
        statuses = [ack["status"] for messages in acks.messages.values() for ack in messages]
        assert statuses.count("stored") == BURST
        assert hub.gateway.overloaded == 0, "nothing dropped unanswered"
        assert hub.gateway.paused > 0, "the burst was held back by pausing, not by luck"
