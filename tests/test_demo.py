"""`hallhub demo` runs a whole node with no hardware and no config, on Mosquitto or the amqtt fallback."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_and_stores_evaluations(tmp_path: Path, broker: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "demo", "--duration", "12", "--rate", "2", "--data-dir", str(tmp_path)],
        env={**os.environ, "HALLHUB_DEMO_BROKER": broker, "COLUMNS": "100"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung demo is killed with its broker and simulators
    )
    try:
        stdout, stderr = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)  # every thread's stack to stderr, to see where it hangs
        time.sleep(1)
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        log = (tmp_path / "hallhub-demo.log").read_text() if (tmp_path / "hallhub-demo.log").exists() else ""
        raise AssertionError(f"demo did not stop:\n{stderr[-6000:]}\n--- log ---\n{log[-3000:]}") from None
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"broker: {'mosquitto' if broker == 'mosquitto' else 'embedded amqtt'}" in result.stdout
    assert "demo stopped:" in result.stdout
    conn = sqlite3.connect(tmp_path / "data" / "outbox.db")
    kinds = dict(conn.execute("SELECT kind, count(*) FROM records GROUP BY kind").fetchall())
    conn.close()
    assert kinds.get("evaluation", 0) > 5
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "outbox.db")) as conn:
        channels = set(
            conn.execute(
                "SELECT DISTINCT json_extract(body, '$.data.channel') FROM records WHERE kind = 'evaluation'"
            )
        )
    assert ("keypad",) in channels, "keypad sessions ran"
    assert ("pad",) in channels or ("terminal",) in channels
    log = (tmp_path / "hallhub-demo.log").read_text()
    assert "Traceback" not in log
