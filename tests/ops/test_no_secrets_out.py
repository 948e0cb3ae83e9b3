"""No configured secret leaves the node through its outputs: `/v1/status`, the status page, the log,
`hallhub doctor --json` and `hallhub config check` (all redacted by `hub.privacy.redact`).

Everything is real: `hallhub run` as a process with its log file, HTTP to its API, doctor and config
check through the command line. The secrets reach those outputs the way they would in a hall: a serial QR
scanner on a network serial server whose URL carries a password (the driver's error names the
URL), tokens and passwords in the config, and a central URL with credentials in it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from hub.cli.commands import app
from hub.ops.broker import MosquittoBroker, free_port
from hub.privacy.redact import REDACTED
from tests.support.hub import HubProcess, node_raw, write_toml

URL_PASSWORD = "url-pw-5d1e77"
BROKER_PASSWORD = "broker-pw-0c4a19"
PULL_TOKEN = "pull-token-7f3b2c9e41d8"
CONTROL_TOKEN = "control-token-a81f6b2d93ce"
VIEW_TOKEN = "view-token-4e92c1a7bb05"
CENTRAL_TOKEN = "central-token-19d7e3f0"
SECRETS = (URL_PASSWORD, BROKER_PASSWORD, PULL_TOKEN, CONTROL_TOKEN, VIEW_TOKEN, CENTRAL_TOKEN)


def assert_no_secret(text: str, where: str) -> None:
    """None of the configured secrets in `text`."""
    for secret in SECRETS:
        assert secret not in text, f"{secret} in {where}"


def secret_config(tmp_path: Path, broker_port: int, **sections: Any) -> tuple[Path, int]:
    """A node with every kind of secret configured; returns (config path, API port)."""
    api_port = free_port()
    scanner = f"socket://scanner:{URL_PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    raw = node_raw(
        tmp_path / "data",
        broker_port,
        [{"id": "qr-01", "kind": "qr", "transport": "serial", "port": scanner}],
        broker={"host": "127.0.0.1", "port": broker_port, "username": "hub", "password": BROKER_PASSWORD},
        api={
            "listen": f"127.0.0.1:{api_port}",
            "pull_token": PULL_TOKEN,
            "control_token": CONTROL_TOKEN,
            "view_token": VIEW_TOKEN,
        },
        central={"url": f"http://127.0.0.1:{free_port()}/hallhub", "token": CENTRAL_TOKEN},
    )
    raw.update(sections)
    return write_toml(tmp_path / "node.toml", raw), api_port


def get(url: str) -> str:
    """The body of a GET."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def command(*args: str) -> Result:
    """`hallhub ARGS`, its output captured (wide, so that no line is wrapped)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def test_status_page_and_log_of_a_running_hub(tmp_path: Path, broker: MosquittoBroker) -> None:
    config, api_port = secret_config(tmp_path, broker.port)
    hub = HubProcess(config, api_port, tmp_path / "hub.log")
    try:
        hub.start()
        base = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 15
        while True:  # until the scanner's driver has said why its port does not open
            status = get(f"{base}/v1/status")
            (scanner,) = json.loads(status)["devices"]
            if scanner["detail"] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        page = get(f"{base}/")
        assert hub.terminate() == 0
    finally:
        hub.stop_quietly()
    log = (tmp_path / "hub.log").read_text()
    assert "socket://***@127.0.0.1:" in scanner["detail"], scanner
    assert "QR scanner qr-01 offline (socket://***@127.0.0.1:" in log
    assert "on, to http://127.0.0.1:" in page
    assert_no_secret(status, "/v1/status")
    assert_no_secret(page, "the status page")
    assert_no_secret(log, "the log")


def test_doctor_json(tmp_path: Path, broker: MosquittoBroker) -> None:
    config, _ = secret_config(tmp_path, broker.port)
    result = command("doctor", "--config", str(config), "--timeout", "3", "--json")
    assert result.exit_code == 1, result.output  # the scanner's port does not open
    assert_no_secret(result.stdout + result.stderr, "doctor --json")
    doc = json.loads(result.stdout)
    (port,) = [f for f in doc["findings"] if f["check"] == "port"]
    assert port["subject"] == "qr-01"
    assert port["message"].startswith("cannot open socket://***@127.0.0.1:")
    assert doc["config"]["device"][0]["port"].startswith("socket://***@127.0.0.1:")
    assert doc["config"]["broker"]["password"] == REDACTED
    assert doc["config"]["central"]["token"] == REDACTED
    assert {doc["config"]["api"][key] for key in ("pull_token", "control_token", "view_token")} == {REDACTED}


def test_a_central_url_with_credentials(tmp_path: Path, broker: MosquittoBroker) -> None:
    """The config refuses it, and neither `config check` nor doctor repeats the password."""
    url = f"http://node:{URL_PASSWORD}@10.0.0.1/hallhub"
    config, _ = secret_config(tmp_path, broker.port, central={"url": url, "token": CENTRAL_TOKEN})
    checked = command("config", "check", str(config))
    assert checked.exit_code == 1
    assert '"http://***@10.0.0.1/hallhub" is plain http to another host' in checked.stderr
    doctor = command("doctor", "--config", str(config), "--timeout", "3", "--json")
    assert doctor.exit_code == 1
    (error,) = [f for f in json.loads(doctor.stdout)["findings"] if f["key"] == "central.url"]
    assert error["message"].startswith('central.url: "http://***@10.0.0.1/hallhub" is plain http')
    assert_no_secret(checked.stdout + checked.stderr + doctor.stdout + doctor.stderr, "config check, doctor")
