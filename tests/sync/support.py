"""Helpers for the uplink, drain and pull tests: configs, filled outboxes, a receiver that records.

The receiver is the reference one (`sync.receiver`) on a real loopback port; `recording_receiver`
only adds a middleware that notes each batch request (its Idempotency-Key, headers and status), so
that tests can check what the uplink sent without touching the receiver's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from contract.records import Record
from hub.app import Hub
from hub.config import HubConfig, Secrets, parse_config
from hub.ingest.intake import Intake
from hub.metrics import HubMetrics
from hub.status import SyncState
from hub.store.outbox import Outbox, Stored
from sync.annotate import make_evaluation_hook
from sync.node import build_hub
from sync.receiver import DEFAULT_TABLE, CentralReceiver, Misbehaviour, open_store
from sync.uplink import Uplink
from tests.support.hub import PULL_TOKEN, node_raw

TOKEN = "uplink-test-token"
FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "idle_poll_s": 0.2, "auth_retry_s": 0.3}


def sync_raw(
    data_dir: Path,
    url: str,
    *,
    token: str | None = TOKEN,
    token_file: Path | None = None,
    batch_max: int = 500,
    broker_port: int = 1,
    **sections: Any,
) -> dict[str, Any]:
    """A node config document with push to `url` (and the pull token of tests/support/hub.py)."""
    central: dict[str, Any] = {"url": url, "batch_max": batch_max, "timeout_s": 10.0}
    if token_file is not None:
        central["token_file"] = str(token_file)
    elif token is not None:
        central["token"] = token
    central.update(sections.pop("central", {}))
    return node_raw(data_dir, broker_port, central=central, **sections)


def sync_config(data_dir: Path, url: str, **kwargs: Any) -> HubConfig:
    """`sync_raw` validated."""
    return parse_config(sync_raw(data_dir, url, **kwargs))


@dataclass
class StubHost:
    """The parts an `Uplink` is built from, without a hub: config, outbox, metrics, sync state."""

    config: HubConfig
    outbox: Outbox
    secrets: Secrets = field(default_factory=lambda: Secrets("", PULL_TOKEN, ""))
    metrics: HubMetrics = field(default_factory=HubMetrics)
    sync: SyncState = field(default_factory=SyncState)

    def counter(self, name: str, **labels: str) -> float:
        """A metric's current value (0 if never set)."""
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@contextlib.asynccontextmanager
async def open_outbox(config: HubConfig) -> AsyncIterator[Outbox]:
    """The node's outbox file with the national hook, as the hub opens it."""
    outbox = Outbox(Path(config.node.data_dir) / "outbox.db", evaluation_hook=make_evaluation_hook(config))
    await outbox.open()
    try:
        yield outbox
    finally:
        await outbox.close()


def ratings(config: HubConfig, count: int, *, bad_every: int = 0, start: int = 0) -> list[Record]:
    """`count` evaluations from the configured pads (each its own case), with a bad review and its
    alert every `bad_every`-th rating (never when 0)."""
    intake = Intake(config, Outbox(":memory:"), HubMetrics())
    pads = [device for device in config.device if device.kind == "pad"]
    records: list[Record] = []
    for n in range(start, start + count):
        level = 1 if bad_every and n % bad_every == 0 else 3 + n % 3
        records += intake.evaluation(
            pads[n % len(pads)],
            level=level,
            reasons=["R1"] if level <= 2 else [],
            case_no=f"CASE-{n:08d}",
            item_code="370102-001",
            staff_id=f"S{n % 17:03d}",
        )
    return records


async def fill(outbox: Outbox, records: list[Record], chunk: int = 1000) -> None:
    """Store records in chunks (one transaction each), as a busy week would have."""
    for begin in range(0, len(records), chunk):
        result = await outbox.store(records[begin : begin + chunk])
        assert isinstance(result, Stored), result


@contextlib.asynccontextmanager
async def running_uplink(host: StubHost, **options: Any) -> AsyncIterator[Uplink]:
    """An uplink serving in this loop until the block ends (then cancelled, as the hub does)."""
    uplink = Uplink(
        host.config,
        outbox=host.outbox,
        metrics=host.metrics,
        sync=host.sync,
        central_token=host.secrets.central_token,
        **{**FAST, **options},
    )
    task = asyncio.create_task(uplink.run(), name="test-uplink")
    try:
        yield uplink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def pending(outbox: Outbox) -> int:
    """Pending records in the outbox."""
    return (await outbox.stats()).pending


@dataclass
class Seen:
    """One batch request as the receiver saw it."""

    key: str
    headers: dict[str, str]
    at: float
    status: int | None = None


@dataclass
class Recorded:
    """A serving receiver and what it saw."""

    url: str
    port: int
    receiver: CentralReceiver
    requests: list[Seen]

    def keys(self) -> list[str]:
        """Idempotency-Keys in arrival order."""
        return [seen.key for seen in self.requests]


@contextlib.asynccontextmanager
async def recording_receiver(
    db_url: str,
    *,
    token: str = TOKEN,
    port: int = 0,
    table: str = DEFAULT_TABLE,
    max_body_bytes: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **misbehaviour: Any,
) -> AsyncIterator[Recorded]:
    """The reference receiver on 127.0.0.1 (`port` 0: a free one), noting every batch request."""
    seen: list[Seen] = []

    @web.middleware
    async def note(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        entry = Seen(request.headers.get("Idempotency-Key", ""), dict(request.headers), time.monotonic())
        if request.method == "POST":
            seen.append(entry)
        response = await handler(request)
        entry.status = response.status
        return response

    options: dict[str, Any] = {"retry_after_s": 0}
    if max_body_bytes is not None:
        options["max_body_bytes"] = max_body_bytes
    receiver = CentralReceiver(
        open_store(db_url, table), token, misbehaviour=Misbehaviour(**misbehaviour), **options
    )
    app = receiver.make_app()
    app.middlewares.append(note)
    # A request still held by a slow or stuck receiver ends with the test: its handler is cancelled
    # when the client goes, instead of sleeping on past the event loop.
    runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        bound = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        yield Recorded(f"{scheme}://127.0.0.1:{bound}", bound, receiver, seen)
    finally:
        await runner.cleanup()


def central_rows(db: Path, table: str = DEFAULT_TABLE) -> list[tuple[int, str, str]]:
    """(serial, id, kind) of every row the receiver stored, in arrival order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (int(s), str(i), str(k))
            for s, i, k in conn.execute(f"SELECT serial, id, kind FROM {table} ORDER BY serial")
        ]
    finally:
        conn.close()


def outbox_states(db: Path) -> dict[str, tuple[int, str | None]]:
    """Record id → (state, delivered_via), read straight from the outbox file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            str(i): (int(s), v) for i, s, v in conn.execute("SELECT id, state, delivered_via FROM records")
        }
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def hub_with_uplink(config: HubConfig, **uplink_options: Any) -> AsyncIterator[Hub]:
    """A whole hub in this loop (broker, API, uplink with test timings); stopped cleanly on exit."""
    secrets = Secrets(broker_password="", pull_token=PULL_TOKEN, central_token="")
    hub = build_hub(config, secrets, **{**FAST, **uplink_options})
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        await asyncio.wait_for(hub.ready.wait(), 15)
        await hub.gateway.wait_connected(15)
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
