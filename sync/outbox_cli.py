"""`hallhub outbox`: look into the outbox file directly, so that it works while the hub is stopped.

Reads go through a read-only SQLite connection (WAL readers never block the hub's writer). The one
write, putting dead letters back in the queue, is a short `BEGIN IMMEDIATE` transaction with a busy
timeout: SQLite's own lock serialises it with the hub's writer if the hub is running, and the hub's
uplink picks the records up at its next look at the queue.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Final

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hub.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from hub.store.outbox import DEAD, DELIVERED, PENDING, pending_by_kind

__all__ = [
    "DeadLetter",
    "OutboxFileError",
    "OutboxSummary",
    "count_pending",
    "export_pending",
    "outbox_app",
    "read_summary",
    "retry_dead_letters",
]

BUSY_TIMEOUT_MS: Final = 10_000
EXPORT_CHUNK: Final = 2000
KINDS: Final = ("evaluation", "alert", "scan", "card", "print", "device_status")


class OutboxFileError(Exception):
    """The outbox file is missing, unreadable, locked for too long, or not a hallhub outbox."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the platform refused, with its reason."""

    id: str
    seq: int
    kind: str
    reason: str
    failed_at: str


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """What `hallhub outbox` shows: the queue, its oldest record, the dead letters, the uplink."""

    path: Path
    pending_by_kind: dict[str, int]
    oldest_pending_at: str | None
    delivered_by_via: dict[str, int]
    dead_letter_count: int
    dead_letters: list[DeadLetter]
    inflight: dict[str, Any] | None
    unauthorized: dict[str, Any] | None
    last_seq: int

    @property
    def pending(self) -> int:
        """All pending records."""
        return sum(self.pending_by_kind.values())

    def oldest_pending_age_s(self, now: datetime | None = None) -> float | None:
        """Seconds since the oldest pending record was captured, or None when nothing is pending."""
        if self.oldest_pending_at is None:
            return None
        moment = datetime.fromisoformat(self.oldest_pending_at.replace("Z", "+00:00"))
        return max(0.0, ((now or datetime.now(UTC)) - moment).total_seconds())

    def to_json(self) -> dict[str, Any]:
        """A JSON document of the summary (for `--json`)."""
        age = self.oldest_pending_age_s()
        return {
            "path": str(self.path),
            "pending": self.pending,
            "pending_by_kind": self.pending_by_kind,
            "oldest_pending_at": self.oldest_pending_at,
            "oldest_pending_age_s": None if age is None else round(age, 1),
            "delivered_by_via": self.delivered_by_via,
            "dead_letters": self.dead_letter_count,
            "recent_dead_letters": [
                {"id": d.id, "seq": d.seq, "kind": d.kind, "reason": d.reason, "failed_at": d.failed_at}
                for d in self.dead_letters
            ],
            "uplink_inflight": self.inflight,
            "uplink_unauthorized": self.unauthorized,
            "last_seq": self.last_seq,
        }


def _connect_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise OutboxFileError(
            f"{path}: no outbox file here (it is node.data_dir/outbox.db, created when the hub first runs)"
        )
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot read it: {exc}") from exc
    if not {"records", "dead_letters", "kv"} <= tables:
        conn.close()
        raise OutboxFileError(f"{path}: not a hallhub outbox (no records/dead_letters/kv tables)")
    return conn


def _kv_json(conn: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    if row is None:
        return None
    try:
        value = json.loads(row[0])
    except ValueError:
        return {"value": row[0]}
    return value if isinstance(value, dict) else {"value": value}


def _inflight(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The uplink's batch in flight (id, time, size), or None when none of its records is pending."""
    saved = _kv_json(conn, "uplink.inflight")
    ids = saved.get("ids") if saved is not None else None
    if saved is None or not isinstance(ids, list) or not ids:
        return None
    still = 0
    for start in range(0, len(ids), 500):
        chunk = [str(i) for i in ids[start : start + 500]]
        marks = ",".join("?" * len(chunk))
        still += int(
            conn.execute(
                f"SELECT count(*) FROM records WHERE state = {PENDING} AND id IN ({marks})", chunk
            ).fetchone()[0]
        )
    if not still:
        return None
    return {"batch_id": saved.get("batch_id"), "sent_at": saved.get("sent_at"), "records": len(ids)}


def read_summary(path: Path, dead_limit: int = 20) -> OutboxSummary:
    """Read the queue's state from the file, read-only, in one consistent snapshot."""
    conn = _connect_read_only(path)
    try:
        conn.execute("BEGIN")
        pending, oldest = pending_by_kind(conn)
        delivered = {
            str(via or "unknown"): int(count)
            for via, count in conn.execute(
                f"SELECT delivered_via, count(*) FROM records WHERE state = {DELIVERED}"
                " GROUP BY delivered_via"
            )
        }
        dead_count = int(conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
        dead = [
            DeadLetter(str(rid), int(seq), str(kind), str(reason), str(failed_at))
            for rid, seq, kind, reason, failed_at in conn.execute(
                "SELECT record_id, seq, kind, reason, failed_at FROM dead_letters ORDER BY seq DESC LIMIT ?",
                (dead_limit,),
            )
        ]
        inflight = _inflight(conn)
        last_seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM records").fetchone()[0])
        unauthorized = _kv_json(conn, "uplink.unauthorized")
        conn.execute("COMMIT")
        return OutboxSummary(
            path=path,
            pending_by_kind=pending,
            oldest_pending_at=oldest,
            delivered_by_via=delivered,
            dead_letter_count=dead_count,
            dead_letters=dead,
            inflight=inflight,
            unauthorized=unauthorized,
            last_seq=last_seq,
        )
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot read it: {exc}") from exc
    finally:
        conn.close()


def retry_dead_letters(path: Path, record_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Queue dead letters again (all of them when `record_ids` is None): (retried, unknown ids).

    One short write transaction; SQLite's lock makes it wait (up to 10 s) for the hub's writer.
    """
    _connect_read_only(path).close()
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot open it for writing: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if record_ids is None:
                rows = conn.execute("SELECT seq, record_id FROM dead_letters ORDER BY seq").fetchall()
                unknown: list[str] = []
            else:
                rows, unknown = [], []
                for record_id in dict.fromkeys(record_ids):
                    row = conn.execute(
                        "SELECT seq, record_id FROM dead_letters WHERE record_id = ?", (record_id,)
                    ).fetchone()
                    if row is None:
                        unknown.append(record_id)
                    else:
                        rows.append(row)
            for seq, _record_id in rows:
                conn.execute(f"UPDATE records SET state = {PENDING} WHERE seq = ? AND state = {DEAD}", (seq,))
                conn.execute("DELETE FROM dead_letters WHERE seq = ?", (seq,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise OutboxFileError(f"{path}: the outbox stayed locked for 10 s; try again") from exc
        raise OutboxFileError(f"{path}: cannot write it: {exc}") from exc
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot write it: {exc}") from exc
    finally:
        conn.close()
    return [str(record_id) for _seq, record_id in rows], unknown


def count_pending(path: Path, kind: str | None = None) -> int:
    """How many records are pending (of one kind, or all)."""
    conn = _connect_read_only(path)
    try:
        if kind is None:
            row = conn.execute(f"SELECT count(*) FROM records WHERE state = {PENDING}").fetchone()
        else:
            row = conn.execute(
                f"SELECT count(*) FROM records WHERE state = {PENDING} AND kind = ?", (kind,)
            ).fetchone()
        return int(row[0])
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot read it: {exc}") from exc
    finally:
        conn.close()


def _pending_bodies(conn: sqlite3.Connection, kind: str | None) -> Iterator[str]:
    after = 0
    while True:
        if kind is None:
            rows = conn.execute(
                f"SELECT seq, body FROM records WHERE state = {PENDING} AND seq > ? ORDER BY seq LIMIT ?",
                (after, EXPORT_CHUNK),
            ).fetchall()
        else:
            rows = conn.execute(
                f"SELECT seq, body FROM records WHERE state = {PENDING} AND kind = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (kind, after, EXPORT_CHUNK),
            ).fetchall()
        if not rows:
            return
        for _seq, body in rows:
            yield str(body)
        after = int(rows[-1][0])


def export_pending(
    path: Path,
    out: IO[str],
    kind: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write pending records (§1 wire form, oldest first) as JSON Lines; return how many.

    One read snapshot, so the file is consistent even while the hub writes. Sealed identities are
    never exported: only the record bodies are.
    """
    conn = _connect_read_only(path)
    written = 0
    try:
        conn.execute("BEGIN")
        for body in _pending_bodies(conn, kind):
            out.write(body + "\n")
            written += 1
            if progress is not None and written % 500 == 0:
                progress(500)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot read it: {exc}") from exc
    finally:
        conn.close()
    if progress is not None and written % 500:
        progress(written % 500)
    return written


# -- the commands ------------------------------------------------------------------------------

outbox_app = typer.Typer(
    help="Look into the outbox file: pending records, dead letters; retry and export. "
    "Works while the hub is stopped.",
    invoke_without_command=True,
)
_console = Console()
_err = Console(stderr=True)

_ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help=f"Node config file (TOML); {DEFAULT_CONFIG_PATH} if not given."),
]
_DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="The outbox file itself, instead of node.data_dir/outbox.db from the config."),
]


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error[/] {message}", highlight=False)
    return typer.Exit(1)


def _outbox_path(ctx: typer.Context, config: Path | None, db: Path | None) -> Path:
    """The outbox file from --db, else from the config (the group's options apply too)."""
    parent = ctx.obj if isinstance(ctx.obj, dict) else {}
    db = db or parent.get("db")
    if db is not None:
        return db
    config_path = config or parent.get("config") or DEFAULT_CONFIG_PATH
    try:
        loaded = load_config(config_path)
    except ConfigError as exc:
        for line in exc.lines():
            _err.print(f"[red]error[/] {line}", highlight=False)
        raise typer.Exit(1) from None
    return Path(loaded.node.data_dir) / "outbox.db"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _show(summary: OutboxSummary) -> None:
    _console.print(
        f"outbox [bold]{summary.path}[/] · {summary.pending} pending · "
        f"oldest {_age(summary.oldest_pending_age_s())} · {summary.dead_letter_count} dead letters · "
        f"last seq {summary.last_seq}",
        highlight=False,
    )
    pending = Table(title="pending by kind")
    pending.add_column("kind")
    pending.add_column("pending", justify="right")
    for kind, count in sorted(summary.pending_by_kind.items()):
        pending.add_row(kind, f"{count:,}")
    if not summary.pending_by_kind:
        pending.add_row("-", "0")
    _console.print(pending)
    if summary.delivered_by_via:
        delivered = ", ".join(f"{via} {count:,}" for via, count in sorted(summary.delivered_by_via.items()))
        _console.print(f"delivered and kept until pruned: {delivered}", highlight=False)
    if summary.inflight is not None:
        _console.print(
            f"uplink batch in flight: {summary.inflight.get('batch_id')} "
            f"({summary.inflight.get('records', '?')} records, sent at {summary.inflight.get('sent_at')})",
            highlight=False,
        )
    if summary.unauthorized is not None:
        _console.print(
            f"[red]push paused[/]: the platform answered {summary.unauthorized.get('status')} "
            f"since {summary.unauthorized.get('since')} (fix central.token or central.token_file)",
            highlight=False,
        )
    if summary.dead_letters:
        shown = len(summary.dead_letters)
        table = Table(title=f"dead letters (newest {shown} of {summary.dead_letter_count})")
        table.add_column("record id · reason", ratio=1, overflow="fold")
        table.add_column("kind", no_wrap=True)
        table.add_column("failed at (UTC)", no_wrap=True)
        for dead in summary.dead_letters:
            failed_at = dead.failed_at[:16].replace("T", " ")
            table.add_row(f"[bold]{dead.id}[/]\n{escape(dead.reason)}", dead.kind, failed_at)
        _console.print(table)
        _console.print("put one back in the queue with: hallhub outbox retry ID (or --all)")


@outbox_app.callback()
def outbox_main(
    ctx: typer.Context,
    config: _ConfigOption = None,
    db: _DbOption = None,
    limit: Annotated[int, typer.Option(min=0, max=10_000, help="Dead letters to list.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show pending records by kind, the oldest one's age, and dead letters with their reasons."""
    ctx.obj = {"config": config, "db": db}
    if ctx.invoked_subcommand is not None:
        return
    path = _outbox_path(ctx, config, db)
    try:
        summary = read_summary(path, limit)
    except OutboxFileError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
    else:
        _show(summary)


@outbox_app.command("retry")
def outbox_retry(
    ctx: typer.Context,
    record_ids: Annotated[
        list[str] | None, typer.Argument(help="Dead-letter record ids to queue again.")
    ] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Queue every dead letter again.")] = False,
    config: _ConfigOption = None,
    db: _DbOption = None,
) -> None:
    """Put dead letters back in the queue (after the platform or the record was fixed)."""
    if bool(record_ids) == retry_all:
        raise _fail("give one or more record ids, or --all")
    path = _outbox_path(ctx, config, db)
    try:
        retried, unknown = retry_dead_letters(path, None if retry_all else list(record_ids or []))
    except OutboxFileError as exc:
        raise _fail(str(exc)) from None
    for record_id in retried:
        _console.print(f"[green]queued again[/] {record_id}", highlight=False)
    if retry_all and not retried:
        _console.print("no dead letters")
    for record_id in unknown:
        _err.print(f"[red]error[/] {record_id}: no dead letter with this id (see `hallhub outbox`)")
    if unknown:
        raise typer.Exit(1)


@outbox_app.command("export")
def outbox_export(
    ctx: typer.Context,
    output: Annotated[Path, typer.Argument(help="The JSON Lines file to write ('-' for standard output).")],
    kind: Annotated[str | None, typer.Option(help=f"Only this kind ({', '.join(KINDS)}).")] = None,
    config: _ConfigOption = None,
    db: _DbOption = None,
) -> None:
    """Write the pending records, oldest first, one JSON record (§1 form) per line."""
    if kind is not None and kind not in KINDS:
        raise _fail(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    path = _outbox_path(ctx, config, db)
    try:
        if str(output) == "-":
            written = export_pending(path, typer.get_text_stream("stdout"), kind)
        else:
            written = _export_to_file(path, output, kind)
    except OutboxFileError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{output}: cannot write it: {exc.strerror}") from None
    _err.print(f"exported {written:,} pending records to {output}", highlight=False)


def _export_to_file(path: Path, output: Path, kind: str | None) -> int:
    total = count_pending(path, kind)
    partial = output.with_name(output.name + ".partial")
    columns = (
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_err, transient=True, disable=total < 10_000) as bar:
        task = bar.add_task("export", total=total)
        with partial.open("w", encoding="utf-8") as out:
            written = export_pending(path, out, kind, lambda n: bar.advance(task, n))
        partial.replace(output)
    return written
