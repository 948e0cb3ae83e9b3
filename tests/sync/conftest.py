"""Fixtures for sync tests: record builders, a real receiver on loopback, SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import uuid6
from psycopg import sql

from contract.wire import format_timestamp
from sync.receiver import RunningReceiver, start_receiver

TOKEN = "test-token-0123456789"
NODE = "hall-370102-01"
_PG_USERS = ("postgres", "root")
_counter = itertools.count(1)


def record(kind: str = "evaluation", seq: int | None = None, **data: Any) -> dict[str, Any]:
    """A valid §1 record; evaluation data gets every §1 field, overridable by keyword."""
    number = next(_counter) if seq is None else seq
    body: dict[str, Any]
    if kind == "evaluation":
        body = {
            "level": 5,
            "reasons": [],
            "comment": None,
            "channel": "keypad",
            "device_id": "kp-07",
            "window": "07",
            "staff_id": "S001",
            "case_no": f"CASE-{number}",
            "item_code": "370102-001",
            "session": number,
            "citizen_ref": None,
            "citizen_masked": None,
            "device_ts": None,
            "node_id": NODE,
            "hall_code": "370102",
            "flags": [],
        }
    elif kind == "alert":
        body = {"type": "bad_review", "evaluation_id": str(uuid6.uuid7())}
    else:
        body = {"device_id": "dev-1", "note": kind}
    body.update(data)
    created = datetime(2024, 5, 1, 8, 30, tzinfo=UTC) + timedelta(seconds=number)
    return {
        "id": str(uuid6.uuid7()),
        "seq": number,
        "kind": kind,
        "created_at": format_timestamp(created),
        "data": body,
    }


def batch_body(records: list[dict[str, Any]], batch_id: str | None = None) -> dict[str, Any]:
    """A batch envelope as plain JSON data (tests may break it on purpose)."""
    return {
        "node_id": NODE,
        "batch_id": batch_id or str(uuid6.uuid7()),
        "sent_at": "2024-05-01T09:00:00.000Z",
        "records": records,
    }


@dataclass(frozen=True)
class Backend:
    """Where a test's receiver stores: a database URL and a table unique to the test."""

    name: str
    url: str
    table: str


def _postgres_url() -> str:
    """A URL for the local PostgreSQL, or skip the test saying why."""
    errors: list[str] = []
    for user in _PG_USERS:
        url = f"postgresql://{user}@127.0.0.1:5432/test"
        try:
            with psycopg.connect(url, connect_timeout=3):
                return url
        except psycopg.Error as exc:
            errors.append(f"{user}: {str(exc).strip()}")
    pytest.skip(f"PostgreSQL not reachable on 127.0.0.1:5432: {'; '.join(errors)}")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The local PostgreSQL's URL (checked once per run)."""
    return _postgres_url()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; the PostgreSQL table is unique to the test and dropped after it."""
    table = f"hallhub_test_{uuid.uuid4().hex[:16]}"
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'central.db'}", table)
        return
    url: str = request.getfixturevalue("postgres_url")
    yield Backend("postgres", url, table)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'central.db'}"


@pytest.fixture
async def receiver(sqlite_url: str) -> AsyncIterator[RunningReceiver]:
    """A well-behaved receiver on SQLite and a free loopback port."""
    async with start_receiver("127.0.0.1:0", sqlite_url, TOKEN) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that never retries and gives up after 10 s."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session
