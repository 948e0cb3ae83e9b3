"""The durable outbox: SQLite in WAL mode with `synchronous=FULL`, written by one thread.

Every write is an operation queued to a single writer. The writer takes everything queued, runs it
in one transaction and commits once: concurrent writes share one fsync (group commit). Consecutive
store writes go through one function, `_store_run`, as one run (a single write is a run of one); if
the transaction fails, it is redone with a savepoint per write, so that the failing write fails
alone. A caller's future resolves only after COMMIT, so "stored" always means "survives kill -9 and
power loss". Reads go through a second, read-only connection and come out as typed rows.

`hub/store` is the one place with SQL for the file: the hub opens it with `Outbox(path)`, tools
beside the hub with `Outbox.attach(path)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from contract.records import Kind, Record, utc_now
from hub.store.ledger import CaseKey, CaseLedger, prune_case_ledger
from hub.store.salvage import move_aside, salvage_records
from hub.store.schema import (
    MIGRATIONS,
    SchemaError,
    check_attachable,
    migrate,
    open_attached_writer,
    open_connection,
    open_read_only,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

PENDING, DELIVERED, DEAD = 0, 1, 2
PRIORITY_ALERT, PRIORITY_NORMAL = 0, 1
MAX_BATCH_OPS = 2000
NEAR_FULL_RATIO = 0.9
# The file's size is read exactly at most once a second (three PRAGMAs a commit were ~2 % of the
# hub's CPU under load); in between it grows by this many times the bytes of each record written.
SIZE_INTERVAL_S = 1.0
SIZE_GUESS_FACTOR = 2
CLEAR_RATIO = 0.8
# How long an attached tool (`hallhub outbox retry`) waits for the hub's write transaction.
ATTACH_BUSY_TIMEOUT_S = 10.0
_ATTACHED_STORE = "an attached outbox stores no records: the hub that owns the file assigns their seqs"

# Shedding order of DESIGN guarantee 4: telemetry first; evaluations and alerts are never shed.
SHED_WHEN_NEAR_FULL = frozenset({Kind.DEVICE_STATUS})
SHED_WHEN_FULL = frozenset({Kind.DEVICE_STATUS, Kind.SCAN, Kind.PRINT, Kind.CARD})


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


@dataclass(frozen=True, slots=True)
class DedupKey:
    """A device message identity; a repeat within `window_s` (forever if None) is a duplicate."""

    device_id: str
    msg_id: str
    window_s: float | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """Committed: the records now carry their `seq`."""

    records: list[Record]


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Already stored earlier; `record_id` is the first copy's id."""

    record_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused on purpose (quota shedding); the device is told why and stops retrying."""

    reason: str


StoreResult = Stored | Duplicate | Rejected


class WriteFailed(Exception):
    """One write failed for a reason of its own (a value SQLite cannot hold, a bug); the store is
    fine and every other write of its batch was committed."""


class WriterDied(Exception):
    """The writer task ended although the outbox was not closed: nothing more can be committed."""


class StoreUnavailable(Exception):
    """The store could not commit (disk full, I/O error, closed). Nothing was stored: do not ack."""


@dataclass(slots=True)
class OutboxStats:
    """A snapshot for /v1/status, /metrics and `hallhub outbox`."""

    pending_by_kind: dict[str, int]
    oldest_pending_at: str | None
    dead_letters: int
    used_bytes: int
    max_bytes: int
    last_seq: int

    @property
    def pending(self) -> int:
        """All pending records."""
        return sum(self.pending_by_kind.values())

    def oldest_pending_age_s(self, now: datetime | None = None) -> float:
        """Seconds since the oldest pending record was captured (0 when none)."""
        if self.oldest_pending_at is None:
            return 0.0
        moment = datetime.fromisoformat(self.oldest_pending_at.replace("Z", "+00:00"))
        return max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A pending record as stored: seq, id, its §1 wire JSON as written, and its sealed identity."""

    seq: int
    id: str
    body: str
    sealed: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the platform refused, with its reason."""

    id: str
    seq: int
    kind: str
    reason: str
    failed_at: str


@dataclass(frozen=True, slots=True)
class RatingCount:
    """How many evaluations of one level a window got (None: evaluations without a window)."""

    window: str | None
    level: int
    count: int


EvaluationHook = Callable[[Record, tuple[int, ...]], bool]
"""Called in the writer transaction for each evaluation (its seq already set) with the levels of the
earlier counted ratings of its case and channel, from the case ledger (none without a case number);
it may change `record.data` and answers whether this rating counts as one of its case's ratings
(CONTRACTS §15: a `suspect` press or a `repeat` does not)."""
StoreHook = Callable[[sqlite3.Connection, list[Record]], None]
"""Runs in the writer's transaction after records are inserted: book-keeping that must change
exactly when they are committed (follow-up state, daily tallies). A failing hook is logged and
undone alone (a savepoint): it never costs a record."""
CommitListener = Callable[[list[Record]], None]


@dataclass(slots=True)
class _WriterState:
    """What the writer thread owns: its connection and the next seq."""

    conn: sqlite3.Connection
    next_seq: int
    used_bytes: int = 0
    max_bytes: int = 0
    evaluation_hook: EvaluationHook | None = None
    store_hooks: tuple[StoreHook, ...] = ()
    sized_at: float = 0.0

    @property
    def fill(self) -> float:
        return self.used_bytes / self.max_bytes if self.max_bytes else 0.0


@dataclass(slots=True)
class _Op:
    """One queued write; its future resolves once the writer's transaction has committed (or failed)."""

    future: asyncio.Future[Any] = field(init=False)


@dataclass(slots=True)
class _StoreOp(_Op):
    """Records to store (with an optional dedup key): applied by `_store_run`, one run at a time.
    `kv` entries are written in the same transaction when the records are stored (not for a
    duplicate): state that must change exactly when its record is committed (a window's state)."""

    records: list[Record]
    dedup: DedupKey | None
    kv: dict[str, str] | None = None


@dataclass(slots=True)
class _SqlOp(_Op):
    """A write given as a function of the connection (delivery marks, pruning, dead letters)."""

    action: Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Stop(_Op):
    """The last operation `close` queues: the writer ends after the batch that holds it."""


def _shed(w: _WriterState, records: list[Record]) -> Rejected | None:
    """The quota's verdict on these records (DESIGN guarantee 4): None to store them."""
    fill = w.fill
    for record in records:
        if fill >= 1.0 and record.kind in SHED_WHEN_FULL:
            return Rejected(f"outbox full ({w.used_bytes // 2**20} MB of {w.max_bytes // 2**20} MB)")
        if fill >= NEAR_FULL_RATIO and record.kind in SHED_WHEN_NEAR_FULL:
            return Rejected("outbox near full: device telemetry is shed")
    return None


INSERT_RECORD = (
    "INSERT INTO records (seq, id, kind, priority, created_at, device_id, case_no, body, sealed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_DEDUP = (
    "INSERT INTO dedup (device_id, msg_id, record_id, expires_at, created_at, expires_mono, boot_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Lists of keys and ids go to SQLite as one JSON text (`json_each`), not as `IN (?, ?, ...)`: a
# statement per list length filled sqlite3's statement cache with large statements (a 200-key
# lookup is ~60 KB prepared), which grew the hub's memory by ~8 MB under load.
_IN_JSON = "(SELECT value FROM json_each(?))"


def _json_list(values: Iterable[Any]) -> str:
    return json.dumps(list(values), ensure_ascii=False)


def _dedup_row(dedup: DedupKey, record_id: str, now: float, mono: float) -> tuple[Any, ...]:
    window = dedup.window_s
    return (
        dedup.device_id,
        dedup.msg_id,
        record_id,
        None if window is None else now + window,
        now,
        None if window is None else mono + window,
        BOOT_ID,
    )


def _case_key(record: Record) -> CaseKey | None:
    """(case_no, channel) of an evaluation with a case number: its key in the case ledger."""
    case_no = record.data.get("case_no")
    channel = record.data.get("channel")
    if record.kind is not Kind.EVALUATION or not case_no or not isinstance(channel, str):
        return None
    return (str(case_no), channel)


def _case_keys(ops: Sequence[_StoreOp]) -> set[CaseKey]:
    """The case ledger keys of the evaluations among these writes."""
    return {key for op in ops for record in op.records if (key := _case_key(record)) is not None}


def _known_dedup(conn: sqlite3.Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Record ids of the keys already stored and still inside their window; expired ones are removed."""
    known: dict[tuple[str, str], str] = {}
    expired: list[tuple[str, str]] = []
    for device_id, msg_id, record_id, expires_at, expires_mono, boot_id in conn.execute(
        "SELECT d.device_id, d.msg_id, d.record_id, d.expires_at, d.expires_mono, d.boot_id"
        " FROM json_each(?) AS k JOIN dedup AS d"
        " ON d.device_id = json_extract(k.value, '$[0]') AND d.msg_id = json_extract(k.value, '$[1]')",
        (_json_list(keys),),
    ):
        if _expired(expires_at, expires_mono, boot_id):
            expired.append((device_id, msg_id))
        else:
            known[(device_id, msg_id)] = record_id
    if expired:
        conn.executemany("DELETE FROM dedup WHERE device_id = ? AND msg_id = ?", expired)
    return known


def _prepare_records(
    w: _WriterState,
    records: list[Record],
    seq: int,
    ledger: CaseLedger | None,
    rows: list[tuple[Any, ...]],
) -> int:
    """Number the records, run the evaluation hook, encode each once and add its row; the next seq.

    The hook judges each evaluation by its case's counted ratings in `ledger`; one that counts is
    added to it, so that later writes in the same transaction see it.
    """
    for record in records:
        is_evaluation = record.kind is Kind.EVALUATION
        case_no = record.data.get("case_no") if is_evaluation else None
        record.seq = seq
        seq += 1
        if is_evaluation and w.evaluation_hook is not None:
            key = _case_key(record)
            level = record.data.get("level")
            try:
                counts = w.evaluation_hook(record, ledger.levels(key) if ledger and key else ())
            except Exception:
                log.exception("outbox: the evaluation hook failed on %s; stored without it", record.id)
                counts = False
            if counts and ledger is not None and key is not None and isinstance(level, int):
                ledger.count(key, level, record.created_at)
        record.wire_json = _dumps(record.to_wire())
        rows.append(
            (
                record.seq,
                record.id,
                str(record.kind),
                PRIORITY_ALERT if record.kind is Kind.ALERT else PRIORITY_NORMAL,
                record.created_at,
                record.data.get("device_id"),
                case_no,
                record.wire_json,
                record.sealed,
            )
        )
    return seq


def _store_run(w: _WriterState, ops: list[_StoreOp]) -> list[StoreResult]:
    """Store a run of consecutive store writes (a single write is a run of one): the one write path.

    One dedup query, one read of the cases' ledger rows and one insert per table for the whole
    run: the writer's cost per rating under load. The outcome is that of applying each write
    in turn (a repeat key within the run is a duplicate of the first). Nothing of `w` changes
    until the rows are in, so a failed run uses up no seq.
    """
    conn = w.conn
    keys = {(op.dedup.device_id, op.dedup.msg_id) for op in ops if op.dedup is not None}
    known = _known_dedup(conn, keys) if keys else {}
    ledger = CaseLedger(conn, _case_keys(ops)) if w.evaluation_hook else None
    record_rows: list[tuple[Any, ...]] = []
    dedup_rows: list[tuple[Any, ...]] = []
    kv_rows: list[tuple[str, str]] = []
    results: list[StoreResult] = []
    seq = w.next_seq
    now, mono = time.time(), time.monotonic()
    for op in ops:
        key = (op.dedup.device_id, op.dedup.msg_id) if op.dedup is not None else None
        if key is not None and key in known:
            results.append(Duplicate(record_id=known[key]))
            continue
        rejected = _shed(w, op.records)
        if rejected is not None:
            results.append(rejected)
            continue
        seq = _prepare_records(w, op.records, seq, ledger, record_rows)
        if op.dedup is not None and key is not None and op.records:
            dedup_rows.append(_dedup_row(op.dedup, op.records[0].id, now, mono))
            known[key] = op.records[0].id
        if op.kv:
            kv_rows.extend(op.kv.items())
        results.append(Stored(records=op.records))
    conn.executemany(INSERT_RECORD, record_rows)
    if dedup_rows:
        conn.executemany(INSERT_DEDUP, dedup_rows)
    if ledger is not None:
        ledger.write(conn)
    if kv_rows:
        conn.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", kv_rows)
    if w.store_hooks and record_rows:
        _run_store_hooks(w, [r for result in results if isinstance(result, Stored) for r in result.records])
    w.next_seq = seq
    w.used_bytes += SIZE_GUESS_FACTOR * sum(len(row[7]) for row in record_rows)
    return results


def _run_store_hooks(w: _WriterState, records: list[Record]) -> None:
    """Each store hook in a savepoint of its own: one that fails is undone and logged, alone."""
    conn = w.conn
    for hook in w.store_hooks:
        conn.execute("SAVEPOINT store_hook")
        try:
            hook(conn, records)
        except Exception:
            conn.execute("ROLLBACK TO store_hook")
            log.exception(
                "outbox: a store hook failed on %d records; they are stored without it", len(records)
            )
        conn.execute("RELEASE store_hook")


def _apply_run(w: _WriterState, batch: list[_Op]) -> list[Any]:
    """Apply writes in order, consecutive store writes as one run; any failure fails them all."""
    results: list[Any] = []
    run: list[_StoreOp] = []
    for op in batch:
        if isinstance(op, _StoreOp):
            run.append(op)
            continue
        if run:
            results.extend(_store_run(w, run))
            run = []
        results.append(op.action(w.conn) if isinstance(op, _SqlOp) else None)
    if run:
        results.extend(_store_run(w, run))
    return results


def _apply_each(w: _WriterState, batch: list[_Op]) -> list[Any]:
    """Apply writes one at a time, each in its own savepoint: a failing write fails alone."""
    conn = w.conn
    results: list[Any] = []
    for op in batch:
        conn.execute("SAVEPOINT op")
        try:
            results.extend(_apply_run(w, [op]))
            conn.execute("RELEASE op")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            results.append(_classify(exc))
        except Exception as exc:  # any failure of one write must fail that write alone
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            log.error("outbox: a write failed alone and was not committed: %r", exc, exc_info=exc)
            results.append(WriteFailed(f"{type(exc).__name__}: {exc}"[:500]))
    return results


@dataclass(frozen=True, slots=True)
class _Attached:
    """How an Outbox opened by `Outbox.attach` may use a file another process owns."""

    writable: bool
    busy_timeout_s: float


class Outbox:
    """The node's durable queue of records: the one owner of the outbox file and its SQL.

    The hub opens it with `Outbox(path).open()`: it creates, checks, migrates and salvages the file
    and is the only one that stores records. A tool beside it (`hallhub outbox`) uses
    `Outbox.attach(path)` and goes through the same methods.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int = 512 * 2**20,
        evaluation_hook: EvaluationHook | None = None,
        store_hooks: Sequence[StoreHook] = (),
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._evaluation_hook = evaluation_hook
        self._store_hooks = tuple(store_hooks)
        self._attached: _Attached | None = None
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._writer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")
        self._reader_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-reader")
        self._opened = False
        self._writer_task: asyncio.Task[None] | None = None
        self._state: _WriterState | None = None
        self._reader: sqlite3.Connection | None = None
        self._snapshots = 0
        self._listeners: list[CommitListener] = []
        self._closing = False
        self._alerted = False
        self._background: set[asyncio.Task[None]] = set()
        self.recovered_from: Path | None = None
        self.salvaged = 0
        self.last_commit_monotonic = time.monotonic()
        self.commits = 0
        self.failing_since: float | None = None
        self.last_failure: str | None = None
        self.failed_writes = 0
        self.writer_died: asyncio.Future[BaseException] | None = None

    @classmethod
    def attach(
        cls, path: Path | str, *, writable: bool = False, busy_timeout_s: float = ATTACH_BUSY_TIMEOUT_S
    ) -> Outbox:
        """An Outbox on a file the hub owns, for a tool that runs beside it (or while it is stopped).

        It never creates, migrates, moves aside or sheds anything and never stores records (seqs
        are the owner's); it refuses a file that is not a hallhub outbox or that a newer hallhub
        wrote. Reads use a read-only connection; with `writable`, the other writes (dead-letter
        retries, delivery marks, kv) wait up to `busy_timeout_s` for the owner's transaction and
        are committed with `synchronous=FULL`, serialised with the owner's writer by SQLite's lock.
        """
        box = cls(path, max_bytes=0)
        box._attached = _Attached(writable=writable, busy_timeout_s=busy_timeout_s)
        return box

    @property
    def last_seq(self) -> int:
        """The highest seq assigned so far (0 before the first record)."""
        return self._state.next_seq - 1 if self._state is not None else 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Check integrity, migrate, and start the writer. A corrupt file is moved aside, not lost.

        Attached (`Outbox.attach`): only check that the file is a hallhub outbox this version reads.
        Raises SchemaError for a file it must not use, StoreUnavailable for one it cannot open.
        """
        loop = asyncio.get_running_loop()
        try:
            if self._attached is None:
                await loop.run_in_executor(self._writer_pool, self._open_writer)
                await loop.run_in_executor(self._reader_pool, self._open_reader)
            else:
                await loop.run_in_executor(self._reader_pool, self._open_attached_reader)
                if self._attached.writable:
                    await loop.run_in_executor(self._writer_pool, self._open_attached_writer)
        except (OSError, sqlite3.OperationalError) as exc:
            # A data_dir that cannot be created or written: say which, not a traceback.
            await self._close_files()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = getattr(exc, "filename", None) or self.path
            raise StoreUnavailable(f"cannot open the outbox {self.path}: {reason} ({where})") from exc
        except BaseException:
            await self._close_files()
            raise
        self._opened = True
        if self._state is None:
            return
        self.writer_died = loop.create_future()
        self._writer_task = asyncio.create_task(self._run_writer(), name="outbox-writer")
        self._writer_task.add_done_callback(self._writer_ended)
        if self.recovered_from is not None:
            await self.store(
                [
                    Record(
                        kind=Kind.ALERT,
                        data={
                            "type": "store_recovered",
                            "moved_to": str(self.recovered_from),
                            "salvaged": self.salvaged,
                        },
                    )
                ]
            )

    def _open_writer(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._check_or_move_aside()
        next_seq = _next_seq(conn)
        self._state = _WriterState(
            conn=conn,
            next_seq=next_seq,
            max_bytes=self.max_bytes,
            evaluation_hook=self._evaluation_hook,
            store_hooks=self._store_hooks,
        )
        self._state.used_bytes = _used_bytes(conn)
        if self.recovered_from is not None:
            self.salvaged = salvage_records(self.recovered_from, conn)
            self._state.next_seq = _next_seq(conn)
            log.error(
                "outbox: salvaged %d pending records from %s into a fresh store",
                self.salvaged,
                self.recovered_from,
            )

    def _check_or_move_aside(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            conn = open_connection(self.path)
            result = conn.execute("PRAGMA integrity_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity_check: {result[0] if result else 'no answer'}")
            migrate(conn)
            return conn
        except SchemaError:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            # Closed before the move: a damaged file left open would stay open for the hub's life.
            if conn is not None:
                conn.close()
            moved = move_aside(self.path)
            log.error(
                "outbox: %s is damaged (%s); moved aside to %s and starting a fresh store",
                self.path,
                exc,
                moved,
            )
            self.recovered_from = moved
            conn = open_connection(self.path)
            migrate(conn)
            return conn

    def _open_reader(self) -> None:
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA query_only = ON")

    def _open_attached_reader(self) -> None:
        assert self._attached is not None
        try:
            conn = open_read_only(self.path, self._attached.busy_timeout_s)
            try:
                check_attachable(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot read it: {exc}") from exc
        self._reader = conn

    def _open_attached_writer(self) -> None:
        assert self._attached is not None
        try:
            conn = open_attached_writer(self.path, self._attached.busy_timeout_s)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open it for writing: {exc}") from exc
        self._state = _WriterState(conn=conn, next_seq=0)

    async def close(self) -> None:
        """Stop intake, let the writer finish everything queued, and close the files."""
        if not self._opened:
            return
        self._opened = False
        self._closing = True
        if self._writer_task is not None:
            stop = _Stop()
            stop.future = asyncio.get_running_loop().create_future()
            if not self._writer_task.done():
                self._queue.put_nowait(stop)
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer_task
            self._writer_task = None
        await self._close_files()

    async def _close_files(self) -> None:
        """Close both connections (those that were opened) and end the two threads."""
        loop = asyncio.get_running_loop()
        if self._state is not None:
            await loop.run_in_executor(self._writer_pool, self._state.conn.close)
        if self._reader is not None:
            await loop.run_in_executor(self._reader_pool, self._reader.close)
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)

    def add_listener(self, listener: CommitListener) -> None:
        """Call `listener(records)` on the event loop after each commit that stored records."""
        self._listeners.append(listener)

    # -- writer --------------------------------------------------------------------------------

    async def _submit(self, op: _Op) -> Any:
        if self._closing or self._writer_task is None:
            raise StoreUnavailable(self._refusal())
        op.future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(op)
        return await op.future

    def _refusal(self) -> str:
        """Why a write cannot be queued now."""
        if self._attached is not None and not self._attached.writable and self._opened:
            return "outbox attached read-only"
        return "outbox is closed"

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """A writer that ends without `close` is fatal: say why, fail what waits, tell the hub."""
        if self._closing:
            return
        error: BaseException = (
            WriterDied("the outbox writer was cancelled")
            if task.cancelled()
            else task.exception() or WriterDied("the outbox writer returned")
        )
        log.critical("outbox: the writer stopped; nothing more can be stored: %r", error, exc_info=error)
        self._closing = True
        while not self._queue.empty():
            op = self._queue.get_nowait()
            if not op.future.done():
                op.future.set_exception(StoreUnavailable(f"outbox writer stopped: {error!r}"))
        if self.writer_died is not None and not self.writer_died.done():
            self.writer_died.set_result(error)

    async def _run_writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH_OPS and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stop = any(isinstance(op, _Stop) for op in batch)
            try:
                results = await loop.run_in_executor(self._writer_pool, self._apply_batch, batch)
                self._settle(batch, results)
            except Exception as exc:  # the writer outlives anything one batch does
                log.error("outbox: a batch of %d writes failed: %r", len(batch), exc, exc_info=exc)
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(WriteFailed(f"{type(exc).__name__}: {exc}"[:500]))
            if stop:
                return
            self._check_quota()

    def _settle(self, batch: list[_Op], results: list[Any]) -> None:
        """Resolve each write's future with its result and tell the listeners what was stored."""
        stored: list[Record] = []
        for op, result in zip(batch, results, strict=True):
            if op.future.done():
                continue
            if isinstance(result, BaseException):
                op.future.set_exception(result)
            else:
                op.future.set_result(result)
                if isinstance(result, Stored):
                    stored.extend(result.records)
        self.last_commit_monotonic = time.monotonic()
        if self.failing_since is not None and not any(isinstance(r, StoreUnavailable) for r in results):
            self._recovered(self.failing_since, self.last_failure or "")
        if stored:
            for listener in self._listeners:
                try:
                    listener(stored)
                except Exception:
                    log.exception("outbox: a commit listener failed")

    def _apply_batch(self, batch: list[_Op]) -> list[Any]:
        assert self._state is not None
        w = self._state
        conn = w.conn
        results: list[Any] = []
        next_seq = w.next_seq
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = _apply_run(w, batch)
            except Exception as exc:  # retried one by one below, where each fails alone
                # Redo the batch with a savepoint per write, so that only the failing write fails.
                log.warning(
                    "outbox: a batch of %d writes failed (%s); retrying them one by one", len(batch), exc
                )
                conn.execute("ROLLBACK")
                w.next_seq = next_seq
                w.used_bytes = _used_bytes(conn)
                conn.execute("BEGIN IMMEDIATE")
                results = _apply_each(w, batch)
            conn.execute("COMMIT")
            self.commits += 1
            self.failed_writes += sum(isinstance(result, WriteFailed) for result in results)
        except Exception as exc:  # the writer thread must outlive any failure
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            w.next_seq = next_seq
            error = _classify(exc)
            self.last_failure = str(error)
            if self.failing_since is None:
                self.failing_since = time.time()
            log.error("outbox: commit failed, %d writes not stored: %s", len(batch), exc)
            return [error] * len(batch)
        now = time.monotonic()
        if now - w.sized_at >= SIZE_INTERVAL_S or w.fill >= NEAR_FULL_RATIO * 0.95:
            with contextlib.suppress(sqlite3.Error):
                w.used_bytes = _used_bytes(conn)
                w.sized_at = now
        return results

    def _check_quota(self) -> None:
        """Raise an alert and shed telemetry when near the quota; clear it when space returns."""
        assert self._state is not None
        fill = self._state.fill
        if fill >= NEAR_FULL_RATIO and not self._alerted:
            self._alerted = True
            log.error(
                "outbox: %.0f%% of its %d MB quota used; shedding telemetry",
                fill * 100,
                self.max_bytes // 2**20,
            )
            self._spawn(self._raise_quota_alert("raised", fill))
        elif fill < CLEAR_RATIO and self._alerted:
            self._alerted = False
            self._spawn(self._raise_quota_alert("cleared", fill))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _recovered(self, since: float, error: str) -> None:
        """Writes work again after failing (disk space returned): say so in a stored alert."""
        self.failing_since = None
        self.last_failure = None
        log.warning("outbox: writing again after failures since %s (%s)", time.ctime(since), error)
        data = {
            "type": "store_unavailable",
            "state": "cleared",
            "error": error,
            "since": datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        self._spawn(self._store_quietly([Record(kind=Kind.ALERT, data=data)]))

    async def _store_quietly(self, records: list[Record]) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store(records)

    async def _raise_quota_alert(self, state: str, fill: float) -> None:
        data = {
            "type": "outbox_near_full",
            "state": state,
            "used_bytes": self._state.used_bytes if self._state else 0,
            "max_bytes": self.max_bytes,
            "fill": round(fill, 3),
        }
        with contextlib.suppress(StoreUnavailable):
            if state == "raised":
                await self._submit(_SqlOp(action=_shed_telemetry))
            await self.store([Record(kind=Kind.ALERT, data=data)])

    # -- writes --------------------------------------------------------------------------------

    async def store(
        self,
        records: Sequence[Record],
        dedup: DedupKey | None = None,
        *,
        kv: dict[str, str] | None = None,
    ) -> StoreResult:
        """Commit records (with an optional dedup key); raise StoreUnavailable if it cannot.

        `kv` entries (as `kv_set` writes them) are committed in the same transaction, only if the
        records are stored: not for a duplicate nor for records refused by the quota."""
        if self._attached is not None:
            raise StoreUnavailable(_ATTACHED_STORE)
        result: StoreResult = await self._submit(_StoreOp(records=list(records), dedup=dedup, kv=kv))
        return result

    def store_soon(
        self, records: Sequence[Record], dedup: DedupKey | None = None
    ) -> asyncio.Future[StoreResult]:
        """`store` without a coroutine: the future resolves after the commit (or with StoreUnavailable).

        For the MQTT gateway's hot path, which answers from a callback instead of a task per message.
        """
        future: asyncio.Future[StoreResult] = asyncio.get_running_loop().create_future()
        if self._attached is not None:
            future.set_exception(StoreUnavailable(_ATTACHED_STORE))
            return future
        if self._closing or self._writer_task is None:
            future.set_exception(StoreUnavailable(self._refusal()))
            return future
        op = _StoreOp(records=list(records), dedup=dedup)
        op.future = future
        self._queue.put_nowait(op)
        return future

    async def mark_delivered(self, record_ids: Sequence[str], via: str) -> int:
        """Mark these records delivered (by `push` or `pull`); returns how many were pending."""
        return await self._mark_delivered("id", list(record_ids), via)

    async def mark_delivered_seqs(self, seqs: Sequence[int], via: str) -> int:
        """`mark_delivered` by seq, the table's key: the uplink's path, which knows each record's seq
        (no lookup in the id index: ~15 % less per record in a drain)."""
        return await self._mark_delivered("seq", list(seqs), via)

    async def _mark_delivered(self, key: Literal["id", "seq"], values: list[Any], via: str) -> int:
        now = utc_now()

        def action(conn: sqlite3.Connection) -> int:
            return conn.execute(
                f"UPDATE records SET state = {DELIVERED}, delivered_at = ?, delivered_via = ?,"
                f" sealed = NULL WHERE state = {PENDING} AND {key} IN {_IN_JSON}",
                (now, via, _json_list(values)),
            ).rowcount

        result: int = await self._submit(_SqlOp(action=action))
        return result

    async def ack_upto(self, seq: int, via: str = "pull") -> int:
        """Mark every pending record with `seq <= seq` delivered; returns how many."""
        now = utc_now()

        def action(conn: sqlite3.Connection) -> int:
            return conn.execute(
                f"UPDATE records SET state = {DELIVERED}, delivered_at = ?, delivered_via = ?,"
                f" sealed = NULL WHERE state = {PENDING} AND seq <= ?",
                (now, via, seq),
            ).rowcount

        result: int = await self._submit(_SqlOp(action=action))
        return result

    async def dead_letter(self, record_id: str, reason: str) -> bool:
        """Move a pending record to the dead-letter table with the platform's reason."""
        now = utc_now()

        def action(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                f"SELECT seq, kind FROM records WHERE id = ? AND state = {PENDING}",
                (record_id,),
            ).fetchone()
            if row is None:
                return False
            conn.execute(f"UPDATE records SET state = {DEAD}, sealed = NULL WHERE seq = ?", (row[0],))
            conn.execute(
                "INSERT OR REPLACE INTO dead_letters (seq, record_id, kind, reason, failed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (row[0], record_id, row[1], reason[:2000], now),
            )
            return True

        result: bool = await self._submit(_SqlOp(action=action))
        return result

    async def retry_dead_letters(
        self, record_ids: Sequence[str] | None = None
    ) -> tuple[list[str], list[str]]:
        """Put dead letters back in the queue, all of them when `record_ids` is None, in one commit
        (after the platform or the record was fixed): (ids queued again, ids of no dead letter)."""
        wanted = None if record_ids is None else list(dict.fromkeys(record_ids))

        def action(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows: list[tuple[int, str]] = []
            unknown: list[str] = []
            if wanted is None:
                rows = conn.execute("SELECT seq, record_id FROM dead_letters ORDER BY seq").fetchall()
            for record_id in wanted or []:
                row = conn.execute(
                    "SELECT seq, record_id FROM dead_letters WHERE record_id = ?", (record_id,)
                ).fetchone()
                if row is None:
                    unknown.append(record_id)
                else:
                    rows.append(row)
            seqs = [(seq,) for seq, _record_id in rows]
            conn.executemany(f"UPDATE records SET state = {PENDING} WHERE seq = ? AND state = {DEAD}", seqs)
            conn.executemany("DELETE FROM dead_letters WHERE seq = ?", seqs)
            return [str(record_id) for _seq, record_id in rows], unknown

        result: tuple[list[str], list[str]] = await self._submit(_SqlOp(action=action))
        return result

    async def prune(self, delivered_older_than_s: float, dedup_older_than_s: float) -> tuple[int, int]:
        """Delete delivered records and old dedup entries; dead letters are kept until handled."""
        cutoff = datetime.fromtimestamp(time.time() - delivered_older_than_s, UTC)
        cutoff_text = cutoff.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        dedup_cutoff = time.time() - dedup_older_than_s

        def action(conn: sqlite3.Connection) -> tuple[int, int]:
            records = conn.execute(
                f"DELETE FROM records WHERE state = {DELIVERED} AND delivered_at < ?",
                (cutoff_text,),
            ).rowcount
            dedup = conn.execute(
                "DELETE FROM dedup WHERE created_at < ? OR expires_at < ?",
                (dedup_cutoff, time.time()),
            ).rowcount
            return records, dedup

        result: tuple[int, int] = await self._submit(_SqlOp(action=action))
        return result

    async def prune_case_ledger(self, older_than_s: float) -> int:
        """Forget the cases last counted more than `older_than_s` ago (`national.case_history_days`):
        the only way rows leave the case ledger (CONTRACTS §15); how many were deleted."""
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        result: int = await self._submit(_SqlOp(action=lambda conn: prune_case_ledger(conn, cutoff)))
        return result

    async def kv_set(self, key: str, value: str | None) -> None:
        """Durably set (or with None, delete) a small piece of state."""

        def action(conn: sqlite3.Connection) -> None:
            if value is None:
                conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

        await self._submit(_SqlOp(action=action))

    async def ping(self) -> None:
        """Return once the writer has run an (empty) transaction: proof that it is alive."""
        await self._submit(_SqlOp(action=lambda _conn: None))

    # -- reads ---------------------------------------------------------------------------------

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run `query` on the reader connection (a snapshot beside the writer); for the book-keeping
        modules of `hub.store`, which keep their SQL to themselves."""
        result: T = await self._read(query)
        return result

    async def write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run `action` in the writer's next transaction (not for records: `store` is their one path)."""
        if self._attached is not None and not self._attached.writable:
            raise StoreUnavailable("outbox attached read-only")
        result: T = await self._submit(_SqlOp(action=action))
        return result

    async def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._reader is None or not self._opened:
            raise StoreUnavailable("outbox is not open")
        reader = self._reader
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, query, reader)

    @contextlib.asynccontextmanager
    async def read_snapshot(self) -> AsyncIterator[None]:
        """Every read inside sees the file as the first of them found it (one read transaction), so
        that a report or an export adds up while the hub writes. While it lasts every read of this
        Outbox sees that state and the WAL cannot be checkpointed past it: keep it to tools."""
        if self._snapshots == 0:
            await self._read(lambda conn: conn.execute("BEGIN"))
        self._snapshots += 1
        try:
            yield
        finally:
            self._snapshots -= 1
            if self._snapshots == 0 and self._reader is not None and self._opened:
                await self._read(lambda conn: conn.execute("COMMIT"))

    async def pending_page(
        self, after: int, limit: int, kind: str | None = None
    ) -> tuple[list[str], int, bool]:
        """Pending records with `seq > after`, oldest first: (bodies, last seq served, more)."""

        def query(conn: sqlite3.Connection) -> tuple[list[str], int, bool]:
            if kind is None:
                rows = conn.execute(
                    f"SELECT seq, body FROM records WHERE state = {PENDING} AND seq > ? ORDER BY seq LIMIT ?",
                    (after, limit + 1),
                ).fetchall()
            else:
                rows = conn.execute(
                    f"SELECT seq, body FROM records WHERE state = {PENDING} AND kind = ? AND seq > ?"
                    " ORDER BY seq LIMIT ?",
                    (kind, after, limit + 1),
                ).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            last = rows[-1][0] if rows else after
            return [body for _seq, body in rows], last, more

        result: tuple[list[str], int, bool] = await self._read(query)
        return result

    async def next_batch(self, limit: int, exclude: Collection[int] = ()) -> list[PendingRecord]:
        """Up to `limit` pending records, alerts first, then oldest first: the uplink's next batch.

        `exclude` (the seqs of the batch still in flight) is left out in SQL by seq, which the
        pending index holds: their rows are not read at all (by id, each was: ~40 % of the query).
        """
        skip = _json_list(list(exclude))

        def query(conn: sqlite3.Connection) -> list[PendingRecord]:
            rows = conn.execute(
                f"SELECT seq, id, body, sealed FROM records WHERE state = {PENDING}"
                f" AND seq NOT IN {_IN_JSON} ORDER BY priority, seq LIMIT ?",
                (skip, limit),
            ).fetchall()
            return [PendingRecord(int(seq), str(rid), str(body), sealed) for seq, rid, body, sealed in rows]

        result: list[PendingRecord] = await self._read(query)
        return result

    async def pending_by_ids(self, record_ids: Sequence[str]) -> list[PendingRecord]:
        """Those of `record_ids` still pending, alerts first, then oldest first.

        The uplink uses it to resend an in-flight batch after a restart (minus what pull delivered
        meanwhile) and to split a batch the platform refused whole.
        """
        ids = list(record_ids)

        def query(conn: sqlite3.Connection) -> list[PendingRecord]:
            rows: list[tuple[int, int, str, str, str | None]] = conn.execute(
                f"SELECT priority, seq, id, body, sealed FROM records WHERE state = {PENDING}"
                f" AND id IN {_IN_JSON}",
                (_json_list(ids),),
            ).fetchall()
            rows.sort(key=lambda row: (row[0], row[1]))
            return [PendingRecord(int(s), str(i), str(b), sealed) for _p, s, i, b, sealed in rows]

        result: list[PendingRecord] = await self._read(query)
        return result

    async def get_record(self, record_id: str) -> dict[str, Any] | None:
        """One record's wire form by id (any state), or None."""

        def query(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT body FROM records WHERE id = ?", (record_id,)).fetchone()
            return json.loads(row[0]) if row else None

        result: dict[str, Any] | None = await self._read(query)
        return result

    async def recent_records(self, kind: str, limit: int) -> list[dict[str, Any]]:
        """The newest records of a kind (any state), oldest first, in wire form."""

        def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT body FROM records WHERE kind = ? ORDER BY seq DESC LIMIT ?", (kind, limit)
            ).fetchall()
            return [json.loads(body) for (body,) in reversed(rows)]

        result: list[dict[str, Any]] = await self._read(query)
        return result

    async def kv_get(self, key: str) -> str | None:
        """Read a small piece of durable state."""

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return str(row[0]) if row else None

        result: str | None = await self._read(query)
        return result

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters with their reasons."""

        def query(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT record_id, seq, kind, reason, failed_at FROM dead_letters ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                DeadLetter(str(rid), int(seq), str(kind), str(reason), str(failed_at))
                for rid, seq, kind, reason, failed_at in rows
            ]

        result: list[DeadLetter] = await self._read(query)
        return result

    async def delivered_by_via(self) -> dict[str, int]:
        """Delivered records still kept (until pruned), by how they went: `push`, `pull`."""

        def query(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                f"SELECT delivered_via, count(*) FROM records WHERE state = {DELIVERED}"
                " GROUP BY delivered_via"
            ).fetchall()
            return {str(via or "unknown"): int(count) for via, count in rows}

        result: dict[str, int] = await self._read(query)
        return result

    async def ratings_since(self, since: str) -> list[RatingCount]:
        """Evaluations captured since `since` (RFC 3339 UTC), counted by window and level.

        It reads every evaluation still kept, so it runs on a read-only connection of its own in a
        worker thread rather than on the shared reader, where it would hold up the uplink and pull.
        Raises StoreUnavailable when the file cannot be read (a report, not a reason to fail).
        """
        if not self._opened:
            raise StoreUnavailable("outbox is not open")

        def query() -> list[RatingCount]:
            try:
                conn = open_read_only(self.path, busy_timeout_s=2.0)
                try:
                    rows = conn.execute(
                        "SELECT json_extract(body, '$.data.window'), json_extract(body, '$.data.level'),"
                        " count(*) FROM records WHERE kind = 'evaluation' AND created_at >= ?"
                        " GROUP BY 1, 2",
                        (since,),
                    ).fetchall()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot count ratings: {exc}") from exc
            return [
                RatingCount(None if window is None else str(window), int(level), int(count))
                for window, level, count in rows
                if level is not None
            ]

        return await asyncio.to_thread(query)

    async def stats(self) -> OutboxStats:
        """Pending by kind, oldest pending time, dead letters, size against quota."""

        def query(conn: sqlite3.Connection) -> OutboxStats:
            pending, oldest = pending_by_kind(conn)
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            last = conn.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
            return OutboxStats(
                pending_by_kind=pending,
                oldest_pending_at=oldest,
                dead_letters=int(dead),
                used_bytes=_used_bytes(conn),
                max_bytes=self.max_bytes,
                last_seq=int(last),
            )

        result: OutboxStats = await self._read(query)
        return result


def pending_by_kind(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    """Pending records by kind, and the capture time of the first in the queue (also used by the CLI).

    Read from the counts the schema's triggers keep, at the same cost whatever the backlog; a
    store not yet migrated (the CLI after an upgrade, before the hub has started) is counted.
    """
    try:
        counts = conn.execute("SELECT kind, n FROM pending_counts WHERE n > 0").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        counts = conn.execute(
            f"SELECT kind, count(*) FROM records WHERE state = {PENDING} GROUP BY kind"
        ).fetchall()
    first = conn.execute(
        f"SELECT created_at FROM records WHERE state = {PENDING} ORDER BY seq LIMIT 1"
    ).fetchone()
    return {str(kind): int(n) for kind, n in counts}, None if first is None else str(first[0])


def _classify(exc: Exception) -> StoreUnavailable:
    text = str(exc) if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"
    if "full" in text:
        return StoreUnavailable(f"disk full: {text}")
    return StoreUnavailable(text)


def _read_boot_id() -> str:
    """This boot's id (Linux); elsewhere a per-process id, so only the wall clock is trusted."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return f"process-{os.getpid()}-{time.time_ns()}"


BOOT_ID = _read_boot_id()


def _expired(expires_at: float | None, expires_mono: float | None, boot_id: str | None) -> bool:
    """A dedup entry's window is over: by the monotonic clock within this boot, else by the wall."""
    if expires_at is None:
        return False
    if boot_id == BOOT_ID and expires_mono is not None:
        return time.monotonic() > expires_mono
    return time.time() > expires_at


def _used_bytes(conn: sqlite3.Connection) -> int:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def _next_seq(conn: sqlite3.Connection) -> int:
    """One above every seq ever used, even if those rows were pruned since."""
    highest = conn.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
    return max(int(highest), int(row[0]) if row else 0) + 1


def _shed_telemetry(conn: sqlite3.Connection) -> int:
    """Free space by the shedding order: delivered records, then pending device telemetry."""
    freed = conn.execute(f"DELETE FROM records WHERE state = {DELIVERED}").rowcount
    freed += conn.execute(f"DELETE FROM records WHERE state = {PENDING} AND kind = 'device_status'").rowcount
    log.warning("outbox: shed %d delivered and telemetry records to stay within quota", freed)
    return int(freed)


__all__ = [
    "ATTACH_BUSY_TIMEOUT_S",
    "DEAD",
    "DELIVERED",
    "MIGRATIONS",
    "PENDING",
    "DeadLetter",
    "DedupKey",
    "Duplicate",
    "Outbox",
    "OutboxStats",
    "PendingRecord",
    "RatingCount",
    "Rejected",
    "StoreResult",
    "StoreUnavailable",
    "Stored",
    "WriteFailed",
    "WriterDied",
    "pending_by_kind",
]
