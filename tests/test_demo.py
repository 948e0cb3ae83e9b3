"""`hallhub demo` runs a whole node with no hardware and no config, on Mosquitto or the amqtt fallback."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from hub.cli.demo import DemoView, demo_config
from hub.config import Secrets
from sync.node import build_hub


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
    assert ("qr",) in channels, "a simulated phone rated through the QR window's link (§13)"
    log = (tmp_path / "hallhub-demo.log").read_text()
    assert "Traceback" not in log


def test_ctrl_c_piped_stops_in_a_second_cleanly_and_says_what_is_pending(tmp_path: Path) -> None:
    """As a technician runs it: `hallhub demo | tee`, a flaky platform, then Ctrl-C (SIGINT to the
    terminal's foreground process group)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "demo", "--rate", "3", "--central-fail-rate", "0.5"],
        env={**os.environ, "TMPDIR": str(tmp_path), "HALLHUB_DEMO_BROKER": "mosquitto"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        records = 0
        while time.monotonic() < deadline and records < 5:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("status page: "):
                url = line.removeprefix("status page: ").strip()
            elif url and " seq " in line:
                records += 1  # piped: each record is a plain line as it is committed
        assert url is not None, lines
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), lines
        assert records == 5, lines
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
        stopped_at = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        rest, stderr = process.communicate(timeout=30)
        took = time.monotonic() - stopped_at
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert took < 2.0, f"Ctrl-C took {took:.1f} s"
    final = rest.rstrip("\n").splitlines()[-1]
    assert final.startswith("demo stopped: "), final
    assert re.search(r"(\d+ records still pending in the outbox: the hub sends them|nothing pending)", final)
    (log,) = tmp_path.glob("hallhub-demo-*.log")
    text = log.read_text() + stderr
    for bad in ("ERROR", "Traceback", "Future exception was never retrieved"):
        assert bad not in text, text[-3000:]
    assert [p for p in tmp_path.glob("hallhub-demo-*") if p.is_dir()] == [], "the run's temp dir was left"
    assert f"log: {log}" in lines[0]


def test_a_demo_killed_with_kill_9_leaves_no_broker_behind(tmp_path: Path) -> None:
    """The broker has its own process group (so that Ctrl-C reaches the demo first): killing the
    demo's group with SIGKILL used to leave Mosquitto running, holding its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hub", "demo", "--rate", "2", "--data-dir", str(tmp_path)],
        env={**os.environ, "HALLHUB_DEMO_BROKER": "mosquitto", "COLUMNS": "100"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    brokers: list[psutil.Process] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line or line.startswith("broker: "):
                break
        assert line.startswith("broker: mosquitto"), line
        brokers = [c for c in psutil.Process(process.pid).children() if c.name() == "mosquitto"]
        assert len(brokers) == 1
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        _, alive = psutil.wait_procs(brokers, timeout=10)
        assert alive == [], "mosquitto outlived the demo"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for broker in brokers:
            with contextlib.suppress(psutil.NoSuchProcess):
                broker.kill()
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(("width", "height"), [(80, 24), (160, 50)])
def test_the_live_view_fits_the_terminal_alerts_and_status_page_first(
    tmp_path: Path, width: int, height: int
) -> None:
    config = demo_config(1883, 0, tmp_path / "data", tmp_path / "tty", central_url="")
    hub = build_hub(config, Secrets(broker_password="", pull_token="", central_token=""))
    hub.api_port = 8780
    view = DemoView()
    for seq in range(1, 40):
        view.on_record(
            {
                "kind": "evaluation",
                "seq": seq,
                "created_at": "2026-12-07T01:02:03Z",
                "data": {"level": 5, "window": "01", "device_id": "kp-01"},
            }
        )
    view.on_record(
        {
            "kind": "alert",
            "seq": 40,
            "created_at": "2026-12-07T01:02:04Z",
            "data": {"type": "bad_review", "level": 1, "window": "02", "case_no": "SD000000042"},
        }
    )
    screen = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    screen.print(view.render(hub, screen))
    shown = screen.export_text().rstrip("\n").splitlines()
    text = "\n".join(shown)
    assert len(shown) < height, text
    assert all(len(line) <= width for line in shown)
    assert "status page http://127.0.0.1:8780/" in text
    assert "bad_review level 1 window 02 case SD000000042" in text
    assert "Committed to the outbox" in text
    if height >= 50:  # room for more: what happens at the windows, and the latest records or devices
        assert "Ratings by level" in text
        assert "Window sessions" in text
        assert "Latest records" in text or "Devices" in text
