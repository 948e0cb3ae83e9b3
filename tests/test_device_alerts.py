"""Device fault alerts on a real broker: print terminal health, offline devices, restarts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from contract.topics import Topics
from hub.app import Hub
from hub.ingest.device_alerts import health_changes
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, node_config, running_hub
from tests.support.mqtt import Observer, observe

ALERTS = Topics(NODE_ID).alerts
PRINTER = {"id": "pt-01", "kind": "terminal", "transport": "mqtt"}
PAD = {"id": "pad-07", "kind": "pad", "transport": "mqtt", "window": "07"}


def faults(observer: Observer) -> list[dict[str, Any]]:
    """The device_fault alerts seen on MQTT `alerts`, oldest first."""
    return [m["data"] for m in observer.messages[ALERTS] if m["data"].get("type") == "device_fault"]


async def wait_faults(observer: Observer, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """At least `count` device_fault alerts."""
    async with asyncio.timeout(timeout):
        while len(faults(observer)) < count:
            await asyncio.sleep(0.02)
    return faults(observer)


async def pending_faults(hub: Hub) -> list[dict[str, Any]]:
    """The device_fault alert records waiting in the outbox for the uplink or the pull API."""
    bodies, _last, _more = await hub.outbox.pending_page(0, 100, "alert")
    return [json.loads(b)["data"] for b in bodies if json.loads(b)["data"]["type"] == "device_fault"]


def test_health_reports_name_faults_only_where_they_speak() -> None:
    assert health_changes({"paper": "out", "toner": "low"}) == {"paper_out": True}
    assert health_changes({"paper": "low", "jam": False}) == {"paper_out": False, "jam": False}
    assert health_changes({"door_open": True, "output_full": False}) == {
        "door_open": True,
        "output_full": False,
    }
    assert health_changes({"temp_c": 41.5}) == {}


async def test_printer_faults_raise_and_clear(broker: MosquittoBroker, tmp_path: Path) -> None:
    config = node_config(tmp_path / "data", broker.port, [PRINTER], alerts={"offline_after_s": 0})
    async with (
        running_hub(config) as hub,
        observe(broker.port, ALERTS) as observer,
        SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pt-01") as printer,
    ):
        await printer.publish_raw("health", json.dumps({"paper": "out", "jam": False}))
        (raised,) = await wait_faults(observer, 1)
        assert raised == {
            "type": "device_fault",
            "state": "raised",
            "device_id": "pt-01",
            "device_kind": "terminal",
            "window": None,
            "fault": "paper_out",
            "detail": "",
            "node_id": NODE_ID,
        }
        (open_alert,) = (await hub.node_status.status())["device_alerts"]
        assert open_alert["fault"] == "paper_out"
        assert open_alert["description"] == "out of paper"

        await printer.publish_raw("health", json.dumps({"paper": "low"}))
        cleared = (await wait_faults(observer, 2))[1]
        assert cleared["state"] == "cleared"
        assert cleared["fault"] == "paper_out"
        raised_record = next(m for m in observer.messages[ALERTS] if m["data"] == raised)
        assert cleared["raised_id"] == raised_record["id"]
        assert (await hub.node_status.status())["device_alerts"] == []

        await printer.publish_raw("health", json.dumps({"jam": True, "door_open": True, "output_full": True}))
        three = (await wait_faults(observer, 5))[2:]
        assert sorted((f["fault"], f["state"]) for f in three) == [
            ("door_open", "raised"),
            ("jam", "raised"),
            ("output_full", "raised"),
        ]
        # A report that leaves a field out says nothing about it: the door stays open.
        await printer.publish_raw("health", json.dumps({"jam": False, "output_full": False}))
        two = (await wait_faults(observer, 7))[5:]
        assert sorted((f["fault"], f["state"]) for f in two) == [
            ("jam", "cleared"),
            ("output_full", "cleared"),
        ]
        await asyncio.sleep(0.3)
        assert [a["fault"] for a in (await hub.node_status.status())["device_alerts"]] == ["door_open"]
        assert len(faults(observer)) == 7

        # Every alert is also an outbox record, on its way upstream (alerts first).
        upstream = await pending_faults(hub)
        assert [(f["fault"], f["state"]) for f in upstream] == [
            (f["fault"], f["state"]) for f in faults(observer)
        ]


async def test_offline_device_raises_after_the_configured_time(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    config = node_config(tmp_path / "data", broker.port, [PAD], alerts={"offline_after_s": 1.0})
    async with running_hub(config) as hub, observe(broker.port, ALERTS) as observer:
        async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-07", kind="pad"):
            await asyncio.sleep(1.5)  # online for longer than offline_after_s: nothing to say
            assert faults(observer) == []
        offline_at = asyncio.get_running_loop().time()
        (raised,) = await wait_faults(observer, 1, timeout=5)
        took = asyncio.get_running_loop().time() - offline_at
        assert 0.9 <= took <= 2.5, took
        assert raised["fault"] == "offline"
        assert raised["window"] == "07"
        assert raised["detail"].startswith("last seen 20")
        assert [a["fault"] for a in (await hub.node_status.status())["device_alerts"]] == ["offline"]

        async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pad-07", kind="pad"):
            cleared = (await wait_faults(observer, 2, timeout=5))[1]
            assert (cleared["fault"], cleared["state"]) == ("offline", "cleared")
            assert (await hub.node_status.status())["device_alerts"] == []


async def test_open_faults_survive_a_hub_restart(broker: MosquittoBroker, tmp_path: Path) -> None:
    config = node_config(tmp_path / "data", broker.port, [PRINTER], alerts={"offline_after_s": 0})
    async with (
        observe(broker.port, ALERTS) as observer,
        SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "pt-01") as printer,
    ):
        async with running_hub(config):
            await printer.publish_raw("health", json.dumps({"jam": True}))
            (raised,) = await wait_faults(observer, 1)

        async with running_hub(config) as hub:
            assert [a["fault"] for a in (await hub.node_status.status())["device_alerts"]] == ["jam"]
            # The printer repeats its report to the new hub: still jammed, nothing new is raised.
            await printer.publish_raw("health", json.dumps({"jam": True, "paper": "ok"}))
            await asyncio.sleep(0.5)
            assert len(faults(observer)) == 1
            await printer.publish_raw("health", json.dumps({"jam": False}))
            cleared = (await wait_faults(observer, 2))[1]
    raised_id = next(m["id"] for m in observer.messages[ALERTS] if m["data"] == raised)
    assert (cleared["state"], cleared["raised_id"]) == ("cleared", raised_id)
