"""The push uplink against the reference receiver on loopback, with real SQLite outboxes (CONTRACTS §6)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import random
import sqlite3
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from contract import wire
from contract.records import Kind, Record
from drivers.backoff import full_jitter
from hub.ops.broker import free_port
from hub.privacy.sealing import SealedIdentity, derive_seal_key, load_or_create_secret
from hub.store.outbox import DEAD, DELIVERED, PENDING, Outbox
from sync.annotate import make_evaluation_hook
from sync.uplink import INFLIGHT_KEY, UNAUTHORIZED_KEY, parse_retry_after
from tests.support.tls import key_and_cert, write_pem
from tests.sync.conftest import Backend
from tests.sync.support import (
    TOKEN,
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
    wait_until,
)

# --- pure parts --------------------------------------------------------------------------------


def test_full_jitter_stays_within_the_growing_cap() -> None:
    rng = random.Random(1)
    for attempt in range(1, 30):
        cap = min(300.0, 2.0 ** (attempt - 1))
        draws = [full_jitter(attempt, 1.0, 300.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > cap * 0.8, "full jitter spreads over the whole range"
    assert full_jitter(10_000, 1.0, 300.0, rng) <= 300.0


def test_retry_after_seconds_and_http_dates() -> None:
    now = dt.datetime(2026, 11, 22, 8, 0, tzinfo=dt.UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(format_datetime(now + dt.timedelta(seconds=90), usegmt=True), now) == 90.0
    assert parse_retry_after(format_datetime(now - dt.timedelta(seconds=90), usegmt=True), now) == 0.0
    for unusable in (None, "", "soon", "-5", "1.5e3"):
        assert parse_retry_after(unusable) is None


# --- a scripted platform, for answers the reference receiver does not give -------------------------


class ScriptedPlatform:
    """Answers batch requests from a script (status, headers), then 200 accepting everything."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.requests: list[tuple[float, str, int]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        batch = wire.decode_batch(body, content_encoding=request.headers.get("Content-Encoding"))
        key = request.headers["Idempotency-Key"]
        status, headers = self.script.pop(0) if self.script else (200, {})
        self.requests.append((time.monotonic(), key, status))
        if status != 200:
            return web.json_response({"error": f"scripted {status}"}, status=status, headers=headers)
        answer = wire.BatchAnswer(accepted=[r.id for r in batch.records])
        return web.Response(body=wire.encode_answer(answer), content_type="application/json")


async def serve_platform(platform: ScriptedPlatform) -> tuple[web.AppRunner, str]:
    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_post(wire.BATCH_PATH_TEMPLATE, platform.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(503, "1"), (429, "1"), (408, None), (500, None)],
)
async def test_transient_answers_are_retried_with_the_same_batch(
    tmp_path: Path, status: int, retry_after: str | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    platform = ScriptedPlatform([(status, headers), (status, headers)])
    runner, url = await serve_platform(platform)
    try:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 30))
            host = StubHost(config, outbox)

            async def delivered_and_counted() -> bool:
                # The answer's delivery marks commit a moment before the success is counted.
                return await _none_pending(outbox) and host.counter("hallhub_sync_total", result="ok") == 1

            async with running_uplink(host, backoff_base_s=0.01, backoff_max_s=5.0):
                await wait_until(delivered_and_counted, 10, "delivery after two failures")
            assert host.counter("hallhub_sync_total", result="failed") == 2
            assert host.counter("hallhub_sync_total", result="ok") == 1
    finally:
        await runner.cleanup()
    times = [at for at, _key, _status in platform.requests]
    assert len({key for _at, key, _status in platform.requests}) == 1, "a retry keeps the batch id"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    if retry_after:
        assert all(0.9 <= gap < 2.5 for gap in gaps), f"Retry-After: 1 honoured, gaps {gaps}"
    else:
        assert all(gap < 0.5 for gap in gaps), f"backoff from 0.01 s, gaps {gaps}"


async def test_retry_after_http_date_is_honoured(tmp_path: Path) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    platform = ScriptedPlatform([(503, {"Retry-After": format_datetime(later, usegmt=True)})])
    runner, url = await serve_platform(platform)
    try:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 3))
            async with running_uplink(StubHost(config, outbox), backoff_max_s=10.0):
                await wait_until(lambda: _none_pending(outbox), 10, "delivery after the date")
    finally:
        await runner.cleanup()
    (first, _, _), (second, _, _) = platform.requests
    assert 0.5 <= second - first < 3.5


async def test_403_pauses_raises_one_alert_and_tries_again_later(tmp_path: Path) -> None:
    platform = ScriptedPlatform([(403, {}), (403, {})])
    runner, url = await serve_platform(platform)
    try:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 3))
            host = StubHost(config, outbox)
            async with running_uplink(host, auth_retry_s=0.3, backoff_max_s=0.01):
                await wait_until(lambda: _none_pending(outbox), 10, "delivery once allowed again")
            alerts = [r["data"] for r in await outbox.recent_records("alert", 10)]
    finally:
        await runner.cleanup()
    assert [(a["type"], a["status"], a["error"]) for a in alerts] == [
        ("uplink_unauthorized", 403, "scripted 403")
    ]
    times = [at for at, _key, _status in platform.requests]
    assert [status for _at, _key, status in platform.requests] == [403, 403, 200, 200]
    assert times[1] - times[0] >= 0.28
    assert times[2] - times[1] >= 0.28, "tries again only after auth_retry_s"


async def _none_pending(outbox: Any) -> bool:
    return await pending(outbox) == 0


# --- against the reference receiver -------------------------------------------------------------


async def test_delivers_alerts_first_with_the_contract_headers(tmp_path: Path) -> None:
    central_db = tmp_path / "central.db"
    async with recording_receiver(f"sqlite:///{central_db}") as central:
        config = sync_config(tmp_path / "data", central.url, batch_max=200)
        async with open_outbox(config) as outbox:
            records = ratings(config, 1000, bad_every=25)
            await fill(outbox, records)
            host = StubHost(config, outbox)
            async with running_uplink(host):
                await wait_until(lambda: _none_pending(outbox), 30, "the backlog to drain")
            stats = await central.receiver.stats()
            assert host.counter("hallhub_records_delivered_total", via="push") == len(records)
            assert host.sync.last_sync is not None
            assert host.counter("hallhub_last_sync_timestamp_seconds") > time.time() - 60
            assert await outbox.kv_get(INFLIGHT_KEY) is None
    rows = central_rows(central_db)
    assert sorted(i for _s, i, _k in rows) == sorted(r.id for r in records)
    assert stats.accepted == len(records)
    assert stats.duplicates == 0
    alerts = [s for s, _i, k in rows if k == "alert"]
    evaluations = [s for s, _i, k in rows if k == "evaluation"]
    assert len(alerts) == 40
    assert max(alerts) < min(evaluations), "alerts before the backlog"
    assert {state for state, _via in outbox_states(tmp_path / "data" / "outbox.db").values()} == {DELIVERED}
    for seen in central.requests:
        assert seen.headers["Content-Encoding"] == "gzip"
        assert seen.headers["Content-Type"] == "application/json"
        assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
        assert seen.status == 200
    assert len(central.requests) == 6  # 1,040 records in batches of 200
    assert len(set(central.keys())) == 6


async def test_flaky_receiver_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, backend: Backend
) -> None:
    """30 % of requests fail: 503, dropped connections, and batches committed whose answer is lost."""
    async with recording_receiver(
        backend.url, table=backend.table, fail_rate=0.2, commit_then_drop=0.125, seed=3
    ) as central:
        config = sync_config(tmp_path / "data", central.url, batch_max=100)
        async with open_outbox(config) as outbox:
            records = ratings(config, 4000, bad_every=40)
            await fill(outbox, records)
            host = StubHost(config, outbox)
            async with running_uplink(host, backoff_max_s=0.05):
                await wait_until(lambda: _none_pending(outbox), 90, "the backlog to drain")
            stats = await central.receiver.stats()
            delivered = host.counter("hallhub_records_delivered_total", via="push")
    assert stats.records_by_kind == {"evaluation": 4000, "alert": 100}
    assert stats.accepted == len(records), "every record inserted exactly once"
    assert stats.injected_failures >= 5
    assert stats.dropped_after_commit >= 5
    assert stats.duplicates > 0, "batches committed before the answer was lost came back as duplicates"
    assert delivered == len(records)
    failed = stats.injected_failures + stats.dropped_after_commit
    assert 0.15 <= failed / len(central.requests) <= 0.45
    runs = [key for n, key in enumerate(central.keys()) if n == 0 or central.keys()[n - 1] != key]
    assert len(runs) == len(set(runs)), "a batch is retried until answered, never interleaved"


async def test_one_poisoned_record_in_500_is_dead_lettered_alone(tmp_path: Path) -> None:
    central_db = tmp_path / "central.db"
    config_probe = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    records = ratings(config_probe, 500)
    poison = records[321]
    async with recording_receiver(f"sqlite:///{central_db}", refuse_ids=frozenset({poison.id})) as central:
        config = sync_config(tmp_path / "data", central.url, batch_max=500)
        async with open_outbox(config) as outbox:
            await fill(outbox, records)
            host = StubHost(config, outbox)
            async with running_uplink(host):
                await wait_until(lambda: _none_pending(outbox), 30, "the batch to be resolved")
            dead = await outbox.dead_letters()
    assert [d.id for d in dead] == [poison.id]
    assert dead[0].reason.startswith("refused by the platform (422): record ")
    assert "refuse_ids" in dead[0].reason
    rows = central_rows(central_db)
    assert sorted(i for _s, i, _k in rows) == sorted(r.id for r in records if r.id != poison.id)
    refused = [seen for seen in central.requests if seen.status == 422]
    assert len(refused) == 10, "500 → 250 → … → 1: one refusal per halving, then the record alone"
    assert len(central.requests) <= 2 * 10 + 1
    assert host.counter("hallhub_sync_total", result="refused") == 10


async def test_oversized_record_is_isolated_by_413(tmp_path: Path) -> None:
    central_db = tmp_path / "central.db"
    async with recording_receiver(f"sqlite:///{central_db}", max_body_bytes=64 * 1024) as central:
        config = sync_config(tmp_path / "data", central.url, batch_max=50)
        async with open_outbox(config) as outbox:
            big = Record(
                kind=Kind.SCAN,
                data={"device_id": "qr-00", "data": random.Random(5).randbytes(60_000).hex(), "node_id": "n"},
            )
            records = ratings(config, 40)
            await fill(outbox, [*records[:20], big, *records[20:]])
            async with running_uplink(StubHost(config, outbox)):
                await wait_until(lambda: _none_pending(outbox), 30, "the batch to be resolved")
            dead = await outbox.dead_letters()
    assert [d.id for d in dead] == [big.id]
    assert "(413)" in dead[0].reason
    assert len(central_rows(central_db)) == 40
    assert any(seen.status == 413 for seen in central.requests)


async def test_records_rejected_one_by_one_become_dead_letters(tmp_path: Path) -> None:
    async with recording_receiver(
        f"sqlite:///{tmp_path / 'central.db'}", reject_kind=frozenset({"scan"})
    ) as central:
        config = sync_config(tmp_path / "data", central.url)
        async with open_outbox(config) as outbox:
            scans = [Record(kind=Kind.SCAN, data={"device_id": "qr-00", "data": f"s{n}"}) for n in range(3)]
            await fill(outbox, [*ratings(config, 10), *scans])
            async with running_uplink(StubHost(config, outbox)):
                await wait_until(lambda: _none_pending(outbox), 20, "delivery")
            dead = await outbox.dead_letters()
            states = outbox_states(tmp_path / "data" / "outbox.db")
    assert sorted(d.id for d in dead) == sorted(s.id for s in scans)
    assert all(
        d.reason == "rejected by the platform: kind 'scan' is not accepted by this receiver" for d in dead
    )
    assert Counter(state for state, _via in states.values()) == {DELIVERED: 10, DEAD: 3}
    assert len(central.requests) == 1


async def test_unauthorized_raises_one_alert_pauses_and_resumes_with_a_fixed_token_file(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "central-token"
    token_file.write_text("an-old-token\n", encoding="utf-8")
    async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}") as central:
        config = sync_config(tmp_path / "data", central.url, token_file=token_file)
        async with open_outbox(config) as outbox:
            records = ratings(config, 50)
            await fill(outbox, records)
            host = StubHost(config, outbox)
            async with running_uplink(host, auth_retry_s=0.25):
                await wait_until(lambda: _requests_at_least(central, 4), 10, "four tries")
            # The hub restarts while still refused: no second alert for the same episode.
            async with running_uplink(host, auth_retry_s=0.25):
                await wait_until(lambda: _requests_at_least(central, 6), 10, "two more tries")
                alerts = [
                    r
                    for r in await outbox.recent_records("alert", 10)
                    if r["data"]["type"] == "uplink_unauthorized"
                ]
                assert len(alerts) == 1
                assert alerts[0]["data"]["status"] == 401
                assert alerts[0]["data"]["error"] == "invalid token"
                assert json.loads(await outbox.kv_get(UNAUTHORIZED_KEY) or "{}")["status"] == 401
                assert await pending(outbox) == 51, "nothing is delivered while refused"
                gaps = [b.at - a.at for a, b in itertools.pairwise(central.requests[:4])]
                assert all(gap >= 0.2 for gap in gaps), f"tries every 0.25 s, not faster: {gaps}"
                token_file.write_text(TOKEN + "\n", encoding="utf-8")
                await wait_until(lambda: _none_pending(outbox), 10, "push to resume")
            assert await outbox.kv_get(UNAUTHORIZED_KEY) is None
            assert host.counter("hallhub_sync_total", result="unauthorized") >= 6
    assert {seen.status for seen in central.requests} == {401, 200}
    assert len(central_rows(tmp_path / "central.db")) == 51, "the 50 ratings and the alert itself"


async def _requests_at_least(central: Any, count: int) -> bool:
    return len(central.requests) >= count


async def test_inflight_batch_is_resent_with_its_id_after_a_restart(tmp_path: Path) -> None:
    config_probe = sync_config(tmp_path / "data", "http://127.0.0.1:1")
    records = ratings(config_probe, 120)
    async with recording_receiver(f"sqlite:///{tmp_path / 'stuck.db'}", slow_ms=30_000) as stuck:
        config = sync_config(tmp_path / "data", stuck.url, batch_max=100)
        async with open_outbox(config) as outbox:
            await fill(outbox, records)
            async with running_uplink(StubHost(config, outbox)):
                await wait_until(lambda: _requests_at_least(stuck, 1), 10, "the first request")
            saved = json.loads(await outbox.kv_get(INFLIGHT_KEY) or "{}")
    assert saved["batch_id"] == stuck.keys()[0]
    assert saved["ids"] == [r.id for r in records[:100]]
    async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}") as central:
        config = sync_config(tmp_path / "data", central.url, batch_max=100)
        async with open_outbox(config) as outbox:
            async with running_uplink(StubHost(config, outbox)):
                await wait_until(lambda: _none_pending(outbox), 10, "delivery after the restart")
    assert central.keys()[0] == saved["batch_id"], "the same request again, not a new batch"
    assert len(central.keys()) == 2


class _MarksHeldAfterCommit(Outbox):
    """An outbox whose first delivery marks commit, then hold their answer until `release` is set:
    the moment the hub may stop in (the marks on disk, not yet counted)."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.committed = asyncio.Event()
        self.release = asyncio.Event()

    async def mark_delivered_seqs(self, seqs: Sequence[int], via: str) -> int:
        marked = await super().mark_delivered_seqs(seqs, via)
        if not self.committed.is_set():
            self.committed.set()
            await self.release.wait()
        return marked


async def test_a_stop_while_marks_are_landing_still_counts_them(tmp_path: Path) -> None:
    """Stopped while it waits for the first answer's marks (committed, not yet counted), the uplink
    lets them finish: the delivered count is what the outbox holds as delivered. Before, the stop
    cancelled the marks half way and the count came out a batch short."""
    async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}") as central:
        config = sync_config(tmp_path / "data", central.url, batch_max=100)
        outbox = _MarksHeldAfterCommit(
            Path(config.node.data_dir) / "outbox.db", evaluation_hook=make_evaluation_hook(config)
        )
        await outbox.open()
        try:
            await fill(outbox, ratings(config, 300))
            host = StubHost(config, outbox)
            async with running_uplink(host):
                await asyncio.wait_for(outbox.committed.wait(), 10)
                await wait_until(lambda: _requests_at_least(central, 2), 10, "the second batch's answer")
                await asyncio.sleep(0.1)  # the uplink now waits for the first marks, then is stopped
                asyncio.get_running_loop().call_later(0.2, outbox.release.set)
            delivered = host.counter("hallhub_records_delivered_total", via="push")
            stored = outbox_states(Path(config.node.data_dir) / "outbox.db")
        finally:
            await outbox.close()
    assert delivered == sum(1 for state, _via in stored.values() if state == DELIVERED) == 100


# --- TLS with a private CA and a client certificate; the sealed identity inside it only -----------


async def test_tls_client_cert_and_identity_sealed_until_sent(tmp_path: Path) -> None:
    ca = key_and_cert("hallhub test CA", None)
    ca_path, _ = write_pem(tmp_path, "ca", *ca)
    server_cert, server_key = write_pem(tmp_path, "server", *key_and_cert("127.0.0.1", ca, server=True))
    client_cert, client_key = write_pem(tmp_path, "client", *key_and_cert("test-node", ca))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_path))
    server_ctx.load_cert_chain(server_cert, server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    number, name = "370102199001011234", "张三"
    central_db = tmp_path / "central.db"
    async with recording_receiver(f"sqlite:///{central_db}", ssl_context=server_ctx) as central:
        config = sync_config(
            tmp_path / "data",
            central.url,
            central={"ca_file": str(ca_path), "cert_file": str(client_cert), "key_file": str(client_key)},
            privacy={"identity": "encrypted"},
        )
        key = derive_seal_key(load_or_create_secret(config.node.secret_file))
        sealed = SealedIdentity(cert_key_gov=number, user_name=name).seal(key)
        async with open_outbox(config) as outbox:
            with_identity, plain = ratings(config, 2)
            with_identity.sealed = sealed
            await fill(outbox, [with_identity, plain])
            on_disk = b"".join(path.read_bytes() for path in (tmp_path / "data").glob("outbox.db*"))
            assert sealed.encode() in on_disk
            assert number.encode() not in on_disk
            async with running_uplink(StubHost(config, outbox)):
                await wait_until(lambda: _none_pending(outbox), 15, "delivery over TLS")
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    try:
        assert conn.execute("SELECT count(*) FROM records WHERE sealed IS NOT NULL").fetchone()[0] == 0
        bodies = [body for (body,) in conn.execute("SELECT body FROM records")]
        kv = [value for (value,) in conn.execute("SELECT value FROM kv")]
    finally:
        conn.close()
    assert not any(number in text or name in text for text in bodies + kv)
    files = b"".join(path.read_bytes() for path in (tmp_path / "data").glob("outbox.db*"))
    assert number.encode() not in files
    assert name.encode() not in files, "never on disk in clear"
    central_conn = sqlite3.connect(central_db)
    try:
        stored = {i: json.loads(d) for i, d in central_conn.execute("SELECT id, data FROM hallhub_records")}
    finally:
        central_conn.close()
    assert stored[with_identity.id]["national"]["certkeyGOV"] == number
    assert stored[with_identity.id]["national"]["userName"] == name
    assert "certkeyGOV" not in stored[plain.id]["national"]
    assert central.requests
    assert all(seen.status == 200 for seen in central.requests)


async def test_wrong_ca_is_a_retried_failure_not_a_delivery(tmp_path: Path) -> None:
    ca = key_and_cert("real CA", None)
    other_ca_path, _ = write_pem(tmp_path, "other", *key_and_cert("some other CA", None))
    server_cert, server_key = write_pem(tmp_path, "server", *key_and_cert("127.0.0.1", ca, server=True))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(server_cert, server_key)
    async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}", ssl_context=server_ctx) as central:
        config = sync_config(tmp_path / "data", central.url, central={"ca_file": str(other_ca_path)})
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 5))
            host = StubHost(config, outbox)
            async with running_uplink(host):
                await wait_until(
                    lambda: _counter_at_least(host, "failed", 3), 10, "three failed TLS handshakes"
                )
            assert await pending(outbox) == 5
    assert not central.requests


async def _counter_at_least(host: StubHost, result: str, count: int) -> bool:
    return host.counter("hallhub_sync_total", result=result) >= count


async def test_nothing_listening_then_receiver_comes_up(tmp_path: Path) -> None:
    port = free_port()
    config = sync_config(tmp_path / "data", f"http://127.0.0.1:{port}")
    async with open_outbox(config) as outbox:
        await fill(outbox, ratings(config, 20))
        host = StubHost(config, outbox)
        async with running_uplink(host):
            await wait_until(lambda: _counter_at_least(host, "failed", 3), 10, "connection failures")
            assert await pending(outbox) == 20
            async with recording_receiver(f"sqlite:///{tmp_path / 'central.db'}", port=port) as central:
                await wait_until(lambda: _none_pending(outbox), 10, "delivery once it listens")
    assert len(set(central.keys())) == 1
    states = outbox_states(tmp_path / "data" / "outbox.db")
    assert {via for _state, via in states.values()} == {"push"}
    assert PENDING not in {state for state, _via in states.values()}
