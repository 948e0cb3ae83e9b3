"""The receiver's HTTP side: batch intake (§6), the evaluations feed, `/metrics` (§16), fault switches."""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from contract.records import KINDS
from contract.wire import (
    BATCH_PATH_TEMPLATE,
    MAX_BATCH_BYTES,
    BatchAnswer,
    ReceivedBatch,
    ReceivedRecord,
    Rejection,
    WireError,
    encode_answer,
    is_node_id,
    receive_batch,
)
from sync.receiver._metrics import ReceiverMetrics
from sync.receiver._store import PullStatus, Store, StoreUnavailableError

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "RECEIVER_KEY",
    "CentralReceiver",
    "Misbehaviour",
    "ReceiverStats",
]

_log = logging.getLogger("sync.receiver")

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
_READ_CHUNK: Final = 64 * 1024
_MAX_CURSOR_CHARS: Final = 64


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """Fault switches for tests and demos; all off by default.

    `fail_rate`: fraction of batch requests answered 503 with `Retry-After` or by dropping the
    connection (half each). `slow_ms`: delay before handling each batch. `reject_kind`: kinds
    rejected record by record. `commit_then_drop`: fraction of batches committed and then answered
    by dropping the connection (the "answer lost" case). `refuse_ids`: record ids that make the
    whole batch carrying any of them answer 422, as a platform does with a record it cannot even
    name (the uplink must split the batch until that record is alone). `seed` makes the draws
    repeatable.
    """

    fail_rate: float = 0.0
    slow_ms: int = 0
    reject_kind: frozenset[str] = field(default_factory=frozenset)
    commit_then_drop: float = 0.0
    seed: int | None = None
    refuse_ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        """Refuse settings that make no sense, naming the switch."""
        for name in ("fail_rate", "commit_then_drop"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a fraction between 0 and 1, got {rate!r}")
        if self.slow_ms < 0:
            raise ValueError(f"slow_ms must be 0 or more, got {self.slow_ms!r}")
        unknown = sorted(set(self.reject_kind) - set(KINDS))
        if unknown:
            raise ValueError(f"reject_kind {unknown} unknown; kinds are {', '.join(KINDS)}")


@dataclass(frozen=True, slots=True)
class ReceiverStats:
    """What the receiver has taken: rows by kind (from the database) and this run's counters.

    `batches` counts batch requests answered 200; `refused_batches` those refused whole (4xx);
    `injected_failures` the 503s and drops from `fail_rate`; `dropped_after_commit` the answers
    lost on purpose by `commit_then_drop`.
    """

    records_by_kind: dict[str, int]
    batches: int
    accepted: int
    duplicates: int
    rejected: int
    refused_batches: int
    injected_failures: int
    dropped_after_commit: int


@dataclass(slots=True)
class _Counters:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    refused_batches: int = 0
    injected_failures: int = 0
    dropped_after_commit: int = 0


def _error(
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status, headers=headers)


def _drop(request: web.Request) -> web.Response:
    """Abort the connection so that the client gets no answer; the response is never sent."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=503)


class CentralReceiver:
    """The reference central receiver over one `Store`, as an aiohttp application."""

    def __init__(
        self,
        store: Store,
        token: str,
        *,
        misbehaviour: Misbehaviour | None = None,
        max_body_bytes: int = MAX_BATCH_BYTES,
        retry_after_s: int = 1,
    ) -> None:
        if not token:
            raise ValueError("the receiver needs a non-empty bearer token")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        self._store = store
        self._token = token.encode("utf-8")
        self._misbehaviour = misbehaviour or Misbehaviour()
        self._rng = random.Random(self._misbehaviour.seed)
        self._max_body_bytes = max_body_bytes
        self._retry_after = str(max(retry_after_s, 0))
        self._counters = _Counters()
        self._metrics = ReceiverMetrics()

    @property
    def store(self) -> Store:
        """The store this receiver writes to."""
        return self._store

    def make_app(self) -> web.Application:
        """The aiohttp application; it opens the store on startup and closes it on cleanup.

        Request bodies are not decompressed by aiohttp (`auto_decompress` off): `receive_batch`
        does it, so that bad gzip and oversize bodies get the receiver's own JSON errors.
        """
        app = web.Application(middlewares=[_json_errors], handler_args={"auto_decompress": False})
        app[RECEIVER_KEY] = self
        app.cleanup_ctx.append(self._store_context)
        app.router.add_post(BATCH_PATH_TEMPLATE, self._post_batch)
        app.router.add_get("/v1/evaluations", self._get_evaluations)
        app.router.add_get("/metrics", self._get_metrics)
        app.router.add_get("/openapi.json", _get_openapi)
        return app

    async def _store_context(self, _app: web.Application) -> AsyncIterator[None]:
        await self._store.open()
        try:
            yield
        finally:
            await self._store.close()

    async def stats(self) -> ReceiverStats:
        """Rows by kind from the database, and this run's counters."""
        c = self._counters
        return ReceiverStats(
            records_by_kind=await self._store.counts_by_kind(),
            batches=c.batches,
            accepted=c.accepted,
            duplicates=c.duplicates,
            rejected=c.rejected,
            refused_batches=c.refused_batches,
            injected_failures=c.injected_failures,
            dropped_after_commit=c.dropped_after_commit,
        )

    # --- handlers -----------------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if header is None:
            return _error(401, "missing Authorization: Bearer <token>", headers=challenge)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _error(401, "Authorization must be Bearer <token>", headers=challenge)
        if not hmac.compare_digest(token.strip().encode("utf-8"), self._token):
            return _error(401, "invalid token", headers=challenge)
        return None

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise WireError(413, f"body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise WireError(413, f"body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _post_batch(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        mis = self._misbehaviour
        if mis.slow_ms:
            await asyncio.sleep(mis.slow_ms / 1000)
        if mis.fail_rate and self._rng.random() < mis.fail_rate:
            self._counters.injected_failures += 1
            self._metrics.batches.labels(result="injected").inc()
            if self._rng.random() < 0.5:
                _log.info("injected failure: answering 503")
                return _error(503, "injected failure", headers={"Retry-After": self._retry_after})
            _log.info("injected failure: dropping the connection")
            return _drop(request)
        try:
            answer = await self._take_batch(request)
        except WireError as exc:
            self._counters.refused_batches += 1
            self._metrics.batches.labels(result="refused").inc()
            _log.info("batch refused (%d): %s", exc.status, exc.message)
            return web.json_response(exc.body(), status=exc.status)
        except StoreUnavailableError as exc:
            _log.warning("store unavailable: %s", exc)
            self._metrics.batches.labels(result="unavailable").inc()
            return _error(503, f"store unavailable: {exc}", headers={"Retry-After": self._retry_after})
        if mis.commit_then_drop and self._rng.random() < mis.commit_then_drop:
            self._counters.dropped_after_commit += 1
            _log.info("committed, dropping the answer on purpose")
            return _drop(request)
        return web.Response(body=encode_answer(answer), content_type="application/json")

    async def _take_batch(self, request: web.Request) -> BatchAnswer:
        node_id = request.match_info["node_id"]
        if not is_node_id(node_id):
            raise WireError(400, "node_id in the path must be 1-64 of A-Z a-z 0-9 _ -", "node_id")
        content_type = request.headers.get("Content-Type")
        if content_type is not None and request.content_type != "application/json":
            raise WireError(400, f"Content-Type must be application/json, got {content_type!r}")
        key = request.headers.get("Idempotency-Key")
        if not key:
            raise WireError(400, "the Idempotency-Key header (the batch id) is required")
        body = await self._read_body(request)
        batch = receive_batch(
            body,
            content_encoding=request.headers.get("Content-Encoding"),
            max_bytes=self._max_body_bytes,
        )
        if batch.node_id != node_id:
            raise WireError(
                400, f"node_id {batch.node_id!r} does not match the path's {node_id!r}", "node_id"
            )
        if key != batch.batch_id:
            raise WireError(
                400, f"Idempotency-Key {key!r} differs from batch_id {batch.batch_id!r}", "batch_id"
            )
        self._refuse_marked(batch)

        rejected = list(batch.rejected)
        fresh: list[ReceivedRecord] = []
        repeated: list[str] = []
        seen: set[str] = set()
        for record in batch.records:
            problem = self._refusal(record)
            if problem is not None:
                rejected.append(Rejection(id=record.id, error=problem))
            elif record.id in seen:
                repeated.append(record.id)
            else:
                seen.add(record.id)
                fresh.append(record)
        # Shielded: a client that goes away mid-request (a hub killed, a dropped connection) cancels
        # this handler, but the insert may already be committing; its records are counted either way,
        # or the retry of the same batch would count them as duplicates that were never accepted.
        return await asyncio.shield(self._commit(node_id, fresh, repeated, rejected))

    async def _commit(
        self, node_id: str, fresh: list[ReceivedRecord], repeated: list[str], rejected: list[Rejection]
    ) -> BatchAnswer:
        """Store the fresh records and count the batch's outcome."""
        inserted = await self._store.insert(node_id, fresh) if fresh else set()
        accepted = [r.id for r in fresh if r.id in inserted]
        duplicate = [r.id for r in fresh if r.id not in inserted] + repeated

        c = self._counters
        c.batches += 1
        c.accepted += len(accepted)
        c.duplicates += len(duplicate)
        c.rejected += len(rejected)
        m = self._metrics
        m.batches.labels(result="ok").inc()
        m.records.labels(result="accepted").inc(len(accepted))
        m.records.labels(result="duplicate").inc(len(duplicate))
        m.records.labels(result="rejected").inc(len(rejected))
        return BatchAnswer(accepted=accepted, duplicate=duplicate, rejected=rejected)

    def _refuse_marked(self, batch: ReceivedBatch) -> None:
        """The `refuse_ids` switch: a 422 for the whole batch naming the first marked record."""
        refused = self._misbehaviour.refuse_ids
        if not refused:
            return
        for record_id in [r.id for r in batch.records] + [r.id for r in batch.rejected]:
            if record_id in refused:
                raise WireError(422, f"record {record_id} cannot be processed (refuse_ids switch)", "records")

    def _refusal(self, record: ReceivedRecord) -> str | None:
        if record.kind in self._misbehaviour.reject_kind:
            return f"kind {record.kind!r} is not accepted by this receiver"
        return self._store.unstorable(record)

    async def _get_evaluations(self, request: web.Request) -> web.Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        query = request.query
        unknown = sorted(set(query) - {"after", "limit"})
        if unknown:
            return _error(400, f"unknown query parameter {unknown[0]!r}; use after and limit")
        after_text = query.get("after", "0")
        if len(after_text) > _MAX_CURSOR_CHARS:
            return _error(400, f"after must be a cursor from `next`, got {after_text[:20]!r}…", "after")
        limit_text = query.get("limit", str(DEFAULT_PAGE))
        if not limit_text.isdecimal() or not limit_text.isascii() or not 1 <= int(limit_text) <= MAX_PAGE:
            return _error(400, f"limit must be 1-{MAX_PAGE}, got {limit_text!r}", "limit")
        try:
            page = await self._store.evaluations(after_text, int(limit_text))
        except ValueError:
            return _error(400, f"after must be a cursor from `next`, got {after_text!r}", "after")
        except StoreUnavailableError as exc:
            return _error(503, f"store unavailable: {exc}", headers={"Retry-After": self._retry_after})
        return web.json_response({"evaluations": [row.as_json() for row in page.rows], "next": page.next})

    async def _get_metrics(self, _request: web.Request) -> web.Response:
        """Prometheus text; open like the hub's (§9): counts and node ids, nothing secret."""
        status: list[PullStatus] | None
        try:
            status = await self._store.pull_status()
        except StoreUnavailableError as exc:
            _log.warning("metrics without pull state: %s", exc)
            status = None
        return web.Response(body=self._metrics.render(status), content_type="text/plain", charset="utf-8")


RECEIVER_KEY: Final = web.AppKey("central_receiver", CentralReceiver)
"""Where `make_app` keeps its `CentralReceiver` in the application."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _get_openapi(_request: web.Request) -> web.Response:
    """`GET /openapi.json`: the OpenAPI 3.1 document of the receiver's routes, from the contract's models."""
    from contract.openapi import openapi_document  # noqa: PLC0415 (only when asked for)
    from hub import __version__  # noqa: PLC0415

    return web.json_response(openapi_document(__version__, ("receiver",)))


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Answer routing errors and unexpected failures with the same JSON error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {
            k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
        }
        return _error(exc.status, exc.reason, headers=headers)
    except Exception:
        _log.exception("unexpected error handling %s %s", request.method, request.path)
        return _error(500, "internal error in the receiver")
