"""`hallhub central`: the reference central receiver on this machine (CONTRACTS §6, §8).

It serves until Ctrl-C or SIGTERM, then closes its database cleanly. The receiver itself lives in
`sync.receiver` and is imported only when the command runs, so that `hallhub --help` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING, Annotated, Final

import typer
from rich.console import Console

from hub.privacy.redact import redact_text, redact_url

if TYPE_CHECKING:
    from sync.receiver import RunningReceiver

__all__ = ["central_command"]

DEFAULT_LISTEN: Final = "127.0.0.1:8781"
TOKEN_ENV: Final = "HALLHUB_CENTRAL_TOKEN"  # noqa: S105 (the name of a variable, not a secret)

_console = Console()
_err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    """Print the error (redacted: a database error may quote the URL with its password); exit 1."""
    _err.print(f"[red]error[/] {redact_text(message)}", highlight=False)
    return typer.Exit(1)


def central_command(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="Where to store: sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db.",
        ),
    ],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"The bearer token every request must carry (or set {TOKEN_ENV}).",
            show_default=False,
        ),
    ],
    listen: Annotated[
        str, typer.Option(help="host:port to listen on ([::1]:port for IPv6; port 0 picks a free one).")
    ] = DEFAULT_LISTEN,
    table: Annotated[str, typer.Option(help="Table name (created if missing).")] = "hallhub_records",
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
    from sync.receiver import StoreUnavailableError, run_receiver  # noqa: PLC0415 (keeps --help fast)

    if not token.strip():
        raise _fail(f"--token must not be empty (or set {TOKEN_ENV})")

    def ready(running: RunningReceiver) -> None:
        _console.print(f"central receiver listening on [bold]{running.url}[/]", highlight=False)
        _console.print(f"storing in {redact_url(db)} (table {table}); Ctrl-C to stop", highlight=False)

    async def serve() -> None:
        task = asyncio.create_task(
            run_receiver(
                listen,
                db,
                token.strip(),
                table=table,
                fail_rate=fail_rate,
                slow_ms=slow_ms,
                reject_kind=reject_kind or (),
                refuse_ids=refuse_id or (),
                commit_then_drop=commit_then_drop,
                seed=seed,
                retry_after_s=retry_after,
                on_ready=ready,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        asyncio.run(serve())
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except StoreUnavailableError as exc:
        raise _fail(f"cannot open the database {redact_url(db)}: {exc}") from None
    except OSError as exc:
        raise _fail(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    _console.print("central receiver stopped")
