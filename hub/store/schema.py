"""Opening the outbox file and migrating its schema by `PRAGMA user_version`."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path


class SchemaError(Exception):
    """The file was written by a newer hallhub, or a migration failed: refuse rather than guess."""


def _load_migrations() -> list[str]:
    folder = resources.files("hub.store") / "migrations"
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(folder / name).read_text(encoding="utf-8") for name in names]


# MIGRATIONS[n] brings a store from version n to n + 1.
MIGRATIONS: list[str] = _load_migrations()
SCHEMA_VERSION = len(MIGRATIONS)


def _with_pragmas(conn: sqlite3.Connection, *pragmas: str) -> sqlite3.Connection:
    """Set the connection's PRAGMAs; close it if one fails (a file that is not a database must not
    stay open: it is moved aside next, or reported)."""
    try:
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def open_connection(path: Path) -> sqlite3.Connection:
    """A writer connection: WAL, `synchronous=FULL` (durable at COMMIT), autocommit off by hand."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    return _with_pragmas(
        conn, "journal_mode = WAL", "synchronous = FULL", "foreign_keys = ON", "busy_timeout = 5000"
    )


def _uri(path: Path, mode: str) -> str:
    """A `file:` URI for `path` that SQLite opens in `mode` (`ro`, `rw`): never creating the file."""
    return f"{path.resolve().as_uri()}?mode={mode}"


def open_read_only(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A read-only connection for a reader beside the writer: WAL readers never block it."""
    conn = sqlite3.connect(
        _uri(path, "ro"), uri=True, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
    )
    return _with_pragmas(conn, "query_only = ON")


def open_attached_writer(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A writer connection to an outbox another process owns: the file's WAL mode as it is, commits
    durable (`synchronous=FULL`), and waits up to `busy_timeout_s` for the owner's transaction."""
    conn = sqlite3.connect(
        _uri(path, "rw"), uri=True, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None
    )
    return _with_pragmas(
        conn, "synchronous = FULL", "foreign_keys = ON", f"busy_timeout = {int(busy_timeout_s * 1000)}"
    )


OUTBOX_TABLES = frozenset({"records", "dead_letters", "kv"})


def check_attachable(conn: sqlite3.Connection) -> None:
    """Raise SchemaError unless the file is a hallhub outbox that this version knows how to read."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables >= OUTBOX_TABLES:
        raise SchemaError("not a hallhub outbox (no records/dead_letters/kv tables)")
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise _newer(version, len(MIGRATIONS))


def _newer(version: int, known: int) -> SchemaError:
    return SchemaError(
        f"the outbox was written by a newer hallhub (schema {version}, this one knows "
        f"{known}): upgrade hallhub, or move the file aside to start fresh"
    )


def schema_version(conn: sqlite3.Connection) -> int:
    """The store's `user_version`."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: list[str] | None = None) -> int:
    """Apply every missing migration, each in its own transaction; return the new version."""
    steps = MIGRATIONS if migrations is None else migrations
    current = schema_version(conn)
    if current > len(steps):
        raise _newer(current, len(steps))
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
