"""`hallhub doctor` against a healthy node and against each fault a technician meets.

The node is real at every boundary: Mosquitto with a password file and the project's hub ACL, a
simulated keypad and ID-card reader on ptys, a video file as the camera, the reference central
receiver, a tmpfs for the disk check. Each fault is asserted by its exact line.

Tests run as root here. Root may open anything, so the permission check is judged for the hub's
service user (`--user`, normally `User=hallhub` from the unit); the permission test checks as
`nobody`, against a pty whose mode is changed under the simulated keypad.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from drivers.idcard.codec import Response, Status
from drivers.idcard.simulator import SimulatedSamReader
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from drivers.probe import in_daemon_thread
from hub.ops.broker import MosquittoBroker, free_port
from hub.ops.doctor import DoctorOptions, Level, Report, ServiceUser, run_doctor
from hub.ops.doctor.clock import judge_chrony, judge_timedatectl
from hub.privacy.redact import REDACTED, Scrubber, redact
from hub.simulate.mqtt_device import SimulatedMqttDevice
from sync.receiver import start_receiver
from tests.support.cli import run_hallhub
from tests.support.hub import NODE_ID, node_raw, write_toml

REPO = Path(__file__).resolve().parents[2]
BROKER_USER = "hub"
BROKER_PASSWORD = "broker-pw-5f2c91"
CENTRAL_TOKEN = "central-token-8d41aa"
KEYPAD_FW = "HKP-SIM 1.0"


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto that needs a password, with the project's own ACL for the hub account."""
    workdir = tmp_path / "broker"
    workdir.mkdir()
    passwords = workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), BROKER_USER, BROKER_PASSWORD],
        check=True,
        capture_output=True,
    )
    broker = MosquittoBroker(
        workdir=workdir,
        extra=[
            "user root",  # tests run as root: keep root, so that it may read files under tmp_path
            "allow_anonymous false",
            f"password_file {passwords}",
            f"acl_file {REPO / 'config/mosquitto/hub.acl'}",
        ],
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
async def keypad_line(tmp_path: Path) -> AsyncIterator[SimulatedLine]:
    """One simulated keypad at address 1 behind a pty at tmp/kp07."""
    async with SimulatedLine(tmp_path / "kp07", [SimulatedKeypad(1, firmware=KEYPAD_FW)]) as line:
        yield line


def options(tmp_path: Path, config: Path, **overrides: Any) -> DoctorOptions:
    """Doctor pointed at this test's directories (no systemctl, no host unit files)."""
    (tmp_path / "serial").mkdir(exist_ok=True)
    settings: dict[str, Any] = {
        "config_path": config,
        "timeout_s": 3.0,
        "unit_dirs": (REPO / "systemd",),
        "serial_dirs": (tmp_path / "serial",),
        "timesync_flag": tmp_path / "timesync-synchronized",
        "use_systemctl": False,
    }
    settings.update(overrides)
    return DoctorOptions(**settings)


def write_node(tmp_path: Path, broker_port: int, devices: list[dict[str, Any]], **sections: Any) -> Path:
    """A node.toml for doctor: password auth on the broker, a small outbox quota."""
    raw = node_raw(tmp_path / "data", broker_port, devices)
    raw["broker"] = {
        "host": "127.0.0.1",
        "port": broker_port,
        "username": BROKER_USER,
        "password": BROKER_PASSWORD,
    }
    raw["outbox"] = {"max_mb": 16}
    raw.update(sections)
    return write_toml(tmp_path / "node.toml", raw)


def keypad(port: Path | str) -> dict[str, Any]:
    """The keypad entry of window 07."""
    return {"id": "kp-07", "kind": "keypad", "transport": "serial", "port": str(port), "window": "07"}


def lines_of(report: Report, check: str) -> list[str]:
    """The report's lines of one check."""
    return [f.line() for f in report.findings if f.check == check]


def assert_secrets_absent(text: str) -> None:
    """No password or token in any output."""
    for secret in (BROKER_PASSWORD, CENTRAL_TOKEN, "wrong-token-77aa01", "wrong-pw-19bb2"):
        assert secret not in text


def write_video(path: Path) -> Path:
    """A three-frame 64x48 video file, standing in for a camera."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 5, (64, 48))
    for _ in range(3):
        writer.write(np.full((48, 64, 3), 128, np.uint8))
    writer.release()
    return path


# -- a healthy node ------------------------------------------------------------------------------


async def test_healthy_node_passes_every_check(
    tmp_path: Path, auth_broker: MosquittoBroker, keypad_line: SimulatedLine
) -> None:
    (tmp_path / "timesync-synchronized").touch()
    video = write_video(tmp_path / "cam.avi")
    async with (
        SimulatedSamReader(tmp_path / "id07") as _reader,
        start_receiver("127.0.0.1:0", f"sqlite:///{tmp_path}/central.db", CENTRAL_TOKEN) as central,
        SimulatedMqttDevice(
            "127.0.0.1",
            auth_broker.port,
            NODE_ID,
            "pad-01",
            kind="pad",
            username=BROKER_USER,
            password=BROKER_PASSWORD,
        ),
    ):
        config = write_node(
            tmp_path,
            auth_broker.port,
            [
                keypad(keypad_line.path),
                {"id": "id-07", "kind": "idcard", "transport": "serial", "port": str(tmp_path / "id07")},
                {"id": "qr-cam", "kind": "qr", "transport": "camera", "source": str(video)},
                {"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "08"},
            ],
            central={"url": central.url, "token": CENTRAL_TOKEN},
        )
        started = time.monotonic()
        report = await run_doctor(options(tmp_path, config))
        elapsed = time.monotonic() - started

    text = "\n".join(report.lines())
    assert report.errors == 0, text
    assert report.exit_code == 0
    assert elapsed < 5, f"doctor took {elapsed:.1f} s"
    sam_ok = Response(0, 0, Status.SUCCESS).describe()
    expected = [
        f"OK    config[{config}]: node test-node (hall 370102), 4 devices",
        f"OK    secret[{tmp_path}/data/secret]: not there yet: the hub creates it (mode 0600) at first start",
        "OK    crypto[SM3/SM4]: match the standards' test vectors",
        f"OK    port[kp-07]: {keypad_line.path} opens at 9600 baud",
        f"OK    keypad[kp-07]: answered PING at address 1 on {keypad_line.path} (firmware {KEYPAD_FW})",
        f"OK    port[id-07]: {tmp_path}/id07 opens at 115200 baud",
        f"OK    idcard[id-07]: SAM status {sam_ok}",
        f"OK    camera[qr-cam]: read one 64x48 frame from {video}",
        (
            f'OK    broker[127.0.0.1:{auth_broker.port}]: logged in as "hub"; published and received a test message'
            " under hall/v1/test-node/"
        ),
        "OK    device[pad-01]: online (its retained state on the broker)",
        f"OK    central[{central.url}]: token accepted (HTTP 400 for an empty test batch, as expected)",
        "OK    clock[central]: agrees with central's Date header (within 5 s)",
        f"OK    watchdog[hallhub.service]: Type=notify, WatchdogSec=30 ({REPO}/systemd/hallhub.service)",
    ]
    for line in expected:
        assert line in report.lines(), f"missing: {line}\n---\n{text}"
    (disk,) = lines_of(report, "disk")
    assert re.fullmatch(
        rf"OK    disk\[{tmp_path}/data\]: \d+ MB free, outbox quota 16 MB \(0 MB used\)", disk
    )
    (sync,) = [f for f in report.findings if f.check == "clock" and f.subject == "sync"]
    assert sync.level in (Level.OK, Level.WARNING)  # timedatectl/chrony answer differently per machine
    assert_secrets_absent(text + json.dumps(report.to_json()))
    assert report.to_json()["config"]["broker"]["password"] == REDACTED
    assert report.to_json()["config"]["central"]["token"] == REDACTED


# -- faults, one line each -----------------------------------------------------------------------


async def test_missing_port(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    port = tmp_path / "serial-missing"
    config = write_node(tmp_path, auth_broker.port, [keypad(port)])
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "port") == [
        (
            f"ERROR port[kp-07]: {port} does not exist; fix: plug in the evaluation keypad kp-07, or set device[0].port to the right"
            f" port (no serial adapter is listed in {tmp_path}/serial/)"
        )
    ]
    assert lines_of(report, "keypad") == []
    assert report.exit_code == 1


async def test_unplugged_adapter_leaves_a_dangling_link(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    link = tmp_path / "serial" / "usb-FTDI_A10K7KP1-if00-port0"
    link.parent.mkdir()
    link.symlink_to("/dev/ttyUSB97")
    (tmp_path / "serial" / "usb-Prolific_ID07A001-if00-port0").touch()
    config = write_node(tmp_path, auth_broker.port, [keypad(link)])
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "port") == [
        (
            f"ERROR port[kp-07]: {link} points to /dev/ttyUSB97, which does not exist; fix: plug in the evaluation keypad kp-07,"
            f" or set device[0].port to the right port (present: {link}, {tmp_path}/serial/usb-Prolific_ID07A001-if00-port0)"
        )
    ]


async def test_port_not_accessible_to_the_service_user(
    tmp_path: Path, auth_broker: MosquittoBroker, keypad_line: SimulatedLine
) -> None:
    real = os.path.realpath(keypad_line.path)
    group = grp.getgrgid(os.stat(real).st_gid).gr_name
    config = write_node(tmp_path, auth_broker.port, [keypad(keypad_line.path)])

    os.chmod(real, 0o000)
    report = await run_doctor(options(tmp_path, config, user="nobody"))
    assert lines_of(report, "port") == [
        (
            f"ERROR port[kp-07]: {keypad_line.path} ({real}) is not readable and writable by user nobody"
            f' (c--------- root:{group}); fix: give the device GROUP="dialout", MODE="0660" with a udev rule'
            " (see config/udev/99-hallhub.rules) and add nobody to group dialout"
        )
    ]
    assert report.user == "nobody (--user)"

    os.chmod(real, 0o660)  # the group may: the user only lacks the group
    report = await run_doctor(options(tmp_path, config, user="nobody"))
    assert lines_of(report, "port") == [
        (
            f"ERROR port[kp-07]: {keypad_line.path} ({real}) is not readable and writable by user nobody"
            f" (crw-rw---- root:{group}); fix: usermod -aG {group} nobody, then restart the hub"
        )
    ]

    # Checked as root (the current user here), the same port is fine and the keypad answers.
    report = await run_doctor(options(tmp_path, config))
    assert f"OK    port[kp-07]: {keypad_line.path} opens at 9600 baud" in lines_of(report, "port")
    assert lines_of(report, "keypad") == [
        f"OK    keypad[kp-07]: answered PING at address 1 on {keypad_line.path} (firmware {KEYPAD_FW})"
    ]


async def test_port_held_by_a_running_hub(
    tmp_path: Path, auth_broker: MosquittoBroker, keypad_line: SimulatedLine
) -> None:
    import serial

    config = write_node(tmp_path, auth_broker.port, [keypad(keypad_line.path)])
    held = serial.Serial(keypad_line.path, 9600, exclusive=True)  # as the hub's driver holds it
    try:
        report = await run_doctor(options(tmp_path, config))
    finally:
        held.close()
    assert lines_of(report, "port") == [
        (
            f"ERROR port[kp-07]: cannot open {keypad_line.path}: port in use by another program (exclusive lock"
            f" failed); fix: stop the hub first (systemctl stop hallhub), or find what holds the port: fuser -v"
            f" {keypad_line.path}"
        )
    ]


async def test_silent_keypad(
    tmp_path: Path, auth_broker: MosquittoBroker, keypad_line: SimulatedLine
) -> None:
    keypad_line.keypads[1].silent = True
    config = write_node(tmp_path, auth_broker.port, [keypad(keypad_line.path)])
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "keypad") == [
        (
            f"ERROR keypad[kp-07]: did not answer PING at address 1 on {keypad_line.path} (2 tries); fix: check the"
            " keypad's power and cable, its address (device[0].address = 1) and baud rate (9600); on RS-485 check"
            " that A and B are not swapped"
        )
    ]
    assert lines_of(report, "port") == [f"OK    port[kp-07]: {keypad_line.path} opens at 9600 baud"]
    assert report.exit_code == 1


async def test_broker_down(tmp_path: Path) -> None:
    port = free_port()
    config = write_node(tmp_path, port, [])
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "broker") == [
        (
            f"ERROR broker[127.0.0.1:{port}]: cannot connect: connection refused; fix: start the broker"
            " (systemctl start mosquitto) or correct broker.host and broker.port"
        )
    ]
    assert report.exit_code == 1


@pytest.mark.loop_errors_expected(
    "CancelledError",
    reason="aiomqtt 2.5 cancelled while it connects to a silent broker leaves a cancelled callback "
    "(its own; the MQTT client rewrite of issue 14 replaces it)",
)
async def test_a_silent_broker_port_costs_only_the_timeout(tmp_path: Path) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # take the CONNECT and never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = write_node(tmp_path, port, [])
        started = time.monotonic()
        report = await run_doctor(options(tmp_path, config, timeout_s=1.0))
        elapsed = time.monotonic() - started
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
    assert lines_of(report, "broker") == [
        (
            f"ERROR broker[127.0.0.1:{port}]: accepts TCP connections but gave no MQTT answer within 1 s; fix: check"
            " broker.host and broker.port: they must name the broker's plain MQTT listener"
        )
    ]
    assert elapsed < 2.5


async def test_broker_refuses_a_wrong_password(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    config = write_node(tmp_path, auth_broker.port, [])
    raw = config.read_text().replace(BROKER_PASSWORD, "wrong-pw-19bb2")
    config.write_text(raw)
    report = await run_doctor(options(tmp_path, config))
    (line,) = lines_of(report, "broker")
    assert line == (
        f'ERROR broker[127.0.0.1:{auth_broker.port}]: refused the login as "hub" (not authorized); fix: check'
        " broker.username and broker.password (or password_file) against the"
        " broker's password file (mosquitto_passwd)"
    )
    assert_secrets_absent("\n".join(report.lines()) + json.dumps(report.to_json()))


async def test_central_refuses_the_token(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    async with start_receiver("127.0.0.1:0", f"sqlite:///{tmp_path}/central.db", CENTRAL_TOKEN) as central:
        config = write_node(
            tmp_path, auth_broker.port, [], central={"url": central.url, "token": "wrong-token-77aa01"}
        )
        report = await run_doctor(options(tmp_path, config))
        assert (await central.stats()).batches == 0  # the probe never stores anything
    assert (
        f"ERROR central[{central.url}]: refused the node's token (HTTP 401: invalid token); fix: set"
        " central.token (or central.token_file) to the token issued for node test-node" in report.lines()
    )
    assert report.exit_code == 1
    assert_secrets_absent("\n".join(report.lines()) + json.dumps(report.to_json()))


@contextlib.asynccontextmanager
async def skewed_central(skew_s: float, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """A tiny platform whose clock is `skew_s` off: it answers every batch 400 with its Date."""

    async def batches(_request: web.Request) -> web.Response:
        moment = datetime.fromtimestamp(time.time() + skew_s, UTC)
        return web.json_response(
            {"error": "records: at least 1 item"},
            status=400,
            headers={"Date": format_datetime(moment, usegmt=True)},
        )

    app = web.Application()
    app.router.add_post("/v1/nodes/{node}/batches", batches)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_clock_skew_against_central(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    async with skewed_central(-3600) as url:
        config = write_node(tmp_path, auth_broker.port, [], central={"url": url, "token": CENTRAL_TOKEN})
        report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "clock")[0] == (
        "ERROR clock[central]: the node's clock is 1 h ahead of central's (its Date header); fix: turn on time"
        " sync (timedatectl set-ntp true, or install chrony) and let NTP (UDP 123) reach a time server; records"
        " carry the node's time"
    )
    assert (
        f"OK    central[{url}]: token accepted (HTTP 400 for an empty test batch, as expected)"
        in report.lines()
    )
    assert report.exit_code == 1


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (usable as its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "central.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "central.pem", directory / "central.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_central_tls_needs_the_platform_ca(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with skewed_central(0, tls) as url:
        config = write_node(tmp_path, auth_broker.port, [], central={"url": url, "token": CENTRAL_TOKEN})
        report = await run_doctor(options(tmp_path, config))
        assert lines_of(report, "central") == [
            (
                f"ERROR central[{url}]: TLS certificate of 127.0.0.1 not trusted: self-signed certificate; fix: set"
                " central.ca_file to the platform's CA certificate, or install it (/usr/local/share/ca-certificates/"
                " and update-ca-certificates)"
            )
        ]
        central = {"url": url, "token": CENTRAL_TOKEN, "ca_file": str(cert)}
        config = write_node(tmp_path, auth_broker.port, [], central=central)
        report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "central") == [
        f"OK    central[{url}]: token accepted (HTTP 400 for an empty test batch, as expected)"
    ]
    assert (
        lines_of(report, "clock")[0] == "OK    clock[central]: agrees with central's Date header (within 5 s)"
    )


async def test_push_without_a_token(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    async with start_receiver("127.0.0.1:0", f"sqlite:///{tmp_path}/central.db", CENTRAL_TOKEN) as central:
        config = write_node(tmp_path, auth_broker.port, [], central={"url": central.url})
        report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "central") == [
        (
            f"ERROR central[{central.url}]: push is on but there is no token; fix: set central.token or"
            " central.token_file to the token issued for node test-node"
        ),
        (
            f"ERROR central[{central.url}]: refused the node's token (HTTP 401: Authorization must be Bearer <token>);"
            " fix: set central.token (or central.token_file) to the token issued for node test-node"
        ),
    ]


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of `size` at `path`, or None where this machine does not allow mounting."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    try:
        yield path if mounted.returncode == 0 else None
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(path)], check=True)


async def test_disk_too_small_for_the_outbox_quota(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    with small_disk(tmp_path / "mnt", "4m") as mount:
        if mount is not None:
            data = mount / "data"
            config = write_node(tmp_path, auth_broker.port, [], outbox={"max_mb": 16})
            config.write_text(config.read_text().replace(f'"{tmp_path}/data"', f'"{data}"'))
            report = await run_doctor(options(tmp_path, config))
            assert lines_of(report, "disk") == [
                (
                    f"ERROR disk[{data}]: 4 MB free for the outbox, but outbox.max_mb is 16 MB (0 MB used); fix: free"
                    " space on that disk, move node.data_dir to a larger disk, or lower outbox.max_mb to at most 3 MB"
                )
            ]
        else:
            # No mount privilege on this machine: the same check against the real disk, with a quota
            # larger than any disk this test runs on.
            config = write_node(tmp_path, auth_broker.port, [], outbox={"max_mb": 1_000_000})
            report = await run_doctor(options(tmp_path, config))
            (line,) = lines_of(report, "disk")
            assert re.fullmatch(
                rf"ERROR disk\[{tmp_path}/data\]: \d+ MB free for the outbox, but outbox.max_mb is 1000000 MB"
                r" \(0 MB used\); fix: .* lower outbox.max_mb to at most \d+ MB",
                line,
            )
    assert report.exit_code == 1


async def test_id_card_reader_with_a_failed_sam(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    async with SimulatedSamReader(tmp_path / "id07", sam_status=Status.SAM_SELF_TEST_FAILED):
        config = write_node(
            tmp_path,
            auth_broker.port,
            [{"id": "id-07", "kind": "idcard", "transport": "serial", "port": str(tmp_path / "id07")}],
        )
        report = await run_doctor(options(tmp_path, config))
    failed = Response(0, 0, Status.SAM_SELF_TEST_FAILED).describe()
    assert lines_of(report, "idcard") == [
        (
            f"ERROR idcard[id-07]: SAM status {failed}; fix: power the reader off and on; if it persists, the"
            " reader's SAM module needs its vendor"
        )
    ]


async def test_missing_camera_file_and_offline_mqtt_device(
    tmp_path: Path, auth_broker: MosquittoBroker
) -> None:
    async with SimulatedMqttDevice(
        "127.0.0.1",
        auth_broker.port,
        NODE_ID,
        "pad-01",
        kind="pad",
        username=BROKER_USER,
        password=BROKER_PASSWORD,
    ):
        pass  # it said online, then offline on leaving: the broker keeps the offline state
    config = write_node(
        tmp_path,
        auth_broker.port,
        [
            {"id": "qr-cam", "kind": "qr", "transport": "camera", "source": str(tmp_path / "none.avi")},
            {"id": "pad-01", "kind": "pad", "transport": "mqtt", "window": "08"},
            {"id": "pad-02", "kind": "pad", "transport": "mqtt", "window": "09"},
        ],
    )
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "camera") == [
        (
            f"ERROR camera[qr-cam]: {tmp_path}/none.avi does not exist; fix: set device[0].source to a camera index,"
            " file or URL"
        )
    ]
    assert lines_of(report, "device") == [
        "WARN  device[pad-01]: offline (its retained state on the broker); fix: switch the device on",
        (
            "WARN  device[pad-02]: has never connected to the broker (no retained state); fix: set the device's MQTT"
            " host, port, username (pad-02), password and node id (test-node); the broker's log shows refused logins"
        ),
    ]


@pytest.fixture
def pcscd_to_ourselves() -> Iterator[None]:
    """The machine's pcscd, once the other test worker's PC/SC tests are done with it."""
    from tests.drivers.pcsc.conftest import pcscd_turn

    with pcscd_turn():
        yield


@pytest.mark.pcsc
@pytest.mark.usefixtures("pcscd_to_ourselves")
async def test_pcsc_readers(tmp_path: Path, auth_broker: MosquittoBroker) -> None:
    from smartcard import scard

    from drivers.pcsc import describe_hresult
    from tests.drivers.pcsc.conftest import VPCD_CONF, Pcscd, list_readers, read_vpcd_conf

    if shutil.which("pcscd") is None or not VPCD_CONF.exists():
        pytest.skip("pcscd or vsmartcard-vpcd is not installed (scripts/bootstrap installs both)")
    friendly, channel = read_vpcd_conf()
    service = Pcscd(friendly, channel, owned=list_readers() is None, log_path=tmp_path / "pcscd.log")
    config = write_node(
        tmp_path,
        auth_broker.port,
        [
            {"id": "card-07", "kind": "pcsc", "transport": "pcsc", "reader": friendly},
            {"id": "card-08", "kind": "pcsc", "transport": "pcsc", "reader": "Gemalto PC Twin"},
        ],
    )
    if service.owned:  # no pcscd yet: doctor says so, then the test starts one
        report = await run_doctor(options(tmp_path, config))
        down = describe_hresult(scard.SCARD_E_NO_SERVICE)
        assert lines_of(report, "pcsc") == [
            f"ERROR pcsc[{device}]: {down}; fix: apt-get install pcscd; systemctl enable --now pcscd"
            for device in ("card-07", "card-08")
        ]
        await asyncio.to_thread(service.start)
    try:
        readers = await asyncio.to_thread(list_readers) or []
        report = await run_doctor(options(tmp_path, config))
        first = next(r for r in readers if friendly in r)
        assert lines_of(report, "pcsc") == [
            f"OK    pcsc[card-07]: pcscd answers; reader {first}",
            (
                f'ERROR pcsc[card-08]: no reader matching "Gemalto PC Twin" (readers present: {"; ".join(readers)});'
                " fix: plug the reader in (check with pcsc_scan), or set device[1].reader to part of its name"
            ),
        ]
    finally:
        if service.owned:
            await asyncio.to_thread(service.stop)


async def test_invalid_config_hides_secret_values(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[node]\nid = "n1"\nhall_code = "370102"\n[broker]\npassword = 918273645\n[outbox]\nmax_mb = 0\n'
    )
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "config") == [
        (
            f"ERROR config[{config}]: broker.password: invalid value (not shown: it is a secret); expected text in"
            f" quotes; fix: edit {config}, then run `hallhub config check {config}`"
        ),
        (
            f"ERROR config[{config}]: outbox.max_mb: expected a value of at least 1, got 0; fix: edit {config},"
            f" then run `hallhub config check {config}`"
        ),
    ]
    # Doctor goes on (issue 13): what needs [broker] or [outbox] is skipped, naming the key; the rest runs.
    assert [(f.check, f.level) for f in report.findings if f.check != "config"] == [
        ("secret", Level.OK),
        ("crypto", Level.OK),
        ("broker", Level.SKIPPED),
        ("central", Level.OK),
        ("clock", Level.WARNING),
        ("disk", Level.SKIPPED),
        ("watchdog", Level.OK),
    ]
    assert lines_of(report, "broker") == [
        (
            "SKIP  broker[-]: not checked: broker.password is not usable; fix: fix the errors above, then run"
            " doctor again"
        )
    ]
    assert "918273645" not in "\n".join(report.lines()) + json.dumps(report.to_json())
    assert report.exit_code == 1


def config_check_lines(config: Path) -> tuple[int, list[str]]:
    """`hallhub config check` in its own process: exit status and its error lines without the prefix."""
    result = run_hallhub("config", "check", str(config))
    prefix = f"error {config}: "
    lines = result.stderr.splitlines()
    assert all(line.startswith(prefix) for line in lines), result.stderr
    return result.returncode, [line.removeprefix(prefix) for line in lines]


BROKEN_CONFIGS = [
    ("pf code 8", {"national": {"pf": {"qr": 8}}}),
    ("reasons value with a comma", {"national": {"reasons": {"R1": "101,102"}}}),
    ("5-digit area code", {"national": {"area_code": "37010"}}),
    ("time-zone typo", {"national": {"timezone": "Asia/Shangai"}}),
    ("several sections", {"broker": {"port": 0}, "outbox": {"max_mb": 0}, "api": {"listen": "8780"}}),
    ("keypad without a port", {"device": [{"id": "kp-07", "kind": "keypad", "transport": "serial"}]}),
]


@pytest.mark.parametrize("sections", [s for _n, s in BROKEN_CONFIGS], ids=[n for n, _s in BROKEN_CONFIGS])
async def test_doctor_reports_what_config_check_reports_and_goes_on(
    tmp_path: Path, sections: dict[str, Any]
) -> None:
    """Issue 13 (11): one validation; where `config check` fails, doctor has the same lines, then runs on."""
    config = write_node(tmp_path, free_port(), [], **sections)
    status, check_lines = config_check_lines(config)
    assert status == 1
    report = await run_doctor(options(tmp_path, config))
    errors = [f for f in report.findings if f.check == "config"]
    assert [f.message for f in errors] == check_lines
    assert {f.key for f in errors} == {line.split(": ", 1)[0] for line in check_lines}
    assert all(f.level is Level.ERROR for f in errors)
    ran = {f.check for f in report.findings if f.level is not Level.SKIPPED}
    assert {"config", "secret", "crypto", "clock", "watchdog"} <= ran
    if set(sections) <= {"national", "device"}:  # nothing the other checks need is invalid
        assert {"broker", "central", "disk"} <= ran
        assert report.skipped == (1 if "device" in sections else 0)
    assert report.exit_code == 1


async def test_doctor_skips_only_what_needs_an_invalid_section(tmp_path: Path) -> None:
    port = tmp_path / "ttyUSB9"
    config = write_node(
        tmp_path,
        free_port(),
        [
            {
                "id": "kp-01",
                "kind": "keypad",
                "transport": "serial",
                "address": 0,
                "port": str(port),
                "window": "01",
            },
            keypad(port),
        ],
        broker={"host": "127.0.0.1", "port": 70000},
    )
    report = await run_doctor(options(tmp_path, config))
    fix = "fix: fix the errors above, then run doctor again"
    assert [f.line() for f in report.findings if f.level is Level.SKIPPED] == [
        f"SKIP  device[kp-01]: not checked: device[0].address is not usable; {fix}",
        f"SKIP  broker[-]: not checked: broker.port is not usable; {fix}",
    ]
    (port_line,) = lines_of(report, "port")
    assert port_line.startswith(
        f"ERROR port[kp-07]: {port} does not exist; fix: plug in the evaluation keypad kp-07, or set device[1].port"
    )
    assert [f.level for f in report.findings if f.check in ("secret", "disk", "central")] == [Level.OK] * 3
    assert report.summary().startswith("doctor: 3 errors and 1 warning in 11 checks, 2 skipped (")


async def test_doctor_and_config_check_agree_on_the_example_config(tmp_path: Path) -> None:
    """Issue 18: doctor said `config` ERROR where config check said ok, and stopped after 4 checks."""
    example = REPO / "config" / "node.example.toml"
    assert config_check_lines(example) == (0, [])
    report = await run_doctor(options(tmp_path, example, timeout_s=2.0))
    assert lines_of(report, "config") == [
        f"OK    config[{example}]: node hall-370102-01 (hall 370102), 8 devices"
    ]
    checks = {f.check for f in report.findings}
    assert checks >= {
        "secret",
        "crypto",
        "port",
        "camera",
        "pcsc",
        "broker",
        "central",
        "clock",
        "disk",
        "watchdog",
    }
    # Secret files that this machine lacks are the `secrets` check's errors, not the config's.
    for finding in (f for f in report.findings if f.check == "secrets"):
        assert finding.key.endswith("_file")
        assert finding.message.startswith("cannot read /etc/hallhub/")


async def test_doctor_goes_on_without_a_readable_config(tmp_path: Path) -> None:
    report = await run_doctor(options(tmp_path, tmp_path / "missing.toml"))
    assert [(f.check, f.level) for f in report.findings] == [
        ("config", Level.ERROR),
        *((check, Level.SKIPPED) for check in ("secret", "crypto", "device", "broker", "central", "disk")),
        ("clock", Level.WARNING),
        ("watchdog", Level.OK),
    ]
    assert report.findings[1].message == "not checked: the config file cannot be read"


async def test_node_secret_file(tmp_path: Path) -> None:
    config = write_node(tmp_path, free_port(), [])
    secret = tmp_path / "data" / "secret"
    secret.parent.mkdir()
    secret.write_text("ab" * 32 + "\n")
    secret.chmod(0o644)
    report = await run_doctor(options(tmp_path, config))
    assert lines_of(report, "secret") == [
        f"WARN  secret[{secret}]: readable by other users (mode 0644); fix: chmod 600 {secret}"
    ]
    assert "ab" * 32 not in json.dumps(report.to_json())
    secret.write_text("not hex")
    secret.chmod(0o600)
    (line,) = lines_of(report := await run_doctor(options(tmp_path, config)), "secret")
    assert line.startswith(f"ERROR secret[{secret}]: ")
    assert line.endswith(
        "; fix: deleting the file makes the hub create a new secret (every citizen_ref changes from then on)"
    )


def test_watchdog_findings_from_unit_files(tmp_path: Path) -> None:
    from hub.ops.doctor.systemd import check_watchdog, find_unit

    units = tmp_path / "units"
    units.mkdir()
    opts = options(tmp_path, tmp_path / "node.toml", unit_dirs=(units,))

    def findings() -> list[str]:
        return [f.line() for f in check_watchdog(opts, asyncio.run(find_unit(opts)))]

    assert findings() == [
        (
            "WARN  watchdog[hallhub.service]: not installed: nothing starts the hub at boot or restarts it when it"
            " hangs; fix: copy systemd/hallhub.service to /etc/systemd/system/, then systemctl enable --now hallhub"
        )
    ]
    unit = units / "hallhub.service"
    unit.write_text("[Service]\nExecStart=/opt/hallhub/venv/bin/hallhub run\n")
    assert findings() == [
        (
            f"WARN  watchdog[hallhub.service]: Type=simple in {unit}: the hub's READY and watchdog pings are ignored;"
            " fix: set Type=notify under [Service], then systemctl daemon-reload"
        ),
        (
            f"WARN  watchdog[hallhub.service]: no WatchdogSec in {unit}: a hung hub is not restarted; fix: add"
            " WatchdogSec=30s under [Service], then systemctl daemon-reload"
        ),
    ]
    dropin = units / "hallhub.service.d"
    dropin.mkdir()
    (dropin / "override.conf").write_text("[Service]\nType=notify\nWatchdogSec=20s\n")
    assert findings() == [f"OK    watchdog[hallhub.service]: Type=notify, WatchdogSec=20s ({unit})"]


# -- the pieces ----------------------------------------------------------------------------------


def test_service_user_permissions_follow_mode_bits(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.write_text("x")
    private.chmod(0o600)
    nobody = ServiceUser.lookup("nobody", "test")
    assert not nobody.may(private, os.R_OK)
    assert ServiceUser.current().may(private, os.R_OK | os.W_OK)  # root, or the owner
    private.chmod(0o606)
    assert nobody.may(private, os.R_OK | os.W_OK)


def test_timesync_parsers() -> None:
    assert (
        judge_timedatectl("NTP=yes\nNTPSynchronized=yes\n").line()  # type: ignore[union-attr]
        == "OK    clock[sync]: synchronized (timedatectl)"
    )
    assert judge_timedatectl("NTP=no\nNTPSynchronized=no\n").line() == (  # type: ignore[union-attr]
        "WARN  clock[sync]: time sync is off (timedatectl); fix: timedatectl set-ntp true"
    )
    assert judge_timedatectl("garbage") is None
    assert judge_chrony("Reference ID    : 0A000001\nLeap status     : Normal\n").level is Level.OK  # type: ignore[union-attr]
    assert judge_chrony("Leap status     : Not synchronised\n").level is Level.WARNING  # type: ignore[union-attr]


def test_skew_bands() -> None:
    from hub.ops.doctor.clock import judge_skew as _judge_skew

    now = 1_800_000_000.0
    date = format_datetime(datetime.fromtimestamp(now - 30, UTC), usegmt=True)
    assert (
        _judge_skew(date, now + 0.5)
        .line()
        .startswith("WARN  clock[central]: the node's clock is 30 s ahead of central's")
    )
    date = format_datetime(datetime.fromtimestamp(now + 7200, UTC), usegmt=True)
    assert (
        _judge_skew(date, now + 0.5)
        .line()
        .startswith("ERROR clock[central]: the node's clock is 2 h behind central's")
    )
    assert _judge_skew(None, now).level is Level.WARNING


def test_redaction() -> None:
    scrub = Scrubber(["s3cr3t-value"])
    text = "rtsp://admin:pw@10.0.0.9/stream Authorization: Bearer abc.def token s3cr3t-value"
    assert scrub(text) == f"rtsp://***@10.0.0.9/stream Authorization: Bearer {REDACTED} token {REDACTED}"
    data = {
        "broker": {"password": "x", "password_file": "/etc/pw"},
        "api": {"pull_token": ""},
        "l": [{"token": 1}],
    }
    assert redact(data) == {
        "broker": {"password": REDACTED, "password_file": "/etc/pw"},
        "api": {"pull_token": ""},
        "l": [{"token": REDACTED}],
    }


async def test_a_stuck_probe_is_abandoned_in_time() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await in_daemon_thread(lambda: time.sleep(3), 0.2)
    assert time.monotonic() - started < 1


# -- the command ---------------------------------------------------------------------------------


async def test_cli_json_and_exit_code(tmp_path: Path) -> None:
    """`hallhub doctor --json` in its own process: exit 1 on an error, JSON without secrets."""
    async with start_receiver("127.0.0.1:0", f"sqlite:///{tmp_path}/central.db", CENTRAL_TOKEN) as central:
        config = write_node(
            tmp_path, free_port(), [], central={"url": central.url, "token": "wrong-token-77aa01"}
        )
        for as_json in (True, False):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hub",
                "doctor",
                "--config",
                str(config),
                "--timeout",
                "3",
                *(["--json"] if as_json else []),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "COLUMNS": "300"},
            )
            out, err = await asyncio.wait_for(process.communicate(), 30)
            assert process.returncode == 1, err.decode()
            text = out.decode()
            assert_secrets_absent(text + err.decode())
            if as_json:
                doc = json.loads(text)
                assert doc["ok"] is False
                assert doc["config"]["broker"]["password"] == REDACTED
                levels = {(f["check"], f["level"]) for f in doc["findings"]}
                assert ("broker", "error") in levels
                assert ("central", "error") in levels
            else:
                assert "ERROR central[" in text
                assert "refused the node's token (HTTP 401: invalid token)" in text
                assert "doctor: " in text.splitlines()[-1]


def test_doctor_is_registered() -> None:
    result = run_hallhub("doctor", "--help")
    assert result.returncode == 0, result.stderr
    assert "--json" in result.stdout
    assert shutil.which("mosquitto_passwd") is not None
