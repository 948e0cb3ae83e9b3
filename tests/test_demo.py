"""`hallhub demo` runs a whole node with no hardware and no config, on Mosquitto or the amqtt fallback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_and_stores_evaluations(tmp_path: Path, broker: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub", "demo", "--duration", "12", "--rate", "2", "--data-dir", str(tmp_path)],
        env={**os.environ, "HALLHUB_DEMO_BROKER": broker, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"broker: {'mosquitto' if broker == 'mosquitto' else 'embedded amqtt'}" in result.stdout
    assert "demo stopped:" in result.stdout
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    kinds = dict(conn.execute("SELECT kind, count(*) FROM records GROUP BY kind").fetchall())
    conn.close()
    assert kinds.get("evaluation", 0) > 5
    channels = {row for row in sqlite3.connect(tmp_path / "data" / "outbox.db").execute(
        "SELECT DISTINCT json_extract(body, '$.data.channel') FROM records WHERE kind = 'evaluation'")}
    assert ("keypad",) in channels, "keypad sessions ran"
    assert ("pad",) in channels or ("terminal",) in channels
    log = (tmp_path / "hallhub-demo.log").read_text()
    assert "Traceback" not in log
