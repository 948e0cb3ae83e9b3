"""The pull collector (CONTRACTS §16): the nodes file, hostile nodes, and real hubs pulled by two
collector processes on PostgreSQL, one killed with SIGKILL mid-pull."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from psycopg import sql

from contract.http import pull_page
from hub.config import HubConfig, parse_config
from hub.ops.broker import MosquittoBroker, free_port
from sync.collector import Collector, NodesFileError, NodeSpec, load_nodes, parse_page
from sync.collector import PullError as CollectorPullError
from sync.receiver import SqliteStore
from tests.support.hub import PULL_TOKEN, node_raw, running_hub
from tests.sync.conftest import record
from tests.sync.processes import CentralProcess
from tests.sync.support import fill, open_outbox, pending, ratings

# --- the nodes file --------------------------------------------------------------------------------


def _nodes_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodes.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = '[[node]]\nid = "hall-1"\nurl = "http://127.0.0.1:8780"\ntoken = "t1"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[node]\n", "not valid TOML"),
        ('[nodes]\nid = "x"\n', "nodes: unknown key; the file holds [[node]] tables only"),
        ("", "node: no [[node]] tables"),
        (
            GOOD + '[[node]]\nid = "hall-2"\nurl = "ftp://x"\ntoken = "t"\n',
            "node[1].url: must be http:// or https://",
        ),
        (
            GOOD + '[[node]]\nid = "hall 2"\nurl = "http://x"\ntoken = "t"\n',
            "node[1].id: must be the node id",
        ),
        (GOOD + GOOD, 'node[1].id: "hall-1" is already used by node[0]'),
        ('[[node]]\nid = "a"\nurl = "http://x"\n', "node[0].token: missing: set token or token_file"),
        (
            '[[node]]\nid = "a"\nurl = "http://x"\ntoken = "t"\ntoken_file = "f"\n',
            "node[0].token: set token or",
        ),
        ('[[node]]\nid = "a"\nurl = "http://x"\ntoken_file = "nope"\n', "node[0].token_file: cannot use"),
        (
            '[[node]]\nid = "a"\nurl = "http://x"\ntoken = ""\n',
            "node[0].token: must be the node's pull token",
        ),
        (
            '[[node]]\nid = "a"\nurl = "http://u:p@x"\ntoken = "t"\n',
            "node[0].url: must not carry user information",
        ),
        ('[[node]]\nid = "a"\nurl = "http://x/?a=1"\ntoken = "t"\n', "node[0].url: must not have a query"),
        (
            '[[node]]\nid = "a"\nurl = "http://x:99999"\ntoken = "t"\n',
            "node[0].url: 'http://x:99999' is not a valid",
        ),
        ('[[node]]\nid = "a"\nurl = "http://x"\ntoken = "t"\ncolour = 1\n', "node[0].colour: unknown key"),
        ('node = ["x"]\n', "node[0]: must be a table"),
    ],
)
def test_bad_nodes_files_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = _nodes_file(tmp_path, text)
    with pytest.raises(NodesFileError) as caught:
        load_nodes(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_a_good_nodes_file_and_a_token_file_read_afresh(tmp_path: Path) -> None:
    (tmp_path / "token-2").write_text("first\n")
    path = _nodes_file(
        tmp_path, GOOD + '[[node]]\nid = "hall-2"\nurl = "https://h2.example/"\ntoken_file = "token-2"\n'
    )
    nodes = load_nodes(path)
    assert [(n.id, n.url) for n in nodes] == [
        ("hall-1", "http://127.0.0.1:8780"),
        ("hall-2", "https://h2.example"),
    ]
    assert nodes[1].read_token() == "first"
    (tmp_path / "token-2").write_text("rotated\n")
    assert nodes[1].read_token() == "rotated"
    with pytest.raises(NodesFileError, match="file not found"):
        load_nodes(tmp_path / "missing.toml")


def test_the_command_refuses_a_bad_nodes_file_naming_the_field(tmp_path: Path) -> None:
    path = _nodes_file(tmp_path, GOOD + '[[node]]\nid = "hall-2"\nurl = "gopher://x"\ntoken = "t"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub",
            "central",
            "pull",
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--nodes",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "node[1].url: must be http:// or https://" in result.stderr
    assert "Traceback" not in result.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "hub", "central", "pull", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_text.returncode == 0
    assert "--lease-s" in help_text.stdout


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "the page is not a JSON object"),
        ({"records": {}, "next_after": 5, "more": False}, "records must be a list"),
        ({"records": [], "next_after": 3, "more": False}, "next_after must be an integer from 4 up"),
        ({"records": [], "next_after": True, "more": False}, "next_after must be an integer"),
        ({"records": [], "next_after": 9, "more": "no"}, "more must be true or false"),
        ({"records": [], "next_after": 4, "more": True}, "more is true but next_after did not move"),
        ({"records": [record(seq=2)], "next_after": 9, "more": False}, "records[0].seq 2 is outside (4, 9]"),
    ],
)
def test_inconsistent_pages_are_refused(document: Any, message: str) -> None:
    with pytest.raises(
        CollectorPullError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        parse_page(document, 4, "GET node")


def test_an_invalid_record_in_a_page_is_kept_as_rejected() -> None:
    good, bad = record(seq=5), record(seq=6, level=0)
    page = parse_page({"records": [good, bad], "next_after": 6, "more": False}, 4, "GET node")
    assert page.records[0].record is not None
    assert page.records[1].record is None
    assert page.records[1].error.startswith("records[1].data.level")
    assert json.loads(page.records[1].raw) == bad


def test_a_lone_surrogate_in_a_pulled_record_is_kept_as_rejected_not_a_crash() -> None:
    """A node's page may hold `"\\ud800"` where a choice is expected (`data.channel`): it crashed the
    collector's pull of that node with `UnicodeEncodeError`; now the record is rejected, named once."""
    good, bad = record(seq=5), record(seq=6, channel="\ud800")
    page = parse_page({"records": [good, bad], "next_after": 6, "more": False}, 4, "GET node")
    assert page.records[1].record is None
    assert page.records[1].error == (
        "records[1].data.channel: expected text, got a lone UTF-16 surrogate escape (not Unicode)"
    )


# --- hostile nodes ---------------------------------------------------------------------------------


class FakeNode:
    """A §5 pull API over a list of records (pending until acked), on a loopback port."""

    def __init__(self, count: int) -> None:
        self.records = [record(seq=n) for n in range(1, count + 1)]
        self.acked = 0
        self.requests = 0

    async def get(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {PULL_TOKEN}":
            return web.json_response({"error": "token"}, status=401)
        after, limit = int(request.query["after"]), int(request.query["limit"])
        waiting = [r for r in self.records if r["seq"] > max(after, self.acked)]
        page = waiting[:limit]
        body = pull_page(
            [json.dumps(r) for r in page], page[-1]["seq"] if page else after, len(waiting) > limit
        )
        return web.Response(text=body, content_type="application/json")

    async def ack(self, request: web.Request) -> web.Response:
        upto = (await request.json())["upto"]
        self.acked = max(self.acked, upto)
        return web.json_response({"acked": 0, "upto": upto})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(get: Handler, post: Handler | None = None) -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 with these handlers for the pull routes; its base URL."""
    app = web.Application()
    app.router.add_get("/v1/records", get)
    if post is not None:
        app.router.add_post("/v1/records/ack", post)
    runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_hostile_nodes_are_counted_and_never_slow_the_good_one(tmp_path: Path) -> None:
    good = FakeNode(2500)
    trap_hits = 0

    async def trap(_request: web.Request) -> web.Response:
        nonlocal trap_hits
        trap_hits += 1
        return web.Response(text="{}")

    async def garbage(_request: web.Request) -> web.Response:
        return web.Response(text="<html>not a page</html>", content_type="text/html")

    async def huge(_request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(_request)
        for _ in range(64):
            await response.write(b"[" * 65536)
        return response

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="{}")

    async def inconsistent(_request: web.Request) -> web.Response:
        return web.json_response({"records": [record(seq=3)], "next_after": 2, "more": False})

    async with contextlib.AsyncExitStack() as stack:
        good_url = await stack.enter_async_context(serve(good.get, good.ack))
        trap_url = await stack.enter_async_context(serve(trap))

        async def redirect(_request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{trap_url}/v1/records")

        async def refuse(_request: web.Request) -> web.Response:
            return web.json_response({"error": "no"}, status=401)

        urls = {
            "good": good_url,
            "garbage": await stack.enter_async_context(serve(garbage)),
            "huge": await stack.enter_async_context(serve(huge)),
            "slow": await stack.enter_async_context(serve(slow)),
            "redirect": await stack.enter_async_context(serve(redirect)),
            "refuse": await stack.enter_async_context(serve(refuse)),
            "inconsistent": await stack.enter_async_context(serve(inconsistent)),
        }
        nodes = [NodeSpec(f"hall-{name}", url, token=PULL_TOKEN) for name, url in urls.items()]
        store = SqliteStore(str(tmp_path / "central.db"))
        await store.open()
        stack.push_async_callback(store.close)
        collector = Collector(
            store,
            nodes,
            lease_s=5,
            page_size=500,
            interval_s=0.1,
            timeout_s=1.0,
            max_page_bytes=1024 * 1024,
            backoff_base_s=0.05,
            backoff_max_s=0.3,
        )
        stop = asyncio.Event()
        started = time.monotonic()
        task = asyncio.create_task(collector.run(stop))
        try:
            deadline = time.monotonic() + 20
            while good.acked < 2500 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            took = time.monotonic() - started
            await asyncio.sleep(1.5)  # every hostile node fails a few times
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        status = {s.node_id: s for s in await store.pull_status()}
        counts = await store.counts_by_kind()
    assert good.acked == 2500, "the good node was pulled to the end and acked"
    assert took < 5, f"the good node took {took:.1f} s beside a node that never answers"
    assert counts == {"evaluation": 2500}
    assert status["hall-good"].accepted == 2500
    assert status["hall-good"].errors == 0
    reasons = collector.totals.failures_by_reason
    assert {"garbage", "too_large", "network", "redirect", "unauthorized"} <= set(reasons), reasons
    for name in ("garbage", "huge", "slow", "redirect", "refuse", "inconsistent"):
        assert status[f"hall-{name}"].errors >= 1, name
        assert status[f"hall-{name}"].cursor == 0, name
    assert trap_hits == 0, "a redirect is never followed"
    assert all(s.owner is None for s in status.values()), "leases released on stop"


# --- real hubs, two collector processes, PostgreSQL ---------------------------------------------------


@pytest.fixture
def pg_table(postgres_url: str) -> Iterator[str]:
    """A table name unique to the test; it and its companions are dropped after it."""
    table = f"hallhub_test_{uuid.uuid4().hex[:16]}"
    yield table
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for suffix in ("", "_pull", "_collectors", "_rejected"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table + suffix)))


def _hub_config(tmp_path: Path, broker_port: int, number: int, port: int) -> HubConfig:
    raw = node_raw(tmp_path / f"hub-{number}", broker_port)
    raw["node"]["id"] = f"hall-{number}"
    raw["api"] = {"listen": f"127.0.0.1:{port}", "pull_token": PULL_TOKEN}
    return parse_config(raw)


def _pull_rows(url: str, table: str) -> dict[str, tuple[int, int, int, int, str | None]]:
    """node -> (cursor, acked, accepted, duplicates, owner) from the collectors' table."""
    with psycopg.connect(url) as conn:
        try:
            rows = conn.execute(
                sql.SQL("SELECT node_id, cursor, acked, accepted, duplicates, owner FROM {}").format(
                    sql.Identifier(f"{table}_pull")
                )
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}  # no collector has started yet
    return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}


def _stored(url: str, table: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(sql.SQL("SELECT node_id, id FROM {}").format(sql.Identifier(table))).fetchall()
    stored: dict[str, list[str]] = {}
    for node_id, record_id in rows:
        stored.setdefault(node_id, []).append(record_id)
    return stored


async def _wait(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.postgres
@pytest.mark.slow
async def test_two_collectors_three_hubs_one_killed_one_hub_down_nothing_lost_or_doubled(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str, pg_table: str
) -> None:
    ports = [free_port() for _ in range(3)]
    configs = [_hub_config(tmp_path, broker.port, n, ports[n]) for n in range(3)]
    sizes = [6000, 6000, 3000]
    expected: dict[str, set[str]] = {}
    for config, size in zip(configs, sizes, strict=True):
        records = ratings(config, size)
        expected[config.node.id] = {r.id for r in records}
        async with open_outbox(config) as outbox:
            await fill(outbox, records, chunk=2000)
    nodes = "".join(
        f'[[node]]\nid = "{c.node.id}"\nurl = "http://127.0.0.1:{port}"\ntoken = "{PULL_TOKEN}"\n'
        for c, port in zip(configs, ports, strict=True)
    )
    nodes_path = _nodes_file(tmp_path, nodes)
    args = [
        "pull", "--db", postgres_url, "--table", pg_table, "--nodes", str(nodes_path), "--lease-s", "3",
        "--page-size", "100", "--interval-s", "0.2", "--max-backoff-s", "1", "--timeout-s", "5",
    ]  # fmt: skip
    collectors = [CentralProcess(args, tmp_path / f"collector-{n}.log") for n in range(3)]
    stored_counts: dict[str, int] = {}
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lambda: [c.stop_quietly() for c in collectors])
        hubs = [await stack.enter_async_context(running_hub(c)) for c in configs[:2]]
        collectors[0].start()
        collectors[1].start()

        victims: list[CentralProcess] = []

        async def one_mid_pull() -> bool:
            rows = await asyncio.to_thread(_pull_rows, postgres_url, pg_table)
            for process in collectors[:2]:
                mine = [r for r in rows.values() if r[4] is not None and f":{process.pid}:" in r[4]]
                if any(0 < r[0] < 6000 for r in mine):
                    victims.append(process)
                    return True
            return False

        await _wait(one_mid_pull, 60, "a collector to be part-way through a hub")
        victims[0].kill9()
        survivor = collectors[1] if victims[0] is collectors[0] else collectors[0]

        async def first_two_done() -> bool:
            return all([await pending(hub.outbox) == 0 for hub in hubs])

        await _wait(first_two_done, 90, "hubs 0 and 1 to be pulled and acked with hub 2 down")
        rows = await asyncio.to_thread(_pull_rows, postgres_url, pg_table)
        assert rows["hall-0"][0] == rows["hall-0"][1] == 6000
        assert rows["hall-2"][0] == 0, "hall-2 is down"
        async with running_hub(configs[2]) as third:

            async def third_done() -> bool:
                return await pending(third.outbox) == 0

            await _wait(third_done, 60, "hub 2 to be pulled once it is back")
        assert survivor.terminate() == 0, survivor.log()
        rows = await asyncio.to_thread(_pull_rows, postgres_url, pg_table)
        assert all(r[4] is None for r in rows.values()), "a stopped collector frees its leases"

        # Cursors survive: a new collector resumes after them and pulls only what is new.
        more = ratings(configs[0], 50, start=6000)
        expected["hall-0"] |= {r.id for r in more}
        await fill(hubs[0].outbox, more)
        collectors[2].start()

        async def new_ones_done() -> bool:
            return await pending(hubs[0].outbox) == 0

        await _wait(new_ones_done, 60, "the restarted collector to pull the new records")
        rows = await asyncio.to_thread(_pull_rows, postgres_url, pg_table)
        assert collectors[2].terminate() == 0, collectors[2].log()
        stored = await asyncio.to_thread(_stored, postgres_url, pg_table)
        stored_counts = {node: len(ids) for node, ids in stored.items()}
    assert stored_counts == {node: len(ids) for node, ids in expected.items()}
    assert {node: set(ids) for node, ids in stored.items()} == expected, (
        "every record of every node exactly once"
    )
    assert rows["hall-0"][:2] == (6050, 6050)
    assert {node: r[2] for node, r in rows.items()} == {node: len(ids) for node, ids in expected.items()}
    assert {node: r[3] for node, r in rows.items()} == dict.fromkeys(expected, 0), "nothing pulled twice"
    for process in (survivor, collectors[2]):
        log = process.log()
        assert "Traceback" not in log
        assert "released" in log
    logs = collectors[0].log() + collectors[1].log()
    assert "node hall-2: GET http://127.0.0.1:" in logs, "the down hub's failures are logged"
