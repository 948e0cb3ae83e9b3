"""Opening the outbox file and migrating its schema by `PRAGMA user_version`."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path


class SchemaError(Exception):
    """The file was written by a newer hallhub, or a migration failed: refuse rather than guess."""


def _load_migrations() -> list[str]:
    folder = resources.files("hub") / "schema"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


# MIGRATIONS[n] brings a store from version n to n + 1.
MIGRATIONS: list[str] = _load_migrations()
SCHEMA_VERSION = len(MIGRATIONS)


def open_connection(path: Path) -> sqlite3.Connection:
    """A writer connection: WAL, `synchronous=FULL` (durable at COMMIT), autocommit off by hand."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error:
        conn.close()  # a file that is not a database must not stay open (it is moved aside next)
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's `user_version`."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: list[str] | None = None) -> int:
    """Apply every missing migration, each in its own transaction; return the new version."""
    steps = MIGRATIONS if migrations is None else migrations
    current = schema_version(conn)
    if current > len(steps):
        raise SchemaError(
            f"the outbox was written by a newer hallhub (schema {current}, this one knows "
            f"{len(steps)}): upgrade hallhub, or move the file aside to start fresh"
        )
    for version in range(current, len(steps)):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(steps[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise SchemaError(f"migration to schema {version + 1} failed: {exc}") from exc
    return len(steps)


def _statements(script: str) -> list[str]:
    """Split a migration file into statements; a trigger's body (BEGIN ... END) stays one statement."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    statements: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements
