"""The push uplink (CONTRACTS §6): outbox records to the central platform, exactly once in effect.

One batch is in flight at a time. A batch is up to `central.batch_max` pending records and
`central.batch_max_bytes` of their JSON, alerts first and then oldest first (`Outbox.next_batch`),
posted gzip-compressed with its id as the `Idempotency-Key`. Each record goes as the §1 JSON text
the outbox stored when the hub validated it (`wire.stored_batch_body`), never decoded and encoded
again; only a sealed identity to add is opened into its record. Before its first send the batch
(id, `sent_at`, record ids) is written to the outbox's kv table, so that after a crash or `kill -9`
the very same request is sent again; the platform upserts by record id, so a repeat costs nothing.
A record is marked delivered only from the platform's answer.

- 200: accepted and duplicate ids are delivered (`via = "push"`), rejected ids become dead letters.
- A network error, a timeout, 408, 429, 5xx (or any other unexpected answer): the same batch again
  after a full-jitter backoff, a random wait in [0, min(300 s, 1 s × 2^(n-1))] after failure n, or
  at least `Retry-After` (seconds or an HTTP date, at most 300 s) when the platform sends one.
  An answer body over `MAX_ANSWER_BYTES` is not read: the same batch again, as for a 5xx.
- 401, 403: stop pushing, store one `alert` record (`data.type = "uplink_unauthorized"`) per
  episode, try again every 5 minutes; the token (`central.token_file`) is read afresh for every
  request, so a fixed token resumes pushing at the next try.
- 3xx (CONTRACTS §10): never followed, since a redirect could carry the batch, token and real names
  to another host or to plain http. It is a failure like a 5xx (the same batch after the full-jitter
  backoff; `Retry-After` is ignored), and the first one of an episode stores one `alert` record
  (`data.type = "uplink_redirected"`, with `status`, `location`, `url`, `node_id`) and logs one ERROR.
- 400, 413, 422: the batch was refused whole. Split it in halves (each a new batch id) until the bad
  record is alone, dead-letter that record with the platform's message, deliver the rest.

An episode (401/403, or 3xx) is kept in the outbox's kv table (`uplink.unauthorized`,
`uplink.redirected`), so a restart does not raise its alert again; the next 200 ends it.

A 200 that leaves some ids of the batch unmentioned (neither accepted, duplicate nor rejected) is
answered for the ids it names; the others stay pending and go first in the next batch, sent only
after the same full-jitter backoff as a failure, growing with consecutive incomplete answers and
reset by a complete one (CONTRACTS §10): a platform that keeps leaving records out slows the uplink
down instead of drawing a tight loop of new batches.

Before each retry the batch is checked against the outbox: records delivered meanwhile by pull
(`/v1/records/ack`) are left out, and a batch whose records changed gets a new id (a different
request must not reuse an idempotency key). Every timer is an `asyncio.sleep`, i.e. monotonic time.

With `privacy.identity = "encrypted"` a record may carry a sealed identity; the uplink opens it right
before sending and adds `certkeyGOV`/`userName` to `data.national` inside the request body only. The
outbox erases the sealed token when the record is delivered. The fields are added only when
`identity_allowed` holds (CONTRACTS §10): an https URL and a TLS context that verifies the platform's
certificate and host name. Over plain http, loopback included, records go without them (one warning
at start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import enum
import json
import logging
import random
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from contract import wire
from contract.records import Kind, Record, new_record_id, utc_now
from drivers.backoff import full_jitter
from hub.config import HubConfig
from hub.metrics import HubMetrics
from hub.ops.tls import CentralTlsError, central_tls_context
from hub.privacy.sealing import (
    SealedIdentity,
    SecretFileError,
    UnsealError,
    derive_seal_key,
    load_or_create_secret,
)
from hub.status import SyncState
from hub.store.outbox import Outbox, PendingRecord, StoreUnavailable
from sync.national import rename_fields

__all__ = [
    "AUTH_RETRY_S",
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "INFLIGHT_KEY",
    "REDIRECTED_KEY",
    "UNAUTHORIZED_KEY",
    "Uplink",
    "identity_allowed",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

AUTH_RETRY_S: Final = 300.0
BACKOFF_BASE_S: Final = 1.0
BACKOFF_MAX_S: Final = 300.0
IDLE_POLL_S: Final = 5.0
INFLIGHT_KEY: Final = "uplink.inflight"
UNAUTHORIZED_KEY: Final = "uplink.unauthorized"
REDIRECTED_KEY: Final = "uplink.redirected"
SPLIT_STATUSES: Final = frozenset({400, 413, 422})
AUTH_STATUSES: Final = frozenset({401, 403})
_MAX_MESSAGE: Final = 500
MAX_ANSWER_BYTES: Final = 4 * 2**20
"""An answer lists at most `batch_max` ids (5,000 × ~40 bytes): anything far larger is hostile."""


class UplinkSetupError(Exception):
    """TLS files or the node secret cannot be used; the message names the config key and the fix."""


def identity_allowed(url: str, context: ssl.SSLContext | None) -> bool:
    """Whether sealed identity fields may go in a request to `url` over `context` (CONTRACTS §10):
    only https with a context that verifies the certificate and host name; never plain http."""
    return (
        urlsplit(url).scheme == "https"
        and context is not None
        and context.verify_mode == ssl.CERT_REQUIRED
        and context.check_hostname
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date); None if unusable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdecimal():
        return float(int(text))
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


@dataclass(slots=True)
class _Batch:
    """One request as it will be sent (and re-sent byte for byte): id, time, ids, gzip body."""

    batch_id: str
    sent_at: str
    ids: list[str]
    body: bytes
    seqs: list[int] = field(default_factory=list)
    """The outbox's seq of each id (empty until built from the outbox): batches are excluded from
    the next read and marked delivered by seq, the table's key, not by id (another index)."""

    def seqs_of(self, record_ids: list[str]) -> list[int]:
        """The seqs of those of `record_ids` this batch holds."""
        seq_by_id = dict(zip(self.ids, self.seqs, strict=True))
        return [seq_by_id[record_id] for record_id in record_ids if record_id in seq_by_id]

    def inflight_json(self) -> str:
        """What the kv table keeps of it: enough to rebuild the same request after a restart."""
        return json.dumps({"batch_id": self.batch_id, "sent_at": self.sent_at, "ids": self.ids})


class _Kind(enum.Enum):
    ANSWERED = "answered"
    REFUSED = "refused"
    UNAUTHORIZED = "unauthorized"
    REDIRECTED = "redirected"
    RETRY = "retry"


@dataclass(slots=True)
class _Result:
    """What one POST came to."""

    kind: _Kind
    status: int | None = None
    message: str = ""
    retry_after_s: float | None = None
    answer: wire.BatchAnswer | None = None
    token: str = field(default="", repr=False)
    location: str = ""


class Uplink:
    """The push service: `Uplink(config, outbox=…, metrics=…, sync=…).run()` until cancelled.

    The keyword arguments exist for tests and tuning: `auth_retry_s` (5 minutes by contract),
    `backoff_base_s` and `backoff_max_s` (1 s and 300 s), `idle_poll_s` (how often an idle uplink
    looks for records queued by another process, e.g. `hallhub outbox retry`), `rng` (jitter).
    """

    def __init__(
        self,
        config: HubConfig,
        *,
        outbox: Outbox,
        metrics: HubMetrics,
        sync: SyncState,
        central_token: str = "",
        auth_retry_s: float = AUTH_RETRY_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        idle_poll_s: float = IDLE_POLL_S,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.metrics = metrics
        self.sync = sync
        self.central_token = central_token
        self.auth_retry_s = auth_retry_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.idle_poll_s = idle_poll_s
        self._rng = rng or random.Random()
        central = self.config.central
        self.url = central.url.rstrip("/") + wire.batch_path(self.config.node.id)
        self.batch_max = central.batch_max
        self.batch_max_bytes = central.batch_max_bytes
        self._wake = asyncio.Event()
        self._seal_key: bytes | None = None
        self._episodes: dict[str, bool] = {}
        self._incomplete = 0
        self._marking: asyncio.Task[None] | None = None
        self._unmarked: frozenset[int] = frozenset()

    # -- set-up ----------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https URL (`hub.ops.tls`), None for http."""
        if not self.config.central.url.startswith("https://"):
            return None
        try:
            return central_tls_context(self.config.central)
        except CentralTlsError as exc:
            raise UplinkSetupError(str(exc)) from exc

    def _load_seal_key(self, context: ssl.SSLContext | None) -> bytes | None:
        """The key that opens sealed identities, or None when they must not be sent (CONTRACTS §10)."""
        if self.config.privacy.identity != "encrypted":
            return None
        if not identity_allowed(self.config.central.url, context):
            log.warning(
                'uplink: privacy.identity = "encrypted" but central.url %s is not https with a verified '
                "certificate: certkeyGOV/userName are left out of every batch (set an https central.url)",
                self.config.central.url,
            )
            return None
        try:
            return derive_seal_key(load_or_create_secret(self.config.node.secret_file))
        except SecretFileError as exc:
            raise UplinkSetupError(f"node.secret_file: {exc}") from exc

    def _token(self) -> str:
        """The bearer token: `central.token_file` read afresh, else `central.token`."""
        central = self.config.central
        if central.token_file:
            try:
                return Path(central.token_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                log.error("uplink: central.token_file %s: %s", central.token_file, exc.strerror)
                return ""
        return self.central_token or central.token

    def _on_commit(self, records: list[Record]) -> None:
        self._wake.set()

    # -- the service -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Push until cancelled. Problems are logged and retried: the uplink never stops the hub."""
        self.outbox.add_listener(self._on_commit)
        context = await self._set_up()
        timeout = aiohttp.ClientTimeout(total=self.config.central.timeout_s)
        connector = aiohttp.TCPConnector(ssl=context if context is not None else True, limit=4)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            log.info("uplink: pushing to %s, batches of up to %d", self.url, self.batch_max)
            failures = 0
            try:
                while True:
                    try:
                        await self._cycle(session)
                        failures = 0
                    except StoreUnavailable as exc:
                        failures += 1
                        log.error("uplink: outbox unavailable (%s); trying again", exc)
                        await asyncio.sleep(self._backoff(failures))
                    except Exception:
                        failures += 1
                        log.exception("uplink: unexpected failure; trying again")
                        await asyncio.sleep(self._backoff(failures))
            finally:
                if self._marking is not None:
                    # the last answer's marks are already with the outbox's writer: let them land
                    marking = self._marking
                    await asyncio.wait([marking], timeout=10)
                    if marking.done() and not marking.cancelled() and marking.exception() is not None:
                        log.warning("uplink: delivery marks failed as it stopped: %s", marking.exception())

    async def _set_up(self) -> ssl.SSLContext | None:
        """The TLS context and seal key; a bad file is logged and tried again every `auth_retry_s`."""
        while True:
            try:
                context = self._ssl_context()
                self._seal_key = self._load_seal_key(context)
            except UplinkSetupError as exc:
                log.error("uplink: %s; push paused, trying again in %.0f s", exc, self.auth_retry_s)
                await asyncio.sleep(self.auth_retry_s)
            else:
                return context

    async def _cycle(self, session: aiohttp.ClientSession) -> None:
        """Deliver the in-flight batch if there is one, else the next; wait when nothing is pending."""
        await self._settle()
        batch = await self._restore_inflight()
        if batch is None:
            self._wake.clear()
            batch = await self._fresh_batch()
        if batch is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.idle_poll_s)
            return
        await self._deliver(session, batch)

    def _backoff(self, attempt: int) -> float:
        return full_jitter(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)

    # -- building batches ------------------------------------------------------------------------

    async def _fresh_batch(self, exclude: frozenset[int] = frozenset()) -> _Batch | None:
        """The next batch from the queue, leaving out the seqs `exclude` (a batch still waiting for its
        answer, delivery marks still being written)."""
        rows = await self.outbox.next_batch(self.batch_max, exclude=exclude)
        if not rows:
            return None
        return await self._build(rows)

    async def _restore_inflight(self) -> _Batch | None:
        """The batch in flight when the hub last stopped, as it was sent, minus what is delivered."""
        saved = await self.outbox.kv_get(INFLIGHT_KEY)
        if saved is None:
            return None
        try:
            state = json.loads(saved)
            batch_id, sent_at, ids = str(state["batch_id"]), str(state["sent_at"]), list(state["ids"])
        except (ValueError, KeyError, TypeError):
            log.error("uplink: unreadable in-flight batch in the outbox; starting afresh")
            await self.outbox.kv_set(INFLIGHT_KEY, None)
            return None
        batch = await self._refresh(_Batch(batch_id, sent_at, [str(i) for i in ids], b""), force_build=True)
        if batch is None:
            await self.outbox.kv_set(INFLIGHT_KEY, None)
        else:
            log.info("uplink: resending in-flight batch %s (%d records)", batch.batch_id, len(batch.ids))
        return batch

    async def _refresh(self, batch: _Batch, *, force_build: bool = False) -> _Batch | None:
        """The batch with only its still-pending records; a new id if that changed its content."""
        rows = await self.outbox.pending_by_ids(batch.ids)
        if not rows:
            return None
        if len(rows) == len(batch.ids) and not force_build:
            return batch
        if len(rows) == len(batch.ids):
            return await self._build(rows, batch.batch_id, batch.sent_at)
        log.info(
            "uplink: %d of batch %s delivered meanwhile (pull); sending the rest as a new batch",
            len(batch.ids) - len(rows),
            batch.batch_id,
        )
        return await self._build(rows)

    async def _build(
        self,
        rows: list[PendingRecord],
        batch_id: str | None = None,
        sent_at: str | None = None,
    ) -> _Batch | None:
        """One request from stored rows, their JSON text sent as it is (`wire.stored_batch_body`).

        Rows beyond `central.batch_max_bytes` of record JSON are left for the next batch (one row
        always goes). Only a row with a sealed identity to add is decoded; the gzip runs in a
        worker thread, beside the network wait of the batch in flight.
        """
        texts: list[str] = []
        ids: list[str] = []
        seqs: list[int] = []
        size = 0
        for row in rows:
            text = row.body
            if row.sealed and self._seal_key is not None:
                text = self._with_identity(row)
            size += len(text.encode("utf-8")) + 1
            if texts and size > self.batch_max_bytes:
                break
            texts.append(text)
            ids.append(row.id)
            seqs.append(row.seq)
        if not texts:
            return None
        if len(ids) != len(rows):
            batch_id = sent_at = None
        batch_id = batch_id or new_record_id()
        sent_at = sent_at or wire.format_timestamp(datetime.now(UTC))
        node_id = self.config.node.id
        body = await asyncio.to_thread(wire.stored_batch_body, node_id, batch_id, sent_at, texts)
        return _Batch(batch_id, sent_at, ids, body, seqs)

    def _with_identity(self, row: PendingRecord) -> str:
        """The row's text with its sealed identity opened into `data.national`, for this request only."""
        assert row.sealed is not None
        try:
            raw = json.loads(row.body)
        except ValueError:
            return row.body
        if isinstance(raw, dict):
            self._add_identity(raw, row.sealed)
        return json.dumps(raw, ensure_ascii=False, separators=(",", ":"))

    def _add_identity(self, raw: dict[str, Any], sealed: str) -> None:
        """Open the sealed identity into `data.national` of this in-memory copy only."""
        assert self._seal_key is not None
        data = raw.get("data")
        national = data.get("national") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(national, dict):
            return
        try:
            fields = SealedIdentity.unseal(sealed, self._seal_key).national_fields()
        except UnsealError as exc:
            log.warning("uplink: record %s sent without its identity fields: %s", raw.get("id"), exc)
            return
        data["national"] = {**national, **rename_fields(fields, self.config.national.fields)}

    # -- delivering ------------------------------------------------------------------------------

    async def _deliver(self, session: aiohttp.ClientSession, first: _Batch) -> None:
        """Send batches until the queue is empty, splitting one where the platform refuses it whole.

        While a batch is out, the next one is read and encoded (CPU beside the network wait). In a
        steady drain the next batch's in-flight record is committed first and the answer's delivery
        marks are committed while that batch is out (`_apply`), so that neither the marks nor the
        next batch's gzip wait on the platform, nor the platform on them.
        """
        work = [first]
        persisted: set[str] = set()
        tidy = False
        while work:
            queued = work.pop()
            if queued.batch_id not in persisted:
                await self.outbox.kv_set(INFLIGHT_KEY, queued.inflight_json())
            tidy = False
            prefetch = None
            if not work:
                prefetch = asyncio.create_task(
                    self._fresh_batch(frozenset(queued.seqs) | self._unmarked), name="uplink-prefetch"
                )
            try:
                result, batch, tries = await self._send_until_answered(session, queued)
                follow = await prefetch if prefetch is not None and tries == 1 else None
            finally:
                if prefetch is not None:
                    _discard(prefetch)
            if batch is None:
                if follow is not None:
                    work.append(follow)
                continue
            if result.kind is _Kind.ANSWERED and result.answer is not None:
                left_out = _left_out(batch, result.answer)
                if left_out:
                    follow = None  # the left-out records go first, once the backoff has passed
                elif follow is None and not work:
                    follow = await self._fresh_batch(frozenset(batch.seqs) | self._unmarked)
                await self._apply(batch, result.answer, follow)
                if left_out:
                    await self._back_off_incomplete(batch, left_out)
                else:
                    self._incomplete = 0
                if follow is not None:
                    work.append(follow)
                    persisted.add(follow.batch_id)
                tidy = follow is None
            elif len(batch.ids) == 1:
                reason = f"refused by the platform ({result.status}): {result.message}"
                log.warning("uplink: record %s dead-lettered: %s", batch.ids[0], reason)
                await self.outbox.dead_letter(batch.ids[0], reason)
            else:
                log.warning(
                    "uplink: batch %s of %d refused whole (%s: %s); splitting it",
                    batch.batch_id,
                    len(batch.ids),
                    result.status,
                    result.message,
                )
                work.extend(reversed(await self._halves(batch)))
        await self._settle()
        if not tidy:
            await self.outbox.kv_set(INFLIGHT_KEY, None)

    async def _halves(self, batch: _Batch) -> list[_Batch]:
        middle = len(batch.ids) // 2
        halves = []
        for part in (batch.ids[:middle], batch.ids[middle:]):
            half = await self._build(await self.outbox.pending_by_ids(part))
            if half is not None:
                halves.append(half)
        return halves

    async def _send_until_answered(
        self, session: aiohttp.ClientSession, batch: _Batch
    ) -> tuple[_Result, _Batch | None, int]:
        """POST until 200 or a whole-batch refusal: (result, the batch as last sent or None if moot,
        how many requests it took)."""
        attempt = tries = 0
        current: _Batch | None = batch
        while current is not None:
            attempt += 1
            tries += 1
            result = await self._post(session, current)
            if result.kind in (_Kind.ANSWERED, _Kind.REFUSED):
                return result, current, tries
            if result.kind is _Kind.UNAUTHORIZED:
                if self._token() != result.token:
                    log.info("uplink: the token changed since that request; trying it now")
                    continue
                await self._pause_unauthorized(result)
                attempt = 0
            else:
                if result.kind is _Kind.REDIRECTED:
                    await self._note_redirect(result)
                self.metrics.sync.labels(result="failed").inc()
                # Retry-After is a floor, never a way to hammer: `Retry-After: 0` gets the backoff.
                delay = min(self.backoff_max_s, max(result.retry_after_s or 0.0, self._backoff(attempt)))
                log.warning(
                    "uplink: batch %s not delivered (%s); retry %d in %.1f s",
                    current.batch_id,
                    result.message,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
            refreshed = await self._refresh(current)
            if refreshed is not None and refreshed.batch_id != current.batch_id:
                await self.outbox.kv_set(INFLIGHT_KEY, refreshed.inflight_json())
            current = refreshed
        return _Result(_Kind.RETRY), None, tries

    async def _post(self, session: aiohttp.ClientSession, batch: _Batch) -> _Result:
        """One request to `central.url` itself: a redirect is reported, never followed (CONTRACTS §10)."""
        token = self._token()
        headers = wire.batch_headers(token, batch.batch_id)
        try:
            async with session.post(
                self.url, data=batch.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                raw = await _read_bounded(response.content, MAX_ANSWER_BYTES)
                if raw is None:
                    return _Result(
                        _Kind.RETRY, status, message=f"answer larger than {MAX_ANSWER_BYTES} bytes, not read"
                    )
                text = raw.decode("utf-8", errors="replace")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                location = _printable(response.headers.get("Location", ""))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return _Result(_Kind.RETRY, message=detail)
        message = _error_message(text)
        if status == 200:
            try:
                return _Result(_Kind.ANSWERED, status, answer=wire.decode_answer(text))
            except ValueError as exc:
                return _Result(_Kind.RETRY, status, message=f"unreadable answer: {exc}")
        if status in AUTH_STATUSES:
            return _Result(_Kind.UNAUTHORIZED, status, message=message, token=token)
        if 300 <= status < 400:
            where = location or "(no Location)"
            return _Result(
                _Kind.REDIRECTED, status, message=f"HTTP {status} redirect to {where}", location=location
            )
        if status in SPLIT_STATUSES:
            self.metrics.sync.labels(result="refused").inc()
            return _Result(_Kind.REFUSED, status, message=message)
        if status not in (408, 429) and status < 500:
            log.error("uplink: unexpected HTTP %d from %s: %s", status, self.url, message)
        return _Result(_Kind.RETRY, status, message=f"HTTP {status}: {message}", retry_after_s=retry_after)

    async def _apply(self, batch: _Batch, answer: wire.BatchAnswer, follow: _Batch | None) -> None:
        """Record the platform's answer (delivered, dead letters) and the next batch's in-flight record.

        An answer that delivers the whole batch, with a next batch to send, is the steady drain: the
        next batch's in-flight record is committed now, before that batch goes, and the delivery
        marks in the background while it is out (`_settle` waits for them). Until they land, their
        ids are left out of every batch read (`_unmarked`); a crash in between only sends those
        records once more, and the platform answers them as duplicates. Any other answer is
        recorded in one group commit with the in-flight record.
        """
        await self._settle()
        sent = set(batch.ids)
        delivered = [i for i in (*answer.accepted, *answer.duplicate) if i in sent]
        rejected = [r for r in answer.rejected if r.id in sent]
        for reject in rejected:
            log.warning("uplink: record %s rejected by the platform: %s", reject.id, reject.error)
        if follow is not None and not rejected and len(set(delivered)) == len(sent):
            await self.outbox.kv_set(INFLIGHT_KEY, follow.inflight_json())
            self._unmarked = frozenset(batch.seqs)
            marks = self._record(batch.seqs, [], follow, with_inflight=False)
            self._marking = asyncio.create_task(marks, name="uplink-marks")
            return
        await self._record(batch.seqs_of(delivered), rejected, follow, with_inflight=True)

    async def _record(
        self,
        delivered: list[int],
        rejected: list[wire.Rejection],
        follow: _Batch | None,
        *,
        with_inflight: bool,
    ) -> None:
        """Commit delivered marks, dead letters and, `with_inflight`, the next batch's in-flight record
        (or its absence) in one group commit; then the sync time, metrics, the end of an episode."""
        writes: list[Coroutine[Any, Any, object]] = [
            self.outbox.dead_letter(r.id, f"rejected by the platform: {r.error}") for r in rejected
        ]
        if with_inflight:
            writes.append(self.outbox.kv_set(INFLIGHT_KEY, follow.inflight_json() if follow else None))
        # Queued in one loop tick, these land in the writer's same transaction.
        marked, _ = await asyncio.gather(
            self.outbox.mark_delivered_seqs(delivered, via="push"), asyncio.gather(*writes)
        )
        self.metrics.records_delivered.labels(via="push").inc(marked)
        self.metrics.sync.labels(result="ok").inc()
        self.metrics.last_sync.set(time.time())
        self.sync.last_sync = utc_now()
        for key, what in (
            (UNAUTHORIZED_KEY, "the platform accepts the token again"),
            (REDIRECTED_KEY, "the platform answers without a redirect again"),
        ):
            if await self._in_episode(key):
                self._episodes[key] = False
                await self.outbox.kv_set(key, None)
                log.warning("uplink: %s; pushing resumed", what)

    async def _settle(self) -> None:
        """Wait for the background delivery marks of the previous answer, if any (their error too).

        Shielded: the uplink cancelled meanwhile (the hub stopping) must not cancel the marks half
        way, after their commit and before their count (`run` waits for them as it ends).
        """
        marking = self._marking
        if marking is None:
            return
        try:
            await asyncio.shield(marking)
        finally:
            if marking.done():
                self._marking = None
                self._unmarked = frozenset()

    async def _back_off_incomplete(self, batch: _Batch, left_out: list[str]) -> None:
        """Wait the failure backoff before the left-out records go again, so a platform that keeps
        leaving records out never draws a tight loop (CONTRACTS §10)."""
        self._incomplete += 1
        delay = self._backoff(self._incomplete)
        log.warning(
            "uplink: the answer to batch %s left out %d of its %d records; "
            "they stay queued, retry %d in %.1f s",
            batch.batch_id,
            len(left_out),
            len(batch.ids),
            self._incomplete,
            delay,
        )
        await asyncio.sleep(delay)

    # -- episodes: 401/403 and 3xx ---------------------------------------------------------------

    async def _in_episode(self, key: str) -> bool:
        """Whether the episode kept under `key` in the outbox's kv table is open (read once, then cached)."""
        if key not in self._episodes:
            self._episodes[key] = await self.outbox.kv_get(key) is not None
        return self._episodes[key]

    async def _note_redirect(self, result: _Result) -> None:
        """Raise the node alert and log one ERROR at the start of a redirect episode; later 3xx answers
        only get the ordinary retry warning."""
        if await self._in_episode(REDIRECTED_KEY):
            return
        alert = Record(
            kind=Kind.ALERT,
            data={
                "type": "uplink_redirected",
                "status": result.status,
                "location": result.location,
                "url": self.url,
                "node_id": self.config.node.id,
            },
        )
        await self.outbox.store([alert])
        episode = json.dumps({"status": result.status, "location": result.location, "since": utc_now()})
        await self.outbox.kv_set(REDIRECTED_KEY, episode)
        self._episodes[REDIRECTED_KEY] = True
        log.error(
            "uplink: the platform answered %s redirecting to %s; redirects are never followed, so nothing "
            "is delivered until %s answers itself: check central.url; retrying with backoff",
            result.status,
            result.location or "(no Location)",
            self.url,
        )

    async def _pause_unauthorized(self, result: _Result) -> None:
        """Raise the node alert once per episode, then wait `auth_retry_s` before trying again."""
        self.metrics.sync.labels(result="unauthorized").inc()
        if not await self._in_episode(UNAUTHORIZED_KEY):
            alert = Record(
                kind=Kind.ALERT,
                data={
                    "type": "uplink_unauthorized",
                    "status": result.status,
                    "error": result.message,
                    "url": self.url,
                    "node_id": self.config.node.id,
                    "retry_every_s": self.auth_retry_s,
                },
            )
            await self.outbox.store([alert])
            episode = json.dumps({"status": result.status, "since": utc_now()})
            await self.outbox.kv_set(UNAUTHORIZED_KEY, episode)
            self._episodes[UNAUTHORIZED_KEY] = True
        where = (
            f"central.token_file {self.config.central.token_file}"
            if self.config.central.token_file
            else "central.token"
        )
        log.error(
            "uplink: the platform answered %s (%s): push paused; fix %s, next try in %.0f s",
            result.status,
            result.message,
            where,
            self.auth_retry_s,
        )
        await asyncio.sleep(self.auth_retry_s)


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body if it is at most `limit` bytes, else None (the rest is left unread)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _discard(task: asyncio.Task[Any]) -> None:
    """Cancel a task whose result is not wanted, or consume its failure so none goes unreported."""
    if not task.done():
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        log.debug("uplink: unused prefetch failed: %s", task.exception())


def _left_out(batch: _Batch, answer: wire.BatchAnswer) -> list[str]:
    """Ids of the batch that the answer neither accepts, calls duplicate, nor rejects."""
    named = {*answer.accepted, *answer.duplicate, *(r.id for r in answer.rejected)}
    return [record_id for record_id in batch.ids if record_id not in named]


def _printable(text: str) -> str:
    """A header value fit for a log line and an alert: bounded, control characters replaced."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:_MAX_MESSAGE])


def _error_message(text: str) -> str:
    """The `error` of a JSON error body, else the start of the body."""
    with contextlib.suppress(ValueError):
        document = json.loads(text)
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            return str(document["error"])[:_MAX_MESSAGE]
    return text.strip()[:_MAX_MESSAGE] or "(empty body)"
