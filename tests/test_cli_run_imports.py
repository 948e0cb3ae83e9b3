"""`hallhub run` loads heavy optional modules only for the devices and features configured.

The idle hub's memory target (≤ 60 MB RSS with 50 MQTT devices, `bench/footprint.py`) is met by
importing lazily: `cryptography` only for card readers or sealed identities, pyserial, tenacity and
pyscard only for serial and PC/SC devices, rich and the other subcommands' modules only for those
commands, the uplink only with push on. These tests keep that from regressing silently.

Each check runs `hallhub run` in a fresh interpreter (what this test process has imported says
nothing), up to building the `Hub` for the config: the run command's parsing, config and secrets,
and every driver, service and route the config asks for, without serving.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.hub import node_raw, terminals, write_toml

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json
import os
import ssl
import sys

import hub.ops.runner
from hub.app import Hub


def build_only(config, secrets, build=Hub):
    build(config, secrets)
    print(json.dumps(sorted(sys.modules)))


hub.ops.runner.run_hub = build_only
sys.argv = ["hallhub", "run", "--config", sys.argv[1], "--log-level", "WARNING"]
from hub.cli.commands import main

main()
"""

CARD_AND_SERIAL = ("cryptography", "serial", "serial_asyncio", "tenacity", "crc", "smartcard")
"""Loaded only for ID-card, keypad, serial QR and PC/SC devices (or sealed identities)."""

OTHER_COMMANDS = (
    "rich",
    "hub.ops.init_config",
    "hub.ops.provision",
    "hub.cli.demo",
    "hub.ops.doctor",
    "hub.simulate",
    "sync.outbox_cli",
    "sync.central_cli",
    "sync.receiver",
)
"""Loaded only by subcommands other than `run` (tables, live views, provisioning, the receiver)."""

DRIVERS = ("drivers.keypad.driver", "drivers.idcard.driver", "drivers.qr.serial", "drivers.pcsc.driver")


def run_probe(probe: str, config: Path, env: dict[str, str] | None = None) -> Any:
    """Run `probe` (a script that runs `hallhub run --config CONFIG` up to building the hub) in a
    fresh interpreter; the JSON of its last line."""
    result = subprocess.run(
        [sys.executable, "-c", probe, str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def modules_loaded_by_run(tmp_path: Path, devices: list[dict[str, Any]], **sections: Any) -> set[str]:
    """`sys.modules` of a fresh `hallhub run --config ...` once its Hub is built."""
    config = write_toml(tmp_path / "node.toml", node_raw(tmp_path / "data", 1883, devices, **sections))
    loaded = set(run_probe(PROBE, config))
    assert {"hub.app", "hub.ingest.gateway", "hub.ingest.driver_host", "aiohttp.web", "msgspec"} <= loaded
    return loaded


def test_run_with_only_mqtt_devices_loads_no_heavy_optional_module(tmp_path: Path) -> None:
    devices = [*terminals(2), *terminals(50, "pad"), {"id": "qr-00", "kind": "qr", "transport": "mqtt"}]
    loaded = modules_loaded_by_run(tmp_path, devices)
    heavy = (*CARD_AND_SERIAL, *OTHER_COMMANDS, *DRIVERS, "sync.uplink", "cv2", "numpy")
    assert sorted(loaded & set(heavy)) == []
    assert "rich.table" not in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in ("pydantic", "pydantic_core")) == [], (
        "the hub validates with msgspec: pydantic would cost ~11 MB of an idle hub"
    )


def test_run_loads_the_drivers_and_crypto_its_devices_need(tmp_path: Path) -> None:
    """The counter-check: the same probe does see the lazy imports when the config asks for them."""
    devices = [
        *terminals(1, "pad"),
        {
            "id": "kp-01",
            "kind": "keypad",
            "transport": "serial",
            "port": "/dev/null",
            "address": 1,
            "window": "w7",
        },
        {"id": "id-01", "kind": "idcard", "transport": "serial", "port": "/dev/null", "window": "w1"},
        {"id": "qr-01", "kind": "qr", "transport": "serial", "port": "/dev/null"},
        {"id": "pc-01", "kind": "pcsc", "transport": "pcsc"},
    ]
    loaded = modules_loaded_by_run(tmp_path, devices, central={"url": "https://central.invalid/hallhub"})
    assert sorted({*CARD_AND_SERIAL, *DRIVERS, "sync.uplink"} - loaded) == []
    assert sorted(loaded & set(OTHER_COMMANDS)) == []


def test_sealed_identities_load_crypto_without_card_readers(tmp_path: Path) -> None:
    loaded = modules_loaded_by_run(tmp_path, terminals(2, "pad"), privacy={"identity": "encrypted"})
    assert "cryptography" in loaded
    assert "smartcard" not in loaded


LEAN_PROBE = """
import json
import os
import ssl
import sys
import types


def build_only(config, secrets, build):
    build(config, secrets)
    from hub.ops.tls import central_tls_context

    print(json.dumps({
        "SSL_CERT_FILE": os.environ.get("SSL_CERT_FILE"),
        "frozenlist_compiled": "frozenlist._frozenlist" in sys.modules,
        "default_context_cas": ssl.create_default_context().cert_store_stats()["x509_ca"],
        "uplink_cas": central_tls_context(config.central).cert_store_stats()["x509_ca"],
    }))


# `run` imports hub.ops.runner (and with it aiohttp) only after hub.ops.lean: so must this probe.
runner = types.ModuleType("hub.ops.runner")
runner.run_hub = build_only
sys.modules["hub.ops.runner"] = runner
sys.argv = ["hallhub", "run", "--config", sys.argv[1], "--log-level", "WARNING"]
from hub.cli.commands import main

assert "aiohttp" not in sys.modules and "frozenlist" not in sys.modules
main()
"""


def lean_facts(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """What `hub.ops.lean` did in a fresh `hallhub run` process with push on over https."""
    raw = node_raw(
        tmp_path / "data", 1883, terminals(2, "pad"), central={"url": "https://central.invalid/hallhub"}
    )
    facts: dict[str, Any] = run_probe(LEAN_PROBE, write_toml(tmp_path / "node.toml", raw), env)
    return facts


def test_run_keeps_aiohttp_from_parsing_the_ca_bundle_and_the_uplink_trusts_the_same_cas(
    tmp_path: Path,
) -> None:
    """aiohttp's two import-time TLS contexts parsed ~140 CAs each and frozenlist loaded libstdc++
    (47.8 MB idle RSS, bench/footprint.py); the uplink must still check the platform against every
    system CA."""
    system_cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert system_cas > 0, "this machine has a CA bundle (Debian's ca-certificates)"
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "FROZENLIST_NO_EXTENSIONS")}
    facts = lean_facts(tmp_path, env)
    assert facts["SSL_CERT_FILE"] == os.devnull
    assert facts["default_context_cas"] == 0, "aiohttp's contexts parse no bundle"
    assert facts["uplink_cas"] == system_cas, "the uplink loads the same bundle itself"
    assert facts["frozenlist_compiled"] is False


def test_an_operators_ssl_cert_file_is_the_bundle_the_uplink_trusts(tmp_path: Path) -> None:
    """A bundle chosen with SSL_CERT_FILE (here a copy holding one CA of the system's) is the one
    the uplink loads, and aiohttp's contexts parse it no more than the system's."""
    system = ssl.create_default_context()
    first = system.get_ca_certs(binary_form=True)[0]
    bundle = tmp_path / "operator-ca.pem"
    bundle.write_text(ssl.DER_cert_to_PEM_cert(first))
    env = {**os.environ, "SSL_CERT_FILE": str(bundle)}
    facts = lean_facts(tmp_path, env)
    assert facts["SSL_CERT_FILE"] == os.devnull
    assert facts["default_context_cas"] == 0
    assert facts["uplink_cas"] == 1
