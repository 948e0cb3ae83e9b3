"""The local HTTP API on a real server: health, metrics, status, and the pull API with its token."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from contract.records import Kind, Record
from hub.app import Hub
from hub.ops.broker import MosquittoBroker
from tests.support.hub import PULL_TOKEN, node_config, running_hub

AUTH = {"Authorization": f"Bearer {PULL_TOKEN}"}


async def fill(hub: Hub, evaluations: int, scans: int) -> None:
    for n in range(evaluations):
        await hub.outbox.store([Record(kind=Kind.EVALUATION, data={"level": 5, "n": n})])
    for n in range(scans):
        await hub.outbox.store([Record(kind=Kind.SCAN, data={"data": f"code-{n}"})])


@pytest.fixture
async def api(tmp_path: Path, broker: MosquittoBroker):  # type: ignore[no-untyped-def]
    config = node_config(tmp_path / "data", broker.port, devices=[])
    async with running_hub(config) as hub, aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http:
        yield hub, http


async def get_json(http: aiohttp.ClientSession, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(path, **kwargs) as response:
        return response.status, await response.json()


async def test_pull_pages_in_order_with_kind_filter_and_ack(api: tuple[Hub, aiohttp.ClientSession]) -> None:
    hub, http = api
    await fill(hub, evaluations=25, scans=5)
    seen: list[int] = []
    after = 0
    while True:
        status, page = await get_json(http, "/v1/records", params={"after": after, "limit": 7}, headers=AUTH)
        assert status == 200
        seen += [r["seq"] for r in page["records"]]
        after = page["next_after"]
        if not page["more"]:
            break
    assert seen == list(range(1, 31))

    _, scans = await get_json(http, "/v1/records", params={"kind": "scan"}, headers=AUTH)
    assert [r["data"]["data"] for r in scans["records"]] == [f"code-{n}" for n in range(5)]

    async with http.post("/v1/records/ack", json={"upto": 20}, headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == {"acked": 20, "upto": 20}
    _, rest = await get_json(http, "/v1/records", params={"after": 0, "limit": 100}, headers=AUTH)
    assert [r["seq"] for r in rest["records"]] == list(range(21, 31))
    assert rest["next_after"] == 30
    assert rest["more"] is False


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token (Authorization: Bearer <api.pull_token>)"),
        ({"Authorization": "Basic abc"}, "missing bearer token (Authorization: Bearer <api.pull_token>)"),
        ({"Authorization": "Bearer wrong"}, "wrong token"),
    ],
)
async def test_pull_needs_the_token(
    api: tuple[Hub, aiohttp.ClientSession],
    headers: dict[str, str],
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, http = api
    status, body = await get_json(http, "/v1/records", headers=headers)
    assert (status, body) == (401, {"error": message})
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refused == [f"api: GET /v1/records from 127.0.0.1 refused: {message}"], "logged once, no token"
    async with http.post("/v1/records/ack", json={"upto": 1}, headers=headers) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"after": "x"}, "after: expected a whole number, got 'x'"),
        ({"after": "-1"}, "after: expected a value from 0 to 9223372036854775807, got -1"),
        ({"limit": "0"}, "limit: expected a value from 1 to 5000, got 0"),
        ({"limit": "5001"}, "limit: expected a value from 1 to 5000, got 5001"),
        (
            {"kind": "rating"},
            "kind: expected one of evaluation, alert, scan, card, print, device_status, followup, window, got 'rating'",
        ),
        ({"since": "1"}, "unknown query parameter: since (use after, limit, kind)"),
    ],
)
async def test_bad_pull_queries_are_400(
    api: tuple[Hub, aiohttp.ClientSession], params: dict[str, str], message: str
) -> None:
    _, http = api
    assert await get_json(http, "/v1/records", params=params, headers=AUTH) == (400, {"error": message})


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{", 400, "body is not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b"\xff", 400, "body is not UTF-8"),
        (b"[]", 400, "body must be a JSON object, got list"),
        (b'{"upto": "5"}', 400, "upto: expected a whole number ≥ 0, got '5'"),
        (b'{"upto": -1}', 400, "upto: expected a whole number ≥ 0, got -1"),
        (b'{"upto": true}', 400, "upto: expected a whole number ≥ 0, got True"),
        (b'{"upto": 1, "pad": "' + b"x" * 70000 + b'"}', 413, "body too large: 70022 bytes (limit 65536)"),
    ],
)
async def test_bad_ack_bodies(
    api: tuple[Hub, aiohttp.ClientSession], body: bytes, status: int, message: str
) -> None:
    hub, http = api
    async with http.post("/v1/records/ack", data=body, headers=AUTH) as response:
        assert (response.status, await response.json()) == (status, {"error": message})
    assert (await hub.node_status.status())["node"]["id"] == "test-node", "the hub carries on"


async def test_pull_is_off_without_a_token(tmp_path: Path, broker: MosquittoBroker) -> None:
    config = node_config(tmp_path / "data", broker.port, devices=[])
    async with running_hub(config, pull_token="") as hub, aiohttp.ClientSession() as http:
        status, body = await get_json(http, f"http://127.0.0.1:{hub.api_port}/v1/records", headers=AUTH)
    assert (status, body) == (404, {"error": "the pull API is off (set api.pull_token on the node)"})


async def test_health_metrics_status(api: tuple[Hub, aiohttp.ClientSession], broker: MosquittoBroker) -> None:
    hub, http = api
    await fill(hub, evaluations=3, scans=1)
    assert await get_json(http, "/healthz") == (200, {"status": "ok"})
    async with http.get("/metrics") as response:
        text = await response.text()
    assert 'hallhub_outbox_pending{kind="evaluation"} 3.0' in text
    assert "hallhub_outbox_oldest_pending_age_seconds" in text
    assert "hallhub_mqtt_connected 1.0" in text
    status, doc = await get_json(http, "/v1/status")
    assert status == 200
    assert doc["outbox"]["pending_by_kind"] == {"evaluation": 3, "scan": 1}
    assert doc["broker"]["connected"] is True
    assert doc["sync"] == {"last_sync": None, "push": False, "pull": True}
    status, missing = await get_json(http, "/nope")
    assert (status, missing) == (404, {"error": "Not Found"})

    broker.stop()
    for _ in range(100):
        status, health = await get_json(http, "/healthz")
        if status == 503:
            break
        await asyncio.sleep(0.05)
    assert status == 503
    assert health == {
        "status": "degraded",
        "problems": [f"not connected to the MQTT broker at 127.0.0.1:{broker.port}"],
    }
    broker.start()
