"""The reference central receiver, served on a loopback port against real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from typing import Any

import aiohttp
import msgspec
import psycopg
import pytest
from multidict import CIMultiDictProxy
from psycopg import sql

from contract import wire
from contract.wire import encode_record_data
from sync.receiver import (
    CentralReceiver,
    Misbehaviour,
    RunningReceiver,
    SqliteStore,
    StoreUnavailableError,
    open_store,
    parse_listen,
    run_receiver,
    start_receiver,
)
from sync.receiver._store import jsonb_problem
from tests.sync.conftest import NODE, TOKEN, Backend, batch_body, record

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(
    http: aiohttp.ClientSession,
    running: RunningReceiver,
    document: dict[str, Any],
    *,
    compress: bool = True,
    headers: dict[str, str] | None = None,
    node: str = NODE,
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    """POST a batch document as the uplink would; return status, JSON body and headers."""
    raw = json.dumps(document).encode("utf-8")
    sent = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Idempotency-Key": str(document.get("batch_id", "")),
    }
    if compress:
        raw = gzip.compress(raw)
        sent["Content-Encoding"] = "gzip"
    sent.update(headers or {})
    async with http.post(f"{running.url}{wire.batch_path(node)}", data=raw, headers=sent) as resp:
        return resp.status, await resp.json(), resp.headers


async def evaluations(
    http: aiohttp.ClientSession, running: RunningReceiver, query: str = ""
) -> tuple[int, dict[str, Any]]:
    """GET /v1/evaluations with the token."""
    async with http.get(f"{running.url}/v1/evaluations{query}", headers=AUTH) as resp:
        return resp.status, await resp.json()


# --- intake ------------------------------------------------------------------------------------


async def test_same_batch_twice_is_all_duplicate(backend: Backend, http: aiohttp.ClientSession) -> None:
    records = [record("alert"), record(), record(), record("scan")]
    document = batch_body(records)
    ids = [r["id"] for r in records]
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        status, first, _ = await post(http, running, document)
        assert status == 200
        assert first == {"accepted": ids, "duplicate": [], "rejected": []}
        status, second, _ = await post(http, running, document)
        assert status == 200
        assert second == {"accepted": [], "duplicate": ids, "rejected": []}
        stats = await running.stats()
    assert stats.records_by_kind == {"alert": 1, "evaluation": 2, "scan": 1}
    assert (stats.batches, stats.accepted, stats.duplicates) == (2, 4, 4)


async def test_duplicate_inside_one_batch(backend: Backend, http: aiohttp.ClientSession) -> None:
    one = record()
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        status, answer, _ = await post(http, running, batch_body([one, one]))
        assert status == 200
        assert answer == {"accepted": [one["id"]], "duplicate": [one["id"]], "rejected": []}
        assert (await running.stats()).records_by_kind == {"evaluation": 1}


async def test_concurrent_overlapping_batches_store_each_id_once(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    pool = [record() for _ in range(12)]
    documents = [batch_body(pool[start : start + 6]) for start in range(0, 8, 2)]
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        results = await asyncio.gather(*(post(http, running, d) for d in documents))
        _, page = await evaluations(http, running, "?limit=1000")
    accepted = [i for status, answer, _ in results for i in answer["accepted"]]
    assert all(status == 200 for status, _, _ in results)
    assert sorted(accepted) == sorted(r["id"] for r in pool)
    for (_, answer, _), document in zip(results, documents, strict=True):
        assert sorted(answer["accepted"] + answer["duplicate"]) == sorted(
            r["id"] for r in document["records"]
        )
    assert sorted(e["id"] for e in page["evaluations"]) == sorted(accepted)


async def test_rows_survive_a_restart_on_the_same_database(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    document = batch_body([record()])
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        assert (await post(http, running, document))[1]["accepted"]
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        assert (await post(http, running, document))[1]["duplicate"] == [document["records"][0]["id"]]


async def test_nul_character_per_backend(backend: Backend, http: aiohttp.ClientSession) -> None:
    odd = record(comment="a\x00b")
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        status, answer, _ = await post(http, running, batch_body([odd, record()]))
        assert status == 200
        if backend.name == "sqlite":
            assert len(answer["accepted"]) == 2
            _, page = await evaluations(http, running)
            assert page["evaluations"][0]["data"]["comment"] == "a\x00b"
        else:
            assert len(answer["accepted"]) == 1
            assert answer["rejected"] == [
                {
                    "id": odd["id"],
                    "error": "data contains a NUL character, which PostgreSQL JSONB cannot store",
                }
            ]


async def test_lone_surrogate_per_backend(backend: Backend, http: aiohttp.ClientSession) -> None:
    odd = record("alert")
    odd["data"] = {"type": "bad_review", "note": "a\ud800b"}
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        status, answer, _ = await post(http, running, batch_body([odd, record()]))
        assert status == 200
        if backend.name == "sqlite":
            assert len(answer["accepted"]) == 2
        else:
            assert answer["rejected"] == [
                {
                    "id": odd["id"],
                    "error": "data contains a lone UTF-16 surrogate, which is not valid Unicode",
                }
            ]
            assert len(answer["accepted"]) == 1


async def test_a_lone_surrogate_where_a_choice_is_expected_is_rejected_by_field(
    receiver: RunningReceiver, http: aiohttp.ClientSession
) -> None:
    """It was a `UnicodeEncodeError` in the receiver's worded path (the batch never answered)."""
    good, odd = record(), record(channel="\ud800")
    status, answer, _ = await post(http, receiver, batch_body([good, odd]))
    assert status == 200, answer
    assert answer["accepted"] == [good["id"]]
    assert answer["rejected"] == [
        {
            "id": odd["id"],
            "error": "data.channel: expected text, got a lone UTF-16 surrogate escape (not Unicode)",
        }
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (r'{"a": "plain"}', None),
        (r'{"a": "\\u0000 is only written"}', None),
        (r'{"a": "\\ud800"}', None),
        (r'{"a": "\ud83d\ude00"}', None),
        (r'{"a": "x\u0000"}', "NUL character"),
        (r'{"a": ["\ud800"]}', "lone UTF-16 surrogate"),
        (r'{"\udc00": 1}', "lone UTF-16 surrogate"),
        ('{"a": "raw \x00"}', "not valid JSON"),
    ],
)
def test_jsonb_problem_reads_the_text_and_decodes_only_a_suspect_one(text: str, problem: str | None) -> None:
    found = jsonb_problem(text)
    assert found is None if problem is None else problem in (found or "")


async def test_plain_and_gzip_bodies(receiver: RunningReceiver, http: aiohttp.ClientSession) -> None:
    plain, zipped = record(), record()
    status, answer, _ = await post(http, receiver, batch_body([plain]), compress=False)
    assert (status, answer["accepted"]) == (200, [plain["id"]])
    status, answer, _ = await post(http, receiver, batch_body([zipped]), compress=True)
    assert (status, answer["accepted"]) == (200, [zipped["id"]])


async def test_uplink_encoding_is_accepted(receiver: RunningReceiver, http: aiohttp.ClientSession) -> None:
    batch = wire.new_batch(NODE, [record(), record("alert")])
    url = f"{receiver.url}{wire.batch_path(NODE)}"
    headers = wire.batch_headers(TOKEN, batch.batch_id)
    async with http.post(url, data=wire.encode_batch(batch), headers=headers) as resp:
        assert resp.status == 200
        answer = wire.decode_answer(await resp.read())
    assert answer.accepted == [r.id for r in batch.records]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing Authorization: Bearer <token>"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authorization must be Bearer <token>"),
        ({"Authorization": "Bearer wrong"}, "invalid token"),
        ({"Authorization": f"Bearer {TOKEN}x"}, "invalid token"),
    ],
)
async def test_token_required(
    receiver: RunningReceiver, http: aiohttp.ClientSession, headers: dict[str, str], message: str
) -> None:
    document = batch_body([record()])
    body = wire.encode_batch(msgspec.convert(document, wire.Batch))
    for method, path, data in (
        ("POST", wire.batch_path(NODE), body),
        ("GET", "/v1/evaluations", None),
    ):
        sent = {"Content-Encoding": "gzip", "Idempotency-Key": document["batch_id"]} | headers
        async with http.request(method, f"{receiver.url}{path}", data=data, headers=sent) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert await resp.json() == {"error": message, "field": None}
    assert (await receiver.stats()).records_by_kind == {}


def _raw_cases() -> list[Any]:
    good = batch_body([record()])
    return [
        pytest.param(b"not gzip", {"Content-Encoding": "gzip"}, "body is not valid gzip", id="gzip"),
        pytest.param(b"{oops", {}, "body is not valid JSON", id="json"),
        pytest.param(json.dumps(good).encode(), {"Content-Encoding": "br"}, "'br' is not supported", id="br"),
        pytest.param(
            json.dumps(good).encode(),
            {"Content-Type": "text/plain"},
            "Content-Type must be application/json, got 'text/plain'",
            id="content-type",
        ),
    ]


@pytest.mark.parametrize(("raw", "headers", "message"), _raw_cases())
async def test_malformed_bodies_get_400(
    receiver: RunningReceiver,
    http: aiohttp.ClientSession,
    raw: bytes,
    headers: dict[str, str],
    message: str,
) -> None:
    sent = AUTH | {"Content-Type": "application/json", "Idempotency-Key": "b-1"} | headers
    url = f"{receiver.url}{wire.batch_path(NODE)}"
    async with http.post(url, data=raw, headers=sent) as resp:
        assert resp.status == 400
        assert message in (await resp.json())["error"]
    assert (await receiver.stats()).refused_batches == 1


@pytest.mark.parametrize(
    ("change", "headers", "node", "field", "message"),
    [
        ({"sent_at": "now"}, {}, NODE, "sent_at", "sent_at: must be RFC 3339 UTC"),
        ({"records": "x"}, {}, NODE, "records", "records: expected a list, got 'x'"),
        ({}, {}, "other-node", "node_id", "node_id 'hall-370102-01' does not match the path's"),
        ({}, {"Idempotency-Key": "other"}, NODE, "batch_id", "Idempotency-Key 'other' differs"),
        ({}, {"Idempotency-Key": ""}, NODE, None, "the Idempotency-Key header (the batch id)"),
    ],
)
async def test_bad_fields_get_400_naming_the_field(
    receiver: RunningReceiver,
    http: aiohttp.ClientSession,
    change: dict[str, Any],
    headers: dict[str, str],
    node: str,
    field: str | None,
    message: str,
) -> None:
    document = batch_body([record()]) | change
    status, body, _ = await post(http, receiver, document, headers=headers, node=node)
    assert status == 400
    assert body["field"] == field
    assert body["error"].startswith(message)


async def test_record_without_id_gets_422_and_nothing_is_stored(
    receiver: RunningReceiver, http: aiohttp.ClientSession
) -> None:
    nameless = record()
    del nameless["id"]
    status, body, _ = await post(http, receiver, batch_body([record(), nameless]))
    assert status == 422
    assert body["field"] == "records[1].id"
    assert body["error"].startswith("records[1].id: must be a UUID")
    assert (await receiver.stats()).records_by_kind == {}


async def test_invalid_record_is_rejected_alone(
    receiver: RunningReceiver, http: aiohttp.ClientSession
) -> None:
    good, bad = record(), record(level=0)
    status, answer, _ = await post(http, receiver, batch_body([good, bad]))
    assert status == 200
    assert answer["accepted"] == [good["id"]]
    assert answer["rejected"] == [
        {"id": bad["id"], "error": "data.level: expected a value of at least 1, got 0"}
    ]


async def test_oversize_gets_413(sqlite_url: str, http: aiohttp.ClientSession) -> None:
    async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN, max_body_bytes=4096) as running:
        big = batch_body([record(comment="长" * 100) for _ in range(20)])
        status, body, _ = await post(http, running, big, compress=False)
        assert status == 413
        assert body["error"] == "body is larger than 4096 bytes"
        status, body, _ = await post(http, running, big, compress=True)
        assert status == 413
        assert body["error"] == "batch is larger than 4096 bytes once decompressed"
        status, _, _ = await post(http, running, batch_body([record()]))
        assert status == 200


async def test_reject_kind(sqlite_url: str, http: aiohttp.ClientSession) -> None:
    scan, evaluation, card = record("scan"), record(), record("card")
    async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN, reject_kind=["scan", "card"]) as running:
        status, answer, _ = await post(http, running, batch_body([scan, evaluation, card]))
        stats = await running.stats()
    assert status == 200
    assert answer == {
        "accepted": [evaluation["id"]],
        "duplicate": [],
        "rejected": [
            {"id": scan["id"], "error": "kind 'scan' is not accepted by this receiver"},
            {"id": card["id"], "error": "kind 'card' is not accepted by this receiver"},
        ],
    }
    assert stats.records_by_kind == {"evaluation": 1}
    assert stats.rejected == 2


# --- misbehaviour --------------------------------------------------------------------------------


async def test_fail_rate_answers_503_or_drops(sqlite_url: str, http: aiohttp.ClientSession) -> None:
    outcomes: list[str] = []
    async with start_receiver(
        "127.0.0.1:0", sqlite_url, TOKEN, fail_rate=1.0, seed=7, retry_after_s=3
    ) as running:
        for _ in range(12):
            try:
                status, body, headers = await post(http, running, batch_body([record()]))
            except aiohttp.ClientConnectionError:
                outcomes.append("dropped")
            else:
                assert (status, body["error"], headers["Retry-After"]) == (
                    503,
                    "injected failure",
                    "3",
                )
                outcomes.append("503")
        stats = await running.stats()
    assert set(outcomes) == {"503", "dropped"}
    assert stats.injected_failures == 12
    assert stats.records_by_kind == {}


async def test_fail_rate_is_a_fraction_repeatable_by_seed(
    sqlite_url: str, http: aiohttp.ClientSession
) -> None:
    runs: list[list[bool]] = []
    for _ in range(2):
        async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN, fail_rate=0.5, seed=11) as running:
            passed: list[bool] = []
            for _ in range(16):
                try:
                    status, _, _ = await post(http, running, batch_body([record()]))
                except aiohttp.ClientConnectionError:
                    status = 0
                passed.append(status == 200)
            runs.append(passed)
    assert runs[0] == runs[1]
    assert 0 < sum(runs[0]) < 16


async def test_slow_ms_delays_batches(sqlite_url: str, http: aiohttp.ClientSession) -> None:
    async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN, slow_ms=150) as running:
        started = time.monotonic()
        status, _, _ = await post(http, running, batch_body([record()]))
        assert status == 200
        assert time.monotonic() - started >= 0.15


async def test_commit_then_drop_loses_only_the_answer(sqlite_url: str, http: aiohttp.ClientSession) -> None:
    document = batch_body([record(), record()])
    async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN, commit_then_drop=1.0) as running:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(http, running, document)
        stats = await running.stats()
    assert stats.dropped_after_commit == 1
    assert stats.records_by_kind == {"evaluation": 2}
    async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN) as running:
        status, answer, _ = await post(http, running, document)
    assert status == 200
    assert answer["duplicate"] == [r["id"] for r in document["records"]]


# --- evaluations feed ----------------------------------------------------------------------------


async def test_evaluations_cursor_pages_in_arrival_order(
    backend: Backend, http: aiohttp.ClientSession
) -> None:
    batches = [[record(), record("alert"), record()], [record("scan"), record()], [record()]]
    expected = [r["id"] for b in batches for r in b if r["kind"] == "evaluation"]
    async with start_receiver("127.0.0.1:0", backend.url, TOKEN, table=backend.table) as running:
        for records in batches:
            assert (await post(http, running, batch_body(records)))[0] == 200
        seen: list[dict[str, Any]] = []
        cursor = "0"
        for _ in range(10):
            status, page = await evaluations(http, running, f"?after={cursor}&limit=2")
            assert status == 200
            assert len(page["evaluations"]) <= 2
            if not page["evaluations"]:
                assert page["next"] == cursor
                break
            seen.extend(page["evaluations"])
            cursor = page["next"]
        status, everything = await evaluations(http, running)
    assert [e["id"] for e in seen] == expected
    assert [e["id"] for e in everything["evaluations"]] == expected
    first = batches[0][0]
    assert {k: seen[0][k] for k in ("id", "seq", "kind", "created_at", "data")} == first
    assert seen[0]["node_id"] == NODE
    wire.parse_timestamp(seen[0]["received_at"])


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("?after=-1", "after", "after must be a cursor from `next`, got '-1'"),
        ("?after=abc", "after", "after must be a cursor"),
        ("?after=99999999999999999999", "after", "after must be a cursor"),
        ("?limit=0", "limit", "limit must be 1-1000, got '0'"),
        ("?limit=1001", "limit", "limit must be 1-1000"),
        ("?limit=ten", "limit", "limit must be 1-1000"),
        ("?since=3", None, "unknown query parameter 'since'; use after and limit"),
    ],
)
async def test_bad_evaluations_query_gets_400(
    receiver: RunningReceiver,
    http: aiohttp.ClientSession,
    query: str,
    field: str | None,
    message: str,
) -> None:
    status, body = await evaluations(http, receiver, query)
    assert status == 400
    assert body["field"] == field
    assert body["error"].startswith(message)


async def test_unknown_routes_answer_json(receiver: RunningReceiver, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{receiver.url}/nope") as resp:
        assert (resp.status, await resp.json()) == (404, {"error": "Not Found", "field": None})
    async with http.get(f"{receiver.url}{wire.batch_path(NODE)}") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert (await resp.json())["error"] == "Method Not Allowed"


# --- running it ----------------------------------------------------------------------------------


async def test_run_receiver_serves_until_cancelled(sqlite_url: str, http: aiohttp.ClientSession) -> None:
    ready: asyncio.Future[RunningReceiver] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_receiver("127.0.0.1:0", sqlite_url, TOKEN, on_ready=ready.set_result))
    running = await asyncio.wait_for(ready, timeout=10)
    status, answer, _ = await post(http, running, batch_body([record()]))
    assert (status, len(answer["accepted"])) == (200, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unreachable_database_is_reported(tmp_path: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailableError, match="SQLite"):
        async with start_receiver("127.0.0.1:0", f"sqlite:///{blocker}/central.db", TOKEN):
            pass


def test_settings_are_checked() -> None:
    assert parse_listen("127.0.0.1:8781") == ("127.0.0.1", 8781)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8781", "host:", "host:99999", ":80"):
        with pytest.raises(ValueError, match="must be host:port"):
            parse_listen(bad)
    with pytest.raises(ValueError, match="is not supported"):
        open_store("mysql://x")
    with pytest.raises(ValueError, match="needs a file path"):
        open_store("sqlite:///")
    with pytest.raises(ValueError, match="must be a lower-case SQL name"):
        open_store("sqlite:///x.db", table="Robert'); DROP TABLE")
    with pytest.raises(ValueError, match="fail_rate must be a fraction"):
        Misbehaviour(fail_rate=1.5)
    with pytest.raises(ValueError, match="slow_ms must be 0 or more"):
        Misbehaviour(slow_ms=-1)
    with pytest.raises(ValueError, match=r"reject_kind \['vote'\] unknown"):
        Misbehaviour(reject_kind=frozenset({"vote"}))
    with pytest.raises(ValueError, match="non-empty bearer token"):
        CentralReceiver(SqliteStore(":memory:"), "")


@pytest.mark.postgres
async def test_postgres_connection_loss_is_503_then_recovers(
    postgres_url: str, http: aiohttp.ClientSession
) -> None:
    table = f"hallhub_test_{uuid.uuid4().hex[:16]}"
    try:
        url = f"{postgres_url}?application_name={table}"
        async with start_receiver("127.0.0.1:0", url, TOKEN, table=table) as running:
            assert (await post(http, running, batch_body([record()])))[0] == 200
            async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (table,),
                )
            status, body, headers = await post(http, running, batch_body([record()]))
            assert status == 503
            assert body["error"].startswith("store unavailable: PostgreSQL")
            assert headers["Retry-After"] == "1"
            assert (await post(http, running, batch_body([record()])))[0] == 200
            assert (await running.stats()).records_by_kind == {"evaluation": 2}
    finally:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            await admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def test_data_is_kept_as_utf8_json_and_a_lone_surrogate_still_escaped() -> None:
    """`encode_record_data` writes the table's JSON with msgspec (UTF-8); the same value as before."""
    data = {"comment": "等候时间太长", "level": 1, "reasons": ["R1"], "national": {"pj": 1}, "n": None}
    text = encode_record_data(data)
    assert "等候时间太长" in text
    assert json.loads(text) == data
    odd = {"comment": "\ud800"}
    assert json.loads(encode_record_data(odd)) == odd
