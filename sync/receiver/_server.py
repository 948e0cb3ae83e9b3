"""Serving the receiver on a TCP address: a context manager for tests and the CLI's run loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from contract.wire import MAX_BATCH_BYTES
from sync.receiver._app import CentralReceiver, Misbehaviour, ReceiverStats
from sync.receiver._open import open_store
from sync.receiver._store import DEFAULT_POOL_SIZE, DEFAULT_TABLE

__all__ = ["DEFAULT_LISTEN", "RunningReceiver", "parse_listen", "run_receiver", "start_receiver"]

_log = logging.getLogger("sync.receiver")

DEFAULT_LISTEN: Final = "127.0.0.1:8781"
_SHUTDOWN_TIMEOUT_S: Final = 5.0


def parse_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` or `[v6-host]:port` (port 0 picks a free one)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdecimal() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"listen address {listen!r} must be host:port, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class RunningReceiver:
    """A receiver that is serving: its base URL and the receiver (for `stats()`)."""

    url: str
    host: str
    port: int
    receiver: CentralReceiver

    async def stats(self) -> ReceiverStats:
        """Shortcut to the receiver's statistics."""
        return await self.receiver.stats()


@asynccontextmanager
async def start_receiver(
    listen: str,
    db_url: str,
    token: str,
    *,
    table: str = DEFAULT_TABLE,
    max_body_bytes: int = MAX_BATCH_BYTES,
    fail_rate: float = 0.0,
    slow_ms: int = 0,
    reject_kind: Iterable[str] = (),
    commit_then_drop: float = 0.0,
    seed: int | None = None,
    retry_after_s: int = 1,
    refuse_ids: Iterable[str] = (),
    pool_size: int = DEFAULT_POOL_SIZE,
) -> AsyncIterator[RunningReceiver]:
    """Serve the receiver while the block runs; the parameters are those of `run_receiver`."""
    host, port = parse_listen(listen)
    misbehaviour = Misbehaviour(
        fail_rate=fail_rate,
        slow_ms=slow_ms,
        reject_kind=frozenset(reject_kind),
        commit_then_drop=commit_then_drop,
        seed=seed,
        refuse_ids=frozenset(refuse_ids),
    )
    receiver = CentralReceiver(
        open_store(db_url, table, pool_size=pool_size),
        token,
        misbehaviour=misbehaviour,
        max_body_bytes=max_body_bytes,
        retry_after_s=retry_after_s,
    )
    runner = web.AppRunner(receiver.make_app(), shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        running = RunningReceiver(f"http://{shown}:{bound_port}", bound_host, bound_port, receiver)
        _log.info("central receiver listening on %s", running.url)
        yield running
    finally:
        await runner.cleanup()


async def run_receiver(
    listen: str,
    db_url: str,
    token: str,
    *,
    table: str = DEFAULT_TABLE,
    max_body_bytes: int = MAX_BATCH_BYTES,
    fail_rate: float = 0.0,
    slow_ms: int = 0,
    reject_kind: Iterable[str] = (),
    commit_then_drop: float = 0.0,
    seed: int | None = None,
    retry_after_s: int = 1,
    on_ready: Callable[[RunningReceiver], None] | None = None,
    refuse_ids: Iterable[str] = (),
    pool_size: int = DEFAULT_POOL_SIZE,
) -> None:
    """Serve the reference central receiver until cancelled (Ctrl-C under `asyncio.run`).

    - `listen`: `host:port` (`[::1]:port` for IPv6; port 0 picks a free port).
    - `db_url`: `sqlite:///relative.db`, `sqlite:////absolute.db` (WAL) or `postgresql://…`.
    - `token`: the bearer token every request must carry.
    - `table`: the table name (created if missing).
    - `max_body_bytes`: larger bodies, compressed or not, get 413.
    - `fail_rate`, `slow_ms`, `reject_kind`, `commit_then_drop`, `seed`, `refuse_ids`: see
      `Misbehaviour`.
    - `retry_after_s`: the `Retry-After` of 503 answers.
    - `on_ready`: called once serving, with the bound URL and the receiver (for `stats()`).
    - `pool_size`: the most PostgreSQL connections this process opens.
    """
    async with start_receiver(
        listen,
        db_url,
        token,
        table=table,
        max_body_bytes=max_body_bytes,
        fail_rate=fail_rate,
        slow_ms=slow_ms,
        reject_kind=reject_kind,
        commit_then_drop=commit_then_drop,
        seed=seed,
        retry_after_s=retry_after_s,
        refuse_ids=refuse_ids,
        pool_size=pool_size,
    ) as running:
        if on_ready is not None:
            on_ready(running)
        await asyncio.Event().wait()
