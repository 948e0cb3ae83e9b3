"""The pull collector: leases nodes in the database and pulls each one on its own task.

One lease loop per process heartbeats, renews and claims nodes (`Store.claim_nodes`), starts a
task for each node it gains and cancels the task of each node it loses. A node task pulls a page,
stores it and moves the node's cursor in one transaction (fenced by the lease), then acks the node
(§5) only after that commit. Failures back off per node with full jitter; tasks share nothing but
the HTTP session and the pool, so a node that is down or slow never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from contract.http import PULL_LIMIT_MAX
from sync.collector._fetch import Page, PullError, ack, fetch_page
from sync.collector._nodes import NodeSpec, is_loopback_url
from sync.receiver import LeaseLostError, NodeLease, PulledRecord, Store, StoreUnavailableError

__all__ = ["Backoff", "Collector", "CollectorTotals", "new_owner_id"]

_log = logging.getLogger("sync.collector")

DEFAULT_LEASE_S: Final = 30.0
DEFAULT_PAGE: Final = 1000
_IDLE_TOUCH_S: Final = 30.0


def new_owner_id() -> str:
    """`host:pid:random`: names this process in the lease table and in logs."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Backoff:
    """Exponential backoff with full jitter: after failure n, a wait in [0, min(cap, base·2^(n−1))].

    `Retry-After` from the node lengthens a wait, never shortens it, and is capped too.
    """

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"backoff needs 0 < base ({base_s}) <= cap ({cap_s})")
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """Count a failure and return how long to wait before the next try."""
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures - 1, 62))
        delay = self._rng.uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s))
        return delay

    def reset(self) -> None:
        """A success: the next failure starts again from the base."""
        self.failures = 0


@dataclass(slots=True)
class CollectorTotals:
    """What this process did since it started, for its summary lines."""

    pages: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    failures: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _NodeState:
    lease: NodeLease
    task: asyncio.Task[None]
    failing_since: float | None = None


class Collector:
    """Pulls every node of `nodes` that this process holds a lease on, until `run`'s stop is set."""

    def __init__(
        self,
        store: Store,
        nodes: Sequence[NodeSpec],
        *,
        lease_s: float = DEFAULT_LEASE_S,
        page_size: int = DEFAULT_PAGE,
        interval_s: float = 5.0,
        timeout_s: float = 30.0,
        max_page_bytes: int = 64 * 1024 * 1024,
        max_in_flight: int = 64,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        summary_every_s: float = 60.0,
        owner: str | None = None,
    ) -> None:
        if lease_s < 1:
            raise ValueError(f"lease_s must be at least 1 second, got {lease_s!r}")
        if not 1 <= page_size <= PULL_LIMIT_MAX:
            raise ValueError(f"page_size must be 1-{PULL_LIMIT_MAX}, got {page_size!r}")
        if interval_s <= 0 or timeout_s <= 0 or max_in_flight < 1 or max_page_bytes < 1024:
            raise ValueError(
                "interval_s and timeout_s must be positive, max_in_flight >= 1, max_page_bytes >= 1024"
            )
        Backoff(backoff_base_s, backoff_max_s)
        if not nodes:
            raise ValueError("no nodes to pull")
        self.store = store
        self.nodes = {node.id: node for node in nodes}
        self.owner = owner or new_owner_id()
        self.lease_s = lease_s
        self.page_size = page_size
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_page_bytes = max_page_bytes
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.summary_every_s = summary_every_s
        self.totals = CollectorTotals()
        self._held: dict[str, _NodeState] = {}
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._http: aiohttp.ClientSession | None = None

    @property
    def held(self) -> list[str]:
        """Ids of the nodes this process pulls now."""
        return sorted(self._held)

    async def run(self, stop: asyncio.Event) -> None:
        """Lease, pull and ack until `stop` is set; then stop the node tasks and free the leases."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=min(self.timeout_s, 10.0))
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=2)
        self._http = aiohttp.ClientSession(timeout=timeout, connector=connector)
        for node in self.nodes.values():
            if node.url.startswith("http://") and not is_loopback_url(node.url):
                _log.warning("node %s: plain http off this machine, the pull token travels in clear", node.id)
        _log.info(
            "collector %s: %d nodes in the file, lease %.0f s, pages of %d",
            self.owner,
            len(self.nodes),
            self.lease_s,
            self.page_size,
        )
        last_renewed = time.monotonic()
        next_summary = time.monotonic() + self.summary_every_s
        try:
            while not stop.is_set():
                try:
                    leases = await self.store.claim_nodes(self.owner, list(self.nodes), self.lease_s)
                except StoreUnavailableError as exc:
                    _log.warning("cannot renew leases: %s", exc)
                    if time.monotonic() - last_renewed > self.lease_s:
                        self._drop_all("leases not renewed for longer than the lease")
                else:
                    last_renewed = time.monotonic()
                    self._apply(leases)
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + self.summary_every_s
                    self._summary()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.lease_s / 3)
        finally:
            await self._shutdown()

    def _apply(self, leases: Sequence[NodeLease]) -> None:
        now_held = {lease.node_id: lease for lease in leases}
        for node_id in sorted(set(self._held) - set(now_held)):
            _log.info("node %s: lease given up or lost, stopping its pull", node_id)
            self._held.pop(node_id).task.cancel()
        for node_id, lease in sorted(now_held.items()):
            if node_id not in self._held:
                _log.info(
                    "node %s: leased, pulling after seq %d", self.nodes[node_id].describe(), lease.cursor
                )
                task = asyncio.create_task(self._pull_node(lease), name=f"pull-{node_id}")
                self._held[node_id] = _NodeState(lease, task)

    def _drop_all(self, why: str) -> None:
        for node_id, state in sorted(self._held.items()):
            _log.warning("node %s: %s, stopping its pull", node_id, why)
            state.task.cancel()
        self._held.clear()

    def _summary(self) -> None:
        t = self.totals
        failing = sorted(n for n, s in self._held.items() if s.failing_since is not None)
        _log.info(
            "holding %d nodes; %d pages, %d records new, %d duplicate, %d rejected, %d failed pulls%s",
            len(self._held),
            t.pages,
            t.accepted,
            t.duplicates,
            t.rejected,
            t.failures,
            f"; failing now: {', '.join(failing[:10])}{' …' if len(failing) > 10 else ''}" if failing else "",
        )

    async def _shutdown(self) -> None:
        tasks = [state.task for state in self._held.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        released = len(self._held)
        self._held.clear()
        try:
            await self.store.release_nodes(self.owner)
        except StoreUnavailableError as exc:
            _log.warning("could not release the leases (they expire after %.0f s): %s", self.lease_s, exc)
        else:
            _log.info("released %d node leases", released)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # --- one node -------------------------------------------------------------------------------

    async def _pull_node(self, lease: NodeLease) -> None:
        node = self.nodes[lease.node_id]
        backoff = Backoff(self.backoff_base_s, self.backoff_max_s)
        cursor, acked = lease.cursor, lease.acked
        last_touch = 0.0
        started, pulled_since_start = time.monotonic(), 0
        while True:
            try:
                token = self._token(node)
                if acked < cursor:
                    await self._ack(node, token, cursor)
                    acked = cursor
                page = await self._fetch(node, token, cursor)
                moved = page.next_after > cursor or bool(page.records)
                idle_due = time.monotonic() - last_touch >= _IDLE_TOUCH_S
                if moved or idle_due:
                    entries = [self._storable(entry) for entry in page.records]
                    result = await self.store.store_page(
                        self.owner, node.id, entries, page.next_after, caught_up=not page.more
                    )
                    last_touch = time.monotonic()
                    self._count(result.accepted, result.duplicates, result.rejected)
                    pulled_since_start += len(page.records)
                    if result.rejected:
                        _log.warning(
                            "node %s: %d records rejected and kept in the rejected table (first: %s)",
                            node.id,
                            result.rejected,
                            next(r.error for r in entries if r.record is None),
                        )
                cursor = max(cursor, page.next_after)
                if acked < cursor:
                    await self._ack(node, token, cursor)
                    acked = cursor
                self._recovered(node, backoff)
                if not page.more:
                    if pulled_since_start:
                        _log.info(
                            "node %s: caught up at seq %d, %d records in %.1f s",
                            node.id,
                            cursor,
                            pulled_since_start,
                            time.monotonic() - started,
                        )
                    pulled_since_start = 0
                    await asyncio.sleep(self.interval_s)
                    started = time.monotonic()
            except LeaseLostError:
                _log.warning("node %s: another collector holds the lease now; page not stored", node.id)
                state = self._held.get(node.id)
                if state is not None and state.task is asyncio.current_task():
                    del self._held[node.id]
                return
            except PullError as exc:
                await self._failed(node, backoff, exc.reason, exc.message, exc.retry_after_s)
            except StoreUnavailableError as exc:
                await self._failed(node, backoff, "database", str(exc), None)

    def _storable(self, entry: PulledRecord) -> PulledRecord:
        """The entry, or a rejected one when this database cannot keep the record (JSONB and NUL)."""
        if entry.record is None:
            return entry
        problem = self.store.unstorable(entry.record)
        if problem is None:
            return entry
        return PulledRecord(entry.seq, None, raw=entry.record.to_json(), error=problem)

    def _token(self, node: NodeSpec) -> str:
        try:
            return node.read_token()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise PullError("token_file", f"cannot read the token file: {exc}") from None

    async def _fetch(self, node: NodeSpec, token: str, after: int) -> Page:
        assert self._http is not None
        async with self._in_flight:
            page = await fetch_page(self._http, node, token, after, self.page_size, self.max_page_bytes)
        self.totals.pages += 1
        return page

    async def _ack(self, node: NodeSpec, token: str, upto: int) -> None:
        assert self._http is not None
        async with self._in_flight:
            await ack(self._http, node, token, upto)
        await self.store.note_acked(self.owner, node.id, upto)

    def _count(self, accepted: int, duplicates: int, rejected: int) -> None:
        t = self.totals
        t.accepted += accepted
        t.duplicates += duplicates
        t.rejected += rejected

    def _recovered(self, node: NodeSpec, backoff: Backoff) -> None:
        state = self._held.get(node.id)
        if backoff.failures:
            _log.info("node %s: pulling again after %d failures", node.id, backoff.failures)
        backoff.reset()
        if state is not None:
            state.failing_since = None

    async def _failed(
        self, node: NodeSpec, backoff: Backoff, reason: str, message: str, retry_after_s: float | None
    ) -> None:
        t = self.totals
        t.failures += 1
        t.failures_by_reason[reason] = t.failures_by_reason.get(reason, 0) + 1
        state = self._held.get(node.id)
        if state is not None and state.failing_since is None:
            state.failing_since = time.monotonic()
        delay = backoff.next_delay(retry_after_s)
        level = logging.WARNING if backoff.failures == 1 or backoff.failures % 10 == 0 else logging.INFO
        _log.log(
            level,
            "node %s: %s (%s); failure %d, next try in %.1f s",
            node.id,
            message,
            reason,
            backoff.failures,
            delay,
        )
        if reason != "database":
            with contextlib.suppress(StoreUnavailableError):
                await self.store.note_error(node.id)
        await asyncio.sleep(delay)
