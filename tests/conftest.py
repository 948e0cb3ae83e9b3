"""Fixtures shared by all tests: a private Mosquitto per test, and a check for leaked threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.broker import MosquittoBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of our own on a free loopback port, with a config the test can extend."""
    instance = MosquittoBroker(workdir=tmp_path / "broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running (a writer or reader never closed)."""
    before = set(threading.enumerate())
    yield
    leaked = [
        t
        for t in threading.enumerate()
        if t not in before and t.is_alive() and not t.daemon and t.name.startswith(("outbox-",))
    ]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
