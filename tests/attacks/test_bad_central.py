"""What a hostile or misconfigured central platform tries against the push uplink (CONTRACTS §6, §10).

Each test is one move by the platform's side: a redirect to plain http, answers that leave records
out, claims for records it was never sent, a plain-http URL for real names. The central is a real
aiohttp server on 127.0.0.1 (with TLS from a private CA where the move needs it); the hub side is the
real uplink on a real SQLite outbox. Every wait is bounded in time and every loop in count.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import logging
import random
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from contract import wire
from contract.records import Record
from hub.privacy.sealing import SealedIdentity, derive_seal_key, load_or_create_secret
from hub.store.outbox import Outbox
from sync.uplink import identity_allowed
from tests.support.hub import NODE_ID
from tests.support.tls import tls_server
from tests.sync.support import StubHost, fill, open_outbox, pending, ratings, running_uplink, sync_config

ID_NUMBER = "370102199001011234"
NAME = "张三"
REDIRECTED_KV = "uplink.redirected"
BATCHES = wire.batch_path(NODE_ID)


# --- a central that answers as the test says, and keeps every request ----------------------------


@dataclass
class Sent:
    """One batch request as the central got it: arrival time, Idempotency-Key, ids, JSON body."""

    at: float
    key: str
    ids: list[str]
    body: bytes


Answer = Callable[[Sent, int], web.Response]


@dataclass
class Central:
    """A platform whose answer to request n (1, 2, …) is `answer(sent, n)`."""

    answer: Answer
    requests: list[Sent] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        """Decode the batch, note it, answer it."""
        raw = await request.read()
        encoding = request.headers.get("Content-Encoding")
        batch = wire.decode_batch(raw, content_encoding=encoding)
        body = gzip.decompress(raw) if encoding == "gzip" else raw
        sent = Sent(
            time.monotonic(), request.headers.get("Idempotency-Key", ""), [r.id for r in batch.records], body
        )
        self.requests.append(sent)
        return self.answer(sent, len(self.requests))

    async def seen(self, count: int) -> bool:
        """At least `count` requests arrived (for `wait_until`)."""
        return len(self.requests) >= count


@contextlib.asynccontextmanager
async def serving(central: Central, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """`central` on a free 127.0.0.1 port, every path and method; yields its base URL."""
    app = web.Application(handler_args={"auto_decompress": False})
    app.router.add_route("*", "/{tail:.*}", central.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context is not None else "http"
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def accept_all(sent: Sent, _n: int) -> web.Response:
    """The honest answer: every id accepted."""
    return _answer(wire.BatchAnswer(accepted=sent.ids))


def redirect(status: int, location: str) -> web.Response:
    """A 3xx pointing elsewhere."""
    return web.Response(status=status, headers={"Location": location}, text="moved")


def _answer(answer: wire.BatchAnswer) -> web.Response:
    return web.Response(body=wire.encode_answer(answer), content_type="application/json")


class Highest(random.Random):
    """Jitter that always draws the top of its range, so each wait is exactly the backoff cap."""

    def uniform(self, a: float, b: float) -> float:
        """The upper bound."""
        return b


async def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `check` every 20 ms until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def none_pending(outbox: Outbox) -> None:
    """Wait (at most 10 s) until the outbox has nothing left to deliver."""
    deadline = time.monotonic() + 10
    while await pending(outbox):
        assert time.monotonic() < deadline, f"{await pending(outbox)} records still pending after 10 s"
        await asyncio.sleep(0.02)


def gaps(requests: list[Sent]) -> list[float]:
    """Seconds between consecutive requests."""
    return [b.at - a.at for a, b in itertools.pairwise(requests)]


def uplink_logs(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    """Messages of the uplink's logger at exactly `level` that contain `text`."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "sync.uplink" and r.levelno == level and text in r.getMessage()
    ]


# --- TLS from a private CA, and a record carrying a sealed identity ------------------------------


def with_identity(record: Record, secret_file: str) -> Record:
    """`record` carrying the sealed ID number and name, as a card read with identity "encrypted" leaves it."""
    key = derive_seal_key(load_or_create_secret(secret_file))
    record.sealed = SealedIdentity(cert_key_gov=ID_NUMBER, user_name=NAME).seal(key)
    return record


def sealed_count(outbox_db: Path) -> int:
    """Records whose sealed identity is still kept (not erased by a delivery)."""
    conn = sqlite3.connect(f"file:{outbox_db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM records WHERE sealed IS NOT NULL").fetchone()[0])
    finally:
        conn.close()


def carries_identity(sent: Sent) -> bool:
    """Whether a request body holds the ID number or the name in clear."""
    text = sent.body.decode("utf-8")
    return ID_NUMBER in text or NAME in text or "certkeyGOV" in text or "userName" in text


# --- redirects ----------------------------------------------------------------------------------


async def test_a_redirect_to_http_is_not_followed_and_raises_an_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An https central answers 307 to an http:// URL: the batch (with real names) must not go there."""
    trap = Central(accept_all)
    server_tls, ca_path = tls_server(tmp_path)
    async with serving(trap) as trap_url:
        location = trap_url + BATCHES
        central = Central(lambda _sent, _n: redirect(307, location))
        async with serving(central, server_tls) as url:
            config = sync_config(
                tmp_path / "data", url, central={"ca_file": str(ca_path)}, privacy={"identity": "encrypted"}
            )
            async with open_outbox(config) as outbox:
                first, *rest = ratings(config, 3)
                await fill(outbox, [with_identity(first, config.node.secret_file), *rest])
                host = StubHost(config, outbox)
                with caplog.at_level(logging.INFO, logger="sync.uplink"):
                    async with running_uplink(host, backoff_base_s=0.05, backoff_max_s=0.4, rng=Highest()):
                        await wait_for(
                            lambda: len(central.requests) >= 4 or bool(trap.requests), 10, "4 tries"
                        )
                assert not trap.requests, "the batch, real names included, went to the http:// URL"
                assert await pending(outbox) == 4, "nothing delivered: the 3 ratings and the new alert wait"
                alerts = [r["data"] for r in await outbox.recent_records("alert", 10)]
                episode = await outbox.kv_get(REDIRECTED_KV)
                failed = host.counter("hallhub_sync_total", result="failed")
    assert sealed_count(tmp_path / "data" / "outbox.db") == 1, "the sealed identity is kept until delivered"
    assert alerts == [
        {
            "type": "uplink_redirected",
            "status": 307,
            "location": location,
            "url": url + BATCHES,
            "node_id": NODE_ID,
        }
    ]
    assert episode is not None, "the episode is kept in the outbox, so a restart does not alert again"
    assert len({sent.key for sent in central.requests}) == 1, "a retry keeps the batch id"
    assert all(sent.ids == central.requests[0].ids for sent in central.requests)
    assert failed >= 4
    waits = gaps(central.requests)
    for attempt, gap in enumerate(waits[:3], start=1):
        assert gap >= 0.05 * 2 ** (attempt - 1) - 0.01, f"full-jitter backoff after each 3xx: {waits}"
    assert len(uplink_logs(caplog, logging.ERROR, "redirect")) == 1, "one ERROR per episode"
    assert len(uplink_logs(caplog, logging.WARNING, "not delivered")) >= 3, "then the retry warnings"


@pytest.mark.parametrize("status", [301, 308])
async def test_a_redirect_episode_alerts_once_across_a_restart_and_ends_at_the_first_200(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """The central redirects for a while, the hub restarts meanwhile, then the central answers 200."""
    elsewhere = f"http://127.0.0.1:1{BATCHES}"
    central = Central(lambda sent, n: redirect(status, elsewhere) if n <= 4 else accept_all(sent, n))
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            records = ratings(config, 5)
            await fill(outbox, records)
            host = StubHost(config, outbox)
            with caplog.at_level(logging.INFO, logger="sync.uplink"):
                async with running_uplink(host, backoff_max_s=0.05):
                    await wait_for(lambda: len(central.requests) >= 2, 10, "two redirected tries")
                during = await outbox.kv_get(REDIRECTED_KV)
                async with running_uplink(host, backoff_max_s=0.05):
                    await none_pending(outbox)
            alerts = [
                r
                for r in await outbox.recent_records("alert", 10)
                if r["data"]["type"] == "uplink_redirected"
            ]
            after = await outbox.kv_get(REDIRECTED_KV)
    assert len(alerts) == 1, "one alert per episode, even across a restart"
    assert alerts[0]["data"]["status"] == status
    assert alerts[0]["data"]["location"] == elsewhere
    assert during is not None
    assert after is None, "the first 200 ends the episode"
    delivered = {i for sent in central.requests[4:] for i in sent.ids}
    assert delivered == {r.id for r in records} | {alerts[0]["id"]}, "the ratings and the alert itself"
    assert len({sent.key for sent in central.requests[:5]}) == 1, "the same batch until it was answered"
    assert len(uplink_logs(caplog, logging.ERROR, "redirect")) == 1


# --- answers that leave records out --------------------------------------------------------------


async def test_an_answer_that_leaves_ids_out_is_retried_with_backoff(tmp_path: Path) -> None:
    """Every 200 leaves one record out: the hub must not answer that with a tight loop of new batches."""
    held: set[str] = set()

    def all_but_held(sent: Sent, _n: int) -> web.Response:
        return _answer(wire.BatchAnswer(accepted=[i for i in sent.ids if i not in held]))

    central = Central(all_but_held)
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            records = ratings(config, 5)
            held.add(records[0].id)
            await fill(outbox, records)
            host = StubHost(config, outbox)
            async with running_uplink(host, backoff_base_s=0.05, backoff_max_s=0.4, rng=random.Random(13)):
                await asyncio.sleep(1.5)
                posts = len(central.requests)
                left = await pending(outbox)
                dead = await outbox.dead_letters()
                held.clear()
                await none_pending(outbox)
    assert 2 <= posts <= 30, f"{posts} POSTs in 1.5 s: backoff from 0.05 s capped at 0.4 s allows ~10"
    assert left == 1, "the left-out record stays pending, the others are delivered"
    assert dead == [], "a left-out record is not a rejected one"
    assert all(records[0].id in sent.ids for sent in central.requests), "the left-out record is retried"
    assert central.requests[-1].ids == [records[0].id]


async def test_backoff_after_answers_that_leave_ids_out_grows_and_a_complete_answer_resets_it(
    tmp_path: Path,
) -> None:
    """Four incomplete answers in a row wait 0.1, 0.2, 0.4, 0.8 s; after a complete one, 0.1 s again."""
    incomplete = {1, 2, 3, 4, 6}

    def leave_one_out(sent: Sent, n: int) -> web.Response:
        return _answer(wire.BatchAnswer(accepted=sent.ids[1:] if n in incomplete else sent.ids))

    central = Central(leave_one_out)
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 3))
            async with running_uplink(
                StubHost(config, outbox), backoff_base_s=0.1, backoff_max_s=1.0, rng=Highest()
            ):
                await none_pending(outbox)
                await wait_for(lambda: len(central.requests) == 5, 5, "the fifth request")
                await fill(outbox, ratings(config, 2, start=10))
                await none_pending(outbox)
    waits = gaps(central.requests)
    assert len(central.requests) == 7, waits
    for n, cap in enumerate([0.1, 0.2, 0.4, 0.8]):
        assert waits[n] >= cap - 0.01, f"wait {n + 1} is the full-jitter cap {cap} s (Highest): {waits}"
    assert waits[5] < 0.5, f"a complete answer resets the backoff to 0.1 s, not 1 s: {waits}"
    assert waits[5] >= 0.09


async def test_an_answer_claiming_ids_it_was_not_sent_delivers_nothing_else(tmp_path: Path) -> None:
    """The first answer claims every record of the node as accepted; only the two it got count."""
    claimed: list[str] = []

    def greedy_then_down(sent: Sent, n: int) -> web.Response:
        if n == 1:
            return _answer(wire.BatchAnswer(accepted=claimed, duplicate=claimed))
        return web.json_response({"error": "down"}, status=503)

    central = Central(greedy_then_down)
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url, batch_max=2)
        async with open_outbox(config) as outbox:
            records = ratings(config, 6)
            claimed.extend(r.id for r in records)
            await fill(outbox, records)
            async with running_uplink(StubHost(config, outbox)):
                await wait_for(lambda: len(central.requests) >= 3, 10, "two tries after the first answer")
                left = await pending(outbox)
    assert central.requests[0].ids == [r.id for r in records[:2]]
    assert left == 4, "only records that were in the request can be delivered by its answer"


# --- real names only over verified TLS ----------------------------------------------------------


async def test_sealed_identity_never_goes_over_plain_http(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """identity = "encrypted" with an http:// central on loopback: the batch goes without real names."""
    central = Central(accept_all)
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url, privacy={"identity": "encrypted"})
        async with open_outbox(config) as outbox:
            first, second = ratings(config, 2)
            await fill(outbox, [with_identity(first, config.node.secret_file), second])
            with caplog.at_level(logging.INFO, logger="sync.uplink"):
                async with running_uplink(StubHost(config, outbox)):
                    await none_pending(outbox)
    assert central.requests
    assert not any(carries_identity(sent) for sent in central.requests), "real names over plain http"
    assert first.id in central.requests[0].ids, "the record itself is delivered, without them"
    warned = [m for m in uplink_logs(caplog, logging.WARNING, "central.url") if "certkeyGOV" in m]
    assert len(warned) == 1, "said once, naming the key to fix"


def test_sealed_identity_needs_a_verified_tls_context() -> None:
    """The check itself: https and a context that verifies the certificate and the host name."""
    verifying = ssl.create_default_context()
    assert identity_allowed("https://ingest.example.gov.cn", verifying)
    assert not identity_allowed("http://127.0.0.1:8781", verifying), "plain http, even on loopback"
    assert not identity_allowed("https://ingest.example.gov.cn", None)
    no_host_check = ssl.create_default_context()
    no_host_check.check_hostname = False
    assert not identity_allowed("https://ingest.example.gov.cn", no_host_check)
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    assert not identity_allowed("https://ingest.example.gov.cn", unverified), "verification off"


# --- a central that asks to be hammered, or answers without end -----------------------------------


async def test_retry_after_zero_does_not_make_a_tight_loop(tmp_path: Path) -> None:
    """`Retry-After: 0` on every 503 used to be obeyed exactly: hundreds of POSTs a second."""

    def busy(_sent: Sent, _n: int) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "0"}, text="busy")

    central = Central(busy)
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 5))
            host = StubHost(config, outbox)
            async with running_uplink(host, backoff_base_s=0.2, backoff_max_s=1.0, rng=Highest()):
                await asyncio.sleep(2.0)
    assert 2 <= len(central.requests) <= 6, f"{len(central.requests)} POSTs in 2 s"
    assert all(gap >= 0.15 for gap in gaps(central.requests)), gaps(central.requests)


async def test_an_endless_answer_is_not_read_into_memory(tmp_path: Path) -> None:
    """A 200 whose body never ends (or is gigabytes) is cut off at the answer limit and retried."""
    big = b'{"accepted": [' + b'"x",' * 2_000_000 + b'"x"]}'

    def huge(sent: Sent, n: int) -> web.Response:
        if n == 1:
            return web.Response(body=big, content_type="application/json")
        return accept_all(sent, n)

    central = Central(huge)
    async with serving(central) as url:
        config = sync_config(tmp_path / "data", url)
        async with open_outbox(config) as outbox:
            await fill(outbox, ratings(config, 5))
            async with running_uplink(StubHost(config, outbox), backoff_base_s=0.05):
                await none_pending(outbox)
    assert len(central.requests) == 2, "the oversized answer was a failure, then the batch went again"
    assert central.requests[0].key == central.requests[1].key
