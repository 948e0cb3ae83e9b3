"""What a curious person on the hall network tries against the hub's HTTP API (CONTRACTS §9).

Each test is one attack, against a real hub on loopback: a real aiohttp server, a real Mosquitto,
a real SQLite outbox, raw sockets where a client library would be too polite.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from contract.records import Kind, Record
from hub.app import Hub
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from hub.store.outbox import Outbox, Stored, WriteFailed, WriterDied
from tests.support.hub import (
    NODE_ID,
    PULL_TOKEN,
    HubProcess,
    node_config,
    process_config,
    running_hub,
    terminals,
)

CONTROL = "control-secret-token-0123"
VIEW = "view-only-secret-token-45"
DEVICES = terminals(1) + terminals(1, "pad")  # terminal-00; pad-00 at window w0
EVALUATE = {"request_id": "r-1", "case_no": "SD000000001"}


def api_section(**extra: Any) -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "pull_token": PULL_TOKEN, **extra}


@contextlib.asynccontextmanager
async def hub_and_client(
    tmp_path: Path, broker: MosquittoBroker, **api: Any
) -> AsyncIterator[tuple[Hub, aiohttp.ClientSession]]:
    config = node_config(tmp_path / "data", broker.port, DEVICES, api=api_section(**api))
    async with (
        running_hub(config) as hub,
        aiohttp.ClientSession(f"http://127.0.0.1:{hub.api_port}") as http,
    ):
        yield hub, http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(http: aiohttp.ClientSession, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(path, json=body, allow_redirects=False, **kwargs) as response:
        return response.status, await response.json(content_type=None)


# -- credentials -------------------------------------------------------------------------------


async def test_starting_a_session_or_closing_an_alert_without_the_control_token_is_refused(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_client(tmp_path, broker, control_token=CONTROL) as (hub, http):
        for headers in ({}, bearer(PULL_TOKEN), bearer("guess"), {"Authorization": "Bearer \udcff"}):
            status, body = await post(http, "/v1/windows/w0/evaluate", EVALUATE, headers=headers)
            assert status == 401, headers
            assert body["error"] in {
                "wrong token",
                "missing bearer token (Authorization: Bearer <api.control_token>)",
            }
            status, _ = await post(http, "/v1/alerts/0190f0f0-0000-7000-8000-000000000000/ack", {})
            assert status == 401
        assert hub.sessions.open_sessions() == [], "nothing was started by the refused requests"
        status, body = await post(http, "/v1/windows/w0/evaluate", EVALUATE, headers=bearer(CONTROL))
        assert (status, body["request_id"]) == (200, "r-1"), "answered (the pad is not connected)"
        status, _ = await post(
            http, "/v1/alerts/0190f0f0-0000-7000-8000-000000000000/ack", {}, headers=bearer(CONTROL)
        )
        assert status == 404
        text = hub.metrics.render().decode()
        assert 'hallhub_rejects_total{reason="http_unauthorized"} 8.0' in text


async def test_the_control_token_does_not_open_the_pull_api(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hub_and_client(tmp_path, broker, control_token=CONTROL) as (_hub, http):
        async with http.get("/v1/records", headers=bearer(CONTROL)) as response:
            assert response.status == 401
        status, _ = await post(http, "/v1/records/ack", {"upto": 0}, headers=bearer(CONTROL))
        assert status == 401


async def test_views_need_a_token_when_the_api_listens_on_the_hall_network(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    # Bound to every address, reached over loopback only.
    async with hub_and_client(
        tmp_path, broker, listen="0.0.0.0:0", control_token=CONTROL, view_token=VIEW
    ) as (_hub, http):
        for path in ("/", "/v1/status"):
            async with http.get(path) as response:
                assert response.status == 401, path
                assert response.headers["WWW-Authenticate"].startswith("Basic")
            async with http.get(path, headers=bearer(PULL_TOKEN)) as response:
                assert response.status == 401, path
            async with http.get(path, headers=bearer(VIEW)) as response:
                assert response.status == 200, path
            basic = base64.b64encode(f"staff:{CONTROL}".encode()).decode()
            async with http.get(path, headers={"Authorization": f"Basic {basic}"}) as response:
                assert response.status == 200, path
        for path in ("/healthz", "/metrics"):
            async with http.get(path) as response:
                assert response.status in (200, 503), path
        status, _ = await post(http, "/v1/windows/w0/evaluate", EVALUATE, headers=bearer(VIEW))
        assert status == 401, "the view token opens views only"


# -- a web page in a browser on the hall network -------------------------------------------------


async def test_a_form_post_from_a_web_page_is_refused_even_without_a_token_set(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_client(tmp_path, broker) as (hub, http):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            async with http.post(
                "/v1/windows/w0/evaluate",
                data=b'{"request_id": "csrf"}',
                headers={"Content-Type": content_type},
            ) as response:
                assert response.status == 415, content_type
                assert "application/json" in (await response.json())["error"]
        assert hub.sessions.open_sessions() == []
        status, _ = await post(http, "/v1/windows/w0/evaluate", EVALUATE)
        assert status == 200, "on loopback with no token set, local processes may still start sessions"


async def test_a_rebound_dns_name_or_a_foreign_host_header_is_refused(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_client(tmp_path, broker, control_token=CONTROL, allowed_hosts=["hub.hall.local"]) as (
        hub,
        http,
    ):
        port = hub.api_port
        for host in ("evil.example", f"evil.example:{port}", "10.9.9.9", ""):
            headers = {"Host": host, **bearer(CONTROL)}
            status, body = await post(http, "/v1/windows/w0/evaluate", EVALUATE, headers=headers)
            assert status == 421, host
            assert "api.allowed_hosts" in body["error"]
            async with http.get("/v1/status", headers={"Host": host}) as response:
                assert response.status == 421, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"hub.hall.local:{port}", "HUB.hall.local"):
            async with http.get("/v1/status", headers={"Host": host}) as response:
                assert response.status == 200, host


async def test_a_cross_site_origin_is_refused(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hub_and_client(tmp_path, broker, control_token=CONTROL) as (hub, http):
        headers = {"Origin": "http://evil.example", **bearer(CONTROL)}
        status, _ = await post(http, "/v1/windows/w0/evaluate", EVALUATE, headers=headers)
        assert status == 403
        headers = {"Origin": f"http://127.0.0.1:{hub.api_port}", **bearer(CONTROL)}
        status, _ = await post(http, "/v1/windows/w0/evaluate", EVALUATE, headers=headers)
        assert status == 200


# -- values no field can hold ------------------------------------------------------------------


async def test_a_5000_digit_integer_is_a_400_naming_the_field(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_client(tmp_path, broker, control_token=CONTROL) as (_hub, http):
        body = b'{"request_id": "r", "timeout_s": ' + b"9" * 5000 + b"}"
        headers = {"Content-Type": "application/json", **bearer(CONTROL)}
        async with http.post("/v1/windows/w0/evaluate", data=body, headers=headers) as response:
            assert response.status == 400
            error = (await response.json())["error"]
        assert error.startswith("timeout_s: number 999999…(5000 characters) is out of range")
        async with http.post(
            "/v1/records/ack", data=b'{"upto": ' + b"9" * 40 + b"}", headers=bearer(PULL_TOKEN)
        ) as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith("upto: number")
        nested = b'{"request_id": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
        async with http.post("/v1/windows/w0/evaluate", data=nested, headers=headers) as response:
            assert response.status == 400
            assert (await response.json())["error"] == "nested too deeply"


async def test_acking_beyond_the_highest_seq_is_a_400_and_the_hub_lives_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The reproduction of defect 2: one authenticated request used to kill the outbox writer."""
    config_path, api_port = process_config(tmp_path, broker.port, terminals(1))
    hub = HubProcess(config_path, api_port, tmp_path / "hub.log")
    hub.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api_port}") as http:
            for upto in (99999999999999999999999999, 2**63 - 1, 2**63 + 5, 1):
                status, body = await post(http, "/v1/records/ack", {"upto": upto}, headers=bearer(PULL_TOKEN))
                assert status == 400, upto
                assert "beyond the highest seq this node has assigned (0)" in body["error"]
            async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as device:
                ack = await device.rate(5)
            assert ack.status == "stored"
            async with http.get("/healthz") as response:
                assert (response.status, await response.json()) == (200, {"status": "ok"})
            status, body = await post(http, "/v1/records/ack", {"upto": 1}, headers=bearer(PULL_TOKEN))
            assert (status, body) == (200, {"acked": 1, "upto": 1})
        started = time.monotonic()
        assert hub.terminate(timeout_s=15) == 0
        assert time.monotonic() - started < 10, "SIGTERM is answered promptly"
    finally:
        hub.stop_quietly()


async def test_a_write_that_fails_fails_alone_and_the_writer_carries_on(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    await outbox.open()
    try:
        # SQLite cannot hold the number: the statement raises OverflowError, not sqlite3.Error.
        results = await asyncio.gather(
            outbox.ack_upto(10**26),
            outbox.store([Record(kind=Kind.EVALUATION, data={"level": 5})]),
            return_exceptions=True,
        )
        assert isinstance(results[0], WriteFailed)
        assert "OverflowError" in str(results[0])
        assert isinstance(results[1], Stored)
        assert outbox.failed_writes == 1
        assert isinstance(await outbox.store([Record(kind=Kind.SCAN, data={"data": "x"})]), Stored)
        assert outbox.writer_died is not None
        assert not outbox.writer_died.done()
    finally:
        await outbox.close()


async def test_a_hub_whose_writer_stops_says_why_and_exits_at_once(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    config = node_config(tmp_path / "data", broker.port, DEVICES, api=api_section())
    hub = Hub(config, secrets=_secrets())
    stop = asyncio.Event()
    run = asyncio.create_task(hub.run(stop))
    await asyncio.wait_for(hub.ready.wait(), 15)
    writer = next(task for task in asyncio.all_tasks() if task.get_name() == "outbox-writer")
    with caplog.at_level(logging.CRITICAL):
        writer.cancel()
        started = time.monotonic()
        with pytest.raises(WriterDied, match="the outbox writer stopped"):
            await asyncio.wait_for(run, 10)
    assert time.monotonic() - started < 5
    assert any("the outbox writer stopped" in r.getMessage() for r in caplog.records)


def _secrets() -> Any:
    from hub.config import Secrets

    return Secrets(broker_password="", pull_token=PULL_TOKEN, central_token="")


# -- floods and slow clients -------------------------------------------------------------------


@contextlib.contextmanager
def open_file_limit(wanted: int) -> Any:
    """Lift this test process's descriptor limit for a flood, and put it back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    try:
        yield min(max(soft, target), wanted)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_thousand_idle_connections_do_not_starve_health_or_flood_the_log(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config_path, api_port = process_config(
        tmp_path, broker.port, terminals(1), max_connections=64, header_timeout_s=3
    )
    hub = HubProcess(config_path, api_port, tmp_path / "hub.log")
    hub.start()
    idle: list[asyncio.StreamWriter] = []
    try:
        with open_file_limit(4096) as limit:
            count = min(1100, limit - 200)
            for _ in range(count):
                with contextlib.suppress(OSError):
                    _reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
                    idle.append(writer)
            assert len(idle) > 900
            started = time.monotonic()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{api_port}/healthz") as response:
                    assert response.status == 200
                assert time.monotonic() - started < 2.0
                async with http.get(f"http://127.0.0.1:{api_port}/metrics") as response:
                    metrics = await response.text()
            assert 'hallhub_rejects_total{reason="http_evicted_idle"}' in metrics
            for writer in idle:
                writer.close()
        await asyncio.sleep(0.5)
        log = (tmp_path / "hub.log").read_text(encoding="utf-8")
        closed_lines = [line for line in log.splitlines() if "connection closed" in line]
        assert 1 <= len(closed_lines) <= 5, closed_lines[:10]
        assert "out of system resource" not in log
    finally:
        for writer in idle:
            writer.close()
        hub.stop_quietly()


async def test_a_client_dribbling_its_headers_is_dropped_after_the_header_timeout(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with hub_and_client(tmp_path, broker, header_timeout_s=1) as (hub, _http):
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.api_port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed_after: float | None = None
        with contextlib.suppress(ConnectionError):
            for _ in range(40):  # one header byte every 0.2 s: 8 s at most
                writer.write(b"X")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1), 0.2) == b"":
                        break
        closed_after = time.monotonic() - started
        writer.close()
        assert closed_after < 3.0, f"still open after {closed_after:.1f} s"
        text = hub.metrics.render().decode()
        assert 'hallhub_rejects_total{reason="http_header_timeout"} 1.0' in text


async def test_a_body_that_never_arrives_is_a_408(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with hub_and_client(tmp_path, broker, control_token=CONTROL, header_timeout_s=1) as (hub, _):
        request = (
            "POST /v1/windows/w0/evaluate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {CONTROL}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{"
        ).encode()
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.api_port)
        writer.write(request)
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert time.monotonic() - started < 4
