"""`open_store`: the store for a database URL."""

from __future__ import annotations

from drivers.registry import MissingExtra
from sync.receiver._sqlite import SqliteStore
from sync.receiver._store import DEFAULT_POOL_SIZE, DEFAULT_TABLE, Store, check_table

__all__ = ["open_store"]


def open_store(db_url: str, table: str = DEFAULT_TABLE, *, pool_size: int = DEFAULT_POOL_SIZE) -> Store:
    """A store for `sqlite:///relative.db`, `sqlite:////absolute.db` or `postgresql://…`.

    `pool_size` is the most PostgreSQL connections this process opens (SQLite has one). PostgreSQL
    support (psycopg, the `postgres` extra) is imported only for a PostgreSQL URL, so that a core
    install serves SQLite; without the extra the error names it and the command that installs it.
    """
    check_table(table)
    if db_url.startswith("sqlite:///"):
        path = db_url.removeprefix("sqlite:///")
        if not path:
            raise ValueError("a sqlite URL needs a file path: sqlite:///path/to/central.db")
        return SqliteStore(path, table)
    if db_url.startswith(("postgresql://", "postgres://")):
        try:
            from sync.receiver._postgres import PostgresStore  # noqa: PLC0415 (the postgres extra)
        except ImportError as exc:
            missing = MissingExtra("postgres", ("psycopg", "psycopg-pool"))
            raise ValueError(f"a postgresql:// database {missing.advice()}") from exc
        return PostgresStore(db_url, table, pool_size=pool_size)
    raise ValueError(f"database URL {db_url!r} is not supported: use sqlite:///path.db or postgresql://…")
