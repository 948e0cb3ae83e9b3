"""`hallhub outbox`: look into the outbox file and queue dead letters again, hub running or stopped.

Everything goes through `Outbox.attach` (hub/store), the same reads and writes the hub uses, on
connections of this command's own. Reads are one read transaction on a read-only connection (WAL
readers never block the hub's writer), so a summary or an export adds up while the hub writes. The
one write, putting dead letters back in the queue, is one transaction that waits (up to 10 s) for
the hub's writer on SQLite's lock; the hub's uplink picks the records up at its next look at the
queue. Nothing here creates, migrates or repairs the file: that is the hub's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Final, TypeVar

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from contract.records import KINDS
from hub.cli.console import make_console
from hub.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from hub.store import DeadLetter, Outbox, SchemaError, StoreUnavailable, WriteFailed
from sync.uplink import INFLIGHT_KEY, UNAUTHORIZED_KEY

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

BUSY_TIMEOUT_S: Final = 10.0
EXPORT_CHUNK: Final = 2000

_T = TypeVar("_T")


class OutboxFileError(Exception):
    """The outbox file is missing, unreadable, locked for too long, or not a hallhub outbox."""


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


@contextlib.asynccontextmanager
async def _attached(path: Path, *, writable: bool = False) -> AsyncIterator[Outbox]:
    """The outbox at `path`, attached beside the hub; every failure becomes an OutboxFileError."""
    outbox = Outbox.attach(path, writable=writable, busy_timeout_s=BUSY_TIMEOUT_S)
    try:
        await outbox.open()
    except (SchemaError, StoreUnavailable) as exc:
        raise OutboxFileError(f"{path}: {exc}") from exc
    try:
        yield outbox
    except sqlite3.Error as exc:
        raise OutboxFileError(f"{path}: cannot read it: {exc}") from exc
    finally:
        await outbox.close()


def _run(path: Path, work: Coroutine[Any, Any, _T]) -> _T:
    """Run one command's work on the file at `path`, which must exist (this never creates it)."""
    if not path.is_file():
        work.close()
        raise OutboxFileError(
            f"{path}: no outbox file here (it is node.data_dir/outbox.db, created when the hub first runs)"
        )
    return asyncio.run(work)


def _kv_json(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        loaded = json.loads(value)
    except ValueError:
        return {"value": value}
    return loaded if isinstance(loaded, dict) else {"value": loaded}


async def _inflight(outbox: Outbox) -> dict[str, Any] | None:
    """The uplink's batch in flight (id, time, size), or None when none of its records is pending."""
    saved = _kv_json(await outbox.kv_get(INFLIGHT_KEY))
    ids = saved.get("ids") if saved is not None else None
    if saved is None or not isinstance(ids, list) or not ids:
        return None
    if not await outbox.pending_by_ids([str(record_id) for record_id in ids]):
        return None
    return {"batch_id": saved.get("batch_id"), "sent_at": saved.get("sent_at"), "records": len(ids)}


async def _read_summary(path: Path, dead_limit: int) -> OutboxSummary:
    async with _attached(path) as outbox, outbox.read_snapshot():
        stats = await outbox.stats()
        return OutboxSummary(
            path=path,
            pending_by_kind=stats.pending_by_kind,
            oldest_pending_at=stats.oldest_pending_at,
            delivered_by_via=await outbox.delivered_by_via(),
            dead_letter_count=stats.dead_letters,
            dead_letters=await outbox.dead_letters(dead_limit),
            inflight=await _inflight(outbox),
            unauthorized=_kv_json(await outbox.kv_get(UNAUTHORIZED_KEY)),
            last_seq=stats.last_seq,
        )


def read_summary(path: Path, dead_limit: int = 20) -> OutboxSummary:
    """Read the queue's state from the file, read-only, in one consistent snapshot."""
    return _run(path, _read_summary(path, dead_limit))


async def _retry(path: Path, record_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    async with _attached(path, writable=True) as outbox:
        try:
            return await outbox.retry_dead_letters(record_ids)
        except StoreUnavailable as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise OutboxFileError(f"{path}: the outbox stayed locked for 10 s; try again") from exc
            raise OutboxFileError(f"{path}: cannot write it: {exc}") from exc
        except WriteFailed as exc:
            raise OutboxFileError(f"{path}: cannot write it: {exc}") from exc


def retry_dead_letters(path: Path, record_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Queue dead letters again (all of them when `record_ids` is None): (retried, unknown ids).

    One short write transaction; SQLite's lock makes it wait (up to 10 s) for the hub's writer.
    """
    return _run(path, _retry(path, record_ids))


async def _count_pending(path: Path, kind: str | None) -> int:
    async with _attached(path) as outbox:
        stats = await outbox.stats()
    return stats.pending if kind is None else stats.pending_by_kind.get(kind, 0)


def count_pending(path: Path, kind: str | None = None) -> int:
    """How many records are pending (of one kind, or all)."""
    return _run(path, _count_pending(path, kind))


async def _export(path: Path, out: IO[str], kind: str | None, progress: Callable[[int], None] | None) -> int:
    written = 0
    async with _attached(path) as outbox, outbox.read_snapshot():
        after, more = 0, True
        while more:
            bodies, after, more = await outbox.pending_page(after, EXPORT_CHUNK, kind)
            for body in bodies:
                out.write(body + "\n")
                written += 1
                if progress is not None and written % 500 == 0:
                    progress(500)
    if progress is not None and written % 500:
        progress(written % 500)
    return written


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
    return _run(path, _export(path, out, kind, progress))


# -- the commands ------------------------------------------------------------------------------

outbox_app = typer.Typer(
    help="Look into the outbox file: pending records, dead letters; retry and export. "
    "Works while the hub is stopped.",
    invoke_without_command=True,
)
_console = make_console()
_err = make_console(stderr=True)

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
