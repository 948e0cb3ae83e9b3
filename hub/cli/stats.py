"""`hallhub stats`: the satisfaction figures of §14 from the node's outbox file, as a table or CSV.

It reads the file the way `hallhub outbox` does (`Outbox.attach`, read-only), so it works while
the hub runs and while it is stopped, and prints what `GET /v1/stats` answers.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hub.cli.console import make_console
from hub.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from hub.hall.stats import BY_VALUES, SatisfactionStats, StatsRequestError, parse_range
from hub.store.outbox import Outbox, StoreUnavailable
from hub.store.schema import SchemaError

CSV_COLUMNS = (
    "key",
    "total",
    "1",
    "2",
    "3",
    "4",
    "5",
    "good_rate",
    "bad",
    "callbacks",
    "callbacks_on_time",
    "rectified",
    "rectified_on_time",
    "excluded",
)


def _row(key: str, figures: dict[str, Any]) -> list[str]:
    rate = figures["good_rate"]
    return [
        key,
        str(figures["total"]),
        *(str(figures["levels"][level]) for level in "12345"),
        "" if rate is None else f"{rate:.4f}",
        *(
            str(figures[name])
            for name in (
                "bad",
                "callbacks",
                "callbacks_on_time",
                "rectified",
                "rectified_on_time",
                "excluded",
            )
        ),
    ]


async def _report(
    path: Path, timezone: str, bad_level: int, first: str, last: str, by: str
) -> dict[str, Any]:
    start, end, dimension = parse_range(first, last, by)
    outbox = Outbox.attach(path)
    await outbox.open()
    try:
        return await SatisfactionStats(outbox, timezone, bad_level).report(start, end, dimension)
    finally:
        await outbox.close()


def stats_command(
    first: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD (the node's time zone).")],
    last: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD, inclusive (at most 400 days).")],
    by: Annotated[str, typer.Option(help=f"Rows by {', '.join(BY_VALUES)}.")] = "window",
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV (for a spreadsheet) instead of a table.")
    ] = False,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Node config file (TOML).")
    ] = DEFAULT_CONFIG_PATH,
) -> None:
    """Satisfaction figures (满意率) by window, staff, item, channel or day, from the outbox file."""
    err = make_console(stderr=True, highlight=False)
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        for line in exc.lines():
            err.print(f"[red]error[/] {line}")
        raise typer.Exit(1) from None
    path = Path(loaded.node.data_dir) / "outbox.db"
    if not path.is_file():
        err.print(f"[red]error[/] {path}: no outbox file here yet (it is created when the hub first runs)")
        raise typer.Exit(1)
    try:
        report = asyncio.run(
            _report(path, loaded.national.timezone, loaded.evaluation.bad_level, first, last, by)
        )
    except StatsRequestError as exc:
        err.print(f"[red]error[/] --{exc}")
        raise typer.Exit(2) from None
    except (StoreUnavailable, SchemaError) as exc:
        err.print(f"[red]error[/] {path}: {exc}")
        raise typer.Exit(1) from None
    rows = [_row("" if row["key"] is None else row["key"], row) for row in report["rows"]]
    total = _row("(total)", report["total"])
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows([*rows, total])
        return
    table = Table(title=f"ratings {report['from']} … {report['to']} by {report['by']}")
    for column in CSV_COLUMNS:
        table.add_column(column, justify="left" if column == "key" else "right")
    for row in rows:
        table.add_row(*row)
    table.add_row(*total, style="bold")
    make_console(highlight=False).print(table)


__all__ = ["stats_command"]
