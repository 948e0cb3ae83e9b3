"""Fixtures for the install, broker and provisioning tests: a prefix the node's accounts can read."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.node import NodeBroker, run_install


@pytest.fixture
def prefix() -> Iterator[Path]:
    """An empty install root under /tmp, readable by others (pytest's tmp_path is not: 0700).

    As root, Mosquitto reads its files as user mosquitto, and setpriv runs install-node as nobody:
    both need to reach into this directory, as they reach into / on a node.
    """
    path = Path(tempfile.mkdtemp(prefix="hallhub-ops-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def installed(prefix: Path) -> Path:
    """A node installed under `prefix` by scripts/install-node --skip-venv."""
    result = run_install(prefix, "--skip-venv")
    assert result.returncode == 0, result.stderr + result.stdout
    return prefix


@pytest.fixture
def node_broker(installed: Path) -> Iterator[NodeBroker]:
    """The installed node broker, running."""
    broker = NodeBroker(installed)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
