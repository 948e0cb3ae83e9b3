"""Starting real hubs for tests: in this event loop, or as a `hallhub run` process to kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hub.app import Hub
from hub.clock import Clock
from hub.config import HubConfig, Secrets, parse_config
from hub.ops.broker import free_port, port_open
from sync.node import build_hub
from tests.support.child import ChildProcess

NODE_ID = "test-node"
PULL_TOKEN = "pull-secret-token"


def terminals(count: int, kind: str = "terminal") -> list[dict[str, Any]]:
    """`count` MQTT device entries (pads get windows w1, w2, ...)."""
    devices = []
    for n in range(count):
        entry: dict[str, Any] = {"id": f"{kind}-{n:02d}", "kind": kind, "transport": "mqtt"}
        if kind == "pad":
            entry["window"] = f"w{n}"
        devices.append(entry)
    return devices


def node_raw(
    data_dir: Path, broker_port: int, devices: list[dict[str, Any]] | None = None, **sections: Any
) -> dict[str, Any]:
    """A node config document for tests; `sections` override whole tables."""
    raw: dict[str, Any] = {
        "node": {
            "id": NODE_ID,
            "hall_code": "370102",
            "data_dir": str(data_dir),
            "secret_file": str(data_dir / "secret"),
        },
        "broker": {"host": "127.0.0.1", "port": broker_port},
        "api": {"listen": "127.0.0.1:0", "pull_token": PULL_TOKEN},
        "device": devices
        if devices is not None
        else terminals(2) + terminals(2, "pad") + [{"id": "qr-00", "kind": "qr", "transport": "mqtt"}],
    }
    raw.update(sections)
    return raw


def node_config(
    data_dir: Path, broker_port: int, devices: list[dict[str, Any]] | None = None, **sections: Any
) -> HubConfig:
    """A validated config for an in-process hub."""
    return parse_config(node_raw(data_dir, broker_port, devices, **sections))


@contextlib.asynccontextmanager
async def running_hub(
    config: HubConfig, pull_token: str = PULL_TOKEN, *, clock: Clock | None = None
) -> AsyncIterator[Hub]:
    """A hub serving in this loop, connected to its broker; stopped cleanly on exit. `clock` times
    its evaluation sessions (a test's `FakeClock`; the system clock by default)."""
    secrets = Secrets(
        broker_password=config.broker.password,
        pull_token=pull_token,
        central_token="",
        control_token=config.api.control_token,
        view_token=config.api.view_token,
    )
    hub = build_hub(config, secrets, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(hub.run(stop))
    try:
        await asyncio.wait_for(hub.ready.wait(), 15)
        await hub.gateway.wait_connected(15)
        yield hub
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def write_toml(path: Path, raw: dict[str, Any]) -> Path:
    """Write a config document as TOML (enough of TOML for our configs)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    lines: list[str] = []
    for name, table in raw.items():
        if isinstance(table, list):
            for item in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
        else:
            lines.append(f"[{name}]")
            lines += [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tomllib.loads(path.read_text(encoding="utf-8"))
    return path


class HubProcess(ChildProcess):
    """`hallhub run --config PATH` as a child process, for kill -9 and SIGTERM tests."""

    def __init__(
        self, config_path: Path, api_port: int, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config_path = config_path
        self.api_port = api_port
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> None:
        """Start and wait until the API answers."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hub", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"hub exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            if port_open("127.0.0.1", self.api_port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"hub did not start: {self.log_path.read_text()[-2000:]}")


def process_config(
    tmp_path: Path, broker_port: int, devices: list[dict[str, Any]], **api: Any
) -> tuple[Path, int]:
    """Write a config for a hub process (`api` adds [api] keys); returns (path, api port)."""
    api_port = free_port()
    raw = node_raw(tmp_path / "data", broker_port, devices)
    raw["api"] = {"listen": f"127.0.0.1:{api_port}", "pull_token": PULL_TOKEN, **api}
    return write_toml(tmp_path / "node.toml", raw), api_port
