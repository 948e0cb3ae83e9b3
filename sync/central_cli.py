"""`hallhub central`: the reference central receiver, and `hallhub central pull`, the pull collector.

`hallhub central --db … --token …` serves the receiver (CONTRACTS §6, §16); `hallhub central pull
--db … --nodes FILE` pulls the nodes' records (§5, §16). Both run until Ctrl-C or SIGTERM, then
close their database cleanly (the collector frees its leases first, so another takes over at
once). Their code is imported only when a command runs, so that `hallhub --help` stays fast.
`central_command` is a command group: `hallhub`'s lazy command table loads it under that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
from rich.markup import escape

from hub.cli.console import make_console
from hub.privacy.redact import redact_text, redact_url

if TYPE_CHECKING:
    from sync.receiver import RunningReceiver

__all__ = ["central_command"]

DEFAULT_LISTEN: Final = "127.0.0.1:8781"
TOKEN_ENV: Final = "HALLHUB_CENTRAL_TOKEN"  # noqa: S105 (the name of a variable, not a secret)
_DB_HELP: Final = (
    "Where to store: sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db."
)

_console = make_console()
_err = make_console(stderr=True)

central_command = typer.Typer(
    name="central",
    help="Run the reference central receiver (--db, --token): takes the hubs' batches and upserts each "
    "record by id; on PostgreSQL run as many as you like on one database. `pull` runs the pull collector.",
    add_completion=False,
    no_args_is_help=False,
)


def _fail(message: str) -> typer.Exit:
    """Print the error (redacted: a database error may quote the URL with its password); exit 1."""
    _err.print(f"[red]error[/] {escape(redact_text(message))}", highlight=False)
    return typer.Exit(1)


def _run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run `main(stop)`; SIGINT and SIGTERM set `stop`, a second one cancels it outright."""

    async def runner() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(main(stop))
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(runner())


@central_command.callback(invoke_without_command=True)
def receiver_command(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option("--db", help=_DB_HELP, show_default=False)] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"The bearer token every request must carry (or set {TOKEN_ENV}).",
            show_default=False,
        ),
    ] = None,
    listen: Annotated[
        str, typer.Option(help="host:port to listen on ([::1]:port for IPv6; port 0 picks a free one).")
    ] = DEFAULT_LISTEN,
    table: Annotated[str, typer.Option(help="Table name (created if missing).")] = "hallhub_records",
    pool_size: Annotated[
        int, typer.Option(min=1, max=100, help="Most PostgreSQL connections this process opens.")
    ] = 8,
    fail_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of batches answered 503 or by a dropped connection."),
    ] = 0.0,
    slow_ms: Annotated[int, typer.Option(min=0, max=600_000, help="Delay before handling each batch.")] = 0,
    reject_kind: Annotated[
        list[str] | None, typer.Option(help="A record kind rejected record by record (repeatable).")
    ] = None,
    refuse_id: Annotated[
        list[str] | None,
        typer.Option(help="A record id that makes its whole batch answer 422 (repeatable)."),
    ] = None,
    commit_then_drop: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of batches committed, then their answer dropped."),
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Seed for the fault draws (repeatable runs).")] = None,
    retry_after: Annotated[
        int, typer.Option(min=0, max=3600, help="Retry-After of 503 answers, in seconds.")
    ] = 1,
) -> None:
    """Run the reference central receiver: takes the hubs' batches, upserts each record by id."""
    if ctx.invoked_subcommand is not None:
        return
    from sync.receiver import StoreUnavailableError, run_receiver  # noqa: PLC0415 (keeps --help fast)

    if not db:
        raise _fail("--db is required: sqlite:///central.db or postgresql://user@host/db")
    if not token or not token.strip():
        raise _fail(f"--token must not be empty (or set {TOKEN_ENV})")
    bearer = token.strip()

    def ready(running: RunningReceiver) -> None:
        _console.print(f"central receiver listening on [bold]{running.url}[/]", highlight=False)
        _console.print(f"storing in {redact_url(db)} (table {table}); Ctrl-C to stop", highlight=False)

    async def serve(stop: asyncio.Event) -> None:
        task = asyncio.create_task(
            run_receiver(
                listen,
                db,
                bearer,
                table=table,
                fail_rate=fail_rate,
                slow_ms=slow_ms,
                reject_kind=reject_kind or (),
                refuse_ids=refuse_id or (),
                commit_then_drop=commit_then_drop,
                seed=seed,
                retry_after_s=retry_after,
                on_ready=ready,
                pool_size=pool_size,
            )
        )
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        _run_until_signal(serve)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except StoreUnavailableError as exc:
        raise _fail(f"cannot open the database {redact_url(db)}: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    _console.print("central receiver stopped")


@central_command.command("pull")
def pull_command(
    db: Annotated[str, typer.Option("--db", help=_DB_HELP, show_default=False)],
    nodes: Annotated[
        Path,
        typer.Option(
            "--nodes",
            help="TOML file of \\[\\[node]] tables: id, url (the node's API), token or token_file "
            "(its pull token).",
            show_default=False,
        ),
    ],
    lease_s: Annotated[
        float,
        typer.Option(
            "--lease-s",
            min=2.0,
            max=3600.0,
            help="How long a node stays with this process without a renewal; a dead process's "
            "nodes are taken over after it. Renewed every third of it.",
        ),
    ] = 30.0,
    table: Annotated[
        str, typer.Option(help="Table name of the receiver (created if missing).")
    ] = "hallhub_records",
    page_size: Annotated[int, typer.Option(min=1, max=5000, help="Records per pull request.")] = 1000,
    interval_s: Annotated[
        float,
        typer.Option(min=0.1, max=3600.0, help="Wait after a node has nothing more, before asking again."),
    ] = 5.0,
    timeout_s: Annotated[
        float, typer.Option(min=1.0, max=600.0, help="Most time one request to a node may take.")
    ] = 30.0,
    max_in_flight: Annotated[
        int, typer.Option(min=1, max=10_000, help="Most requests to nodes at once, over all nodes.")
    ] = 64,
    max_backoff_s: Annotated[
        float, typer.Option(min=1.0, max=3600.0, help="Longest wait between tries of a failing node.")
    ] = 300.0,
    pool_size: Annotated[
        int, typer.Option(min=1, max=100, help="Most PostgreSQL connections this process opens.")
    ] = 4,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Pull the nodes' records into the receiver's database and ack each node after the commit."""
    from sync.collector import Collector, NodesFileError, load_nodes  # noqa: PLC0415 (keeps --help fast)
    from sync.receiver import StoreUnavailableError, open_store  # noqa: PLC0415

    level = getattr(logging, log_level.upper(), None)
    if log_level.lower() not in ("debug", "info", "warning", "error") or not isinstance(level, int):
        raise _fail(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        specs = load_nodes(nodes)
        store = open_store(db, table, pool_size=pool_size)
        collector = Collector(
            store,
            specs,
            lease_s=lease_s,
            page_size=page_size,
            interval_s=interval_s,
            timeout_s=timeout_s,
            max_in_flight=max_in_flight,
            backoff_max_s=max_backoff_s,
        )
    except (NodesFileError, ValueError) as exc:
        raise _fail(str(exc)) from None

    async def collect(stop: asyncio.Event) -> None:
        await store.open()
        try:
            _console.print(
                f"collector {collector.owner} pulling {len(specs)} nodes from {nodes} into "
                f"{redact_url(db)} (table {table}); Ctrl-C to stop",
                highlight=False,
            )
            await collector.run(stop)
        finally:
            await store.close()

    try:
        _run_until_signal(collect)
    except StoreUnavailableError as exc:
        raise _fail(f"cannot open the database {redact_url(db)}: {exc}") from None
    t = collector.totals
    _console.print(
        f"collector stopped: {t.accepted} records new, {t.duplicates} duplicate, {t.rejected} rejected, "
        f"{t.failures} failed pulls",
        highlight=False,
    )
