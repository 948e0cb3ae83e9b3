"""Floods and malformed input at volume: the hub rejects and counts, never crashes, serves the rest."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from drivers.keypad.codec import Key, encode_frame, make_frame
from drivers.keypad.simulator import SimulatedKeypad, SimulatedLine
from hub import mqtt
from hub.app import Hub
from hub.ops.broker import MosquittoBroker
from hub.simulate.mqtt_device import SimulatedMqttDevice
from tests.support.hub import NODE_ID, PULL_TOKEN, node_config, running_hub, terminals
from tests.support.mqtt import Observer, observe

ROOT = f"hall/v1/{NODE_ID}"


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def scrape(hub: Hub) -> str:
    async with aiohttp.ClientSession() as http:
        return await (await http.get(f"http://127.0.0.1:{hub.api_port}/metrics")).text()


async def test_a_device_flooding_1000_messages_a_second_does_not_starve_others(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port, terminals(2))
    async with running_hub(config) as hub:
        async with (
            aiomqtt.Client("127.0.0.1", broker.port, identifier="flooder") as flooder,
            SimulatedMqttDevice(
                "127.0.0.1", broker.port, NODE_ID, "terminal-01", retry_interval_s=1.0, max_attempts=3
            ) as normal,
        ):

            async def flood() -> None:
                for second in range(3):
                    for n in range(1000):
                        body = json.dumps({"msg_id": f"f{second}-{n}", "level": 5})
                        await flooder.publish(f"{ROOT}/dev/terminal-00/rating", body, qos=0)
                    await asyncio.sleep(0.05)

            flooding = asyncio.create_task(flood())
            acks = [await normal.rate(4, msg_id=f"n{n}") for n in range(20)]
            await flooding
        assert [a.status for a in acks] == ["stored"] * 20, "the normal device was served throughout"
        text = await scrape(hub)
        limited = metric(text, 'hallhub_rejects_total{reason="rate_limited"}')
        stored = (await hub.outbox.stats()).pending_by_kind["evaluation"]
        assert limited > 0, "the flooder's excess was counted"
        assert stored - 20 + limited <= 3000
        status = await hub.node_status.status()
        flooder_state = next(d for d in status["devices"] if d["id"] == "terminal-00")
        assert flooder_state["errors"]["rate_limited"] == limited


def answers(seen: Observer, leaf: str) -> list[dict[str, Any]]:
    """Everything the hub sent on every device's `leaf` topic (`ack`, `error`)."""
    return [m for topic, got in list(seen.messages.items()) if topic.endswith(f"/{leaf}") for m in got]


async def wait_for_answers(seen: Observer, leaf: str, count: int, timeout: float) -> list[dict[str, Any]]:
    """At least `count` messages on the devices' `leaf` topics, within `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while len(answers(seen, leaf)) < count:
            await asyncio.sleep(0.05)
    return answers(seen, leaf)


# Numbers no field can hold: beyond Python's 4,300-digit int limit, beyond 30 digits, infinite, NaN.
HUGE_NUMBERS = ("9" * 5000, "1" * 4301, "-" + "1" * 31, "1e999", "-1e400", "0." + "5" * 80)
NOT_NUMBERS = ("NaN", "Infinity", "-Infinity")
_MARK = "\u0000number\u0000"


def with_number(body: dict[str, Any], field: str, number: str) -> bytes:
    """`body` with `field` (or `reasons[0]`) set to the JSON number text `number`, as it is."""
    marked = {**body, "reasons": [_MARK]} if field == "reasons[0]" else {**body, field: _MARK}
    return json.dumps(marked).replace(json.dumps(_MARK), number).encode()


def mutate(rng: random.Random, valid: bytes) -> bytes:
    """One malformed or odd payload: flipped bits, cuts, junk, wrong types, huge or deep values."""
    choice = rng.randrange(9)
    data = bytearray(valid)
    if choice == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 1:
        return bytes(data[: rng.randrange(len(data) + 1)])
    if choice == 2:
        return rng.randbytes(rng.randint(0, 64))
    if choice == 3:
        wrong: list[Any] = [
            None,
            True,
            -1,
            1e308,
            "5",
            [],
            {},
            "x" * 70,
            [1, 2],
            {"a": 1},
            "\ud800",
            ["\udc00"],
        ]
        body = json.loads(valid)
        body[rng.choice([*body.keys(), "extra"])] = rng.choice(wrong)
        return json.dumps(body).encode()
    if choice == 4:
        return b"[" * rng.randint(1, 3000) + b"]" * rng.randint(0, 3000)
    if choice == 5:
        return json.dumps({"msg_id": "m" * rng.randint(0, 80), "level": rng.randint(-3, 9)}).encode()
    if choice == 6:
        return "评价".encode("gbk") + bytes(data)
    if choice == 7:
        body = json.loads(valid)
        return with_number(body, rng.choice([*body, "extra"]), rng.choice(HUGE_NUMBERS + NOT_NUMBERS))
    return valid


async def test_100000_mutated_mqtt_payloads(tmp_path: Path, broker: MosquittoBroker) -> None:
    rng = random.Random(20261122)
    devices = [*terminals(4), {"id": "qr-00", "kind": "qr", "transport": "mqtt"}]
    config = node_config(
        tmp_path / "data",
        broker.port,
        devices,
        limits={"device_msgs_per_s": 100000.0, "device_burst": 100000},
    )
    valid = {
        "rating": json.dumps(
            {"msg_id": "v", "level": 3, "reasons": ["R1"], "comment": "好", "ts": "2026-11-22T09:30:00+08:00"}
        ).encode(),
        "scan": json.dumps({"msg_id": "v", "data": "https://x/?case_no=1", "symbology": "QRCode"}).encode(),
        "print": json.dumps({"msg_id": "v", "job_id": "j", "state": "done", "pages": 1}).encode(),
        "health": json.dumps({"paper": "low", "jam": False, "temp_c": 30}).encode(),
        "state": json.dumps({"online": True, "fw": "1"}).encode(),
    }
    sent = 0
    async with running_hub(config) as hub:
        # The hub's own MQTT client: aiomqtt (paho underneath) spent more CPU than the hub under test.
        async with mqtt.Client("127.0.0.1", broker.port, identifier="fuzzer") as fuzzer:
            for batch in range(100):
                publishes = []
                for _ in range(1000):
                    leaf = rng.choice(list(valid))
                    device = "qr-00" if leaf == "scan" else f"terminal-{rng.randrange(4):02d}"
                    if rng.random() < 0.02:
                        device = "ghost"
                    publishes.append(
                        fuzzer.publish(f"{ROOT}/dev/{device}/{leaf}", mutate(rng, valid[leaf]), qos=1)
                    )
                await asyncio.gather(*publishes)
                sent += len(publishes)
                assert batch < 100
        async with asyncio.timeout(120):
            while True:
                text = await scrape(hub)
                handled = (
                    metric(text, "hallhub_rejects_total")
                    + metric(text, 'hallhub_acks_total{status="stored"}')
                    + metric(text, 'hallhub_acks_total{status="duplicate"}')
                    + metric(text, 'hallhub_acks_total{status="rejected"}')
                )
                if handled >= sent * 0.5 and len(hub.gateway._tasks) == 0:
                    break
                await asyncio.sleep(0.5)
        async with SimulatedMqttDevice("127.0.0.1", broker.port, NODE_ID, "terminal-00") as terminal:
            assert (await terminal.rate(5, msg_id="after-fuzz")).status == "stored"
        assert await hub.node_status.problems() == []
    assert sent == 100_000
    rejects = metric(text, "hallhub_rejects_total")
    assert rejects > 30_000, "most mutated payloads were refused and counted"


async def test_huge_numbers_and_retained_flags_at_volume(tmp_path: Path, broker: MosquittoBroker) -> None:
    """3,000 acked messages each holding a number no field can hold, a fifth of them retained: each is
    answered by field (a `rejected` ack) or on the error topic (NaN and the like), never a traceback;
    after a restart the broker re-sends the retained ones, and the hub refuses them, acking none."""
    rng = random.Random(4300)
    devices = [*terminals(4), {"id": "qr-00", "kind": "qr", "transport": "mqtt"}]
    limits = {"device_msgs_per_s": 100000.0, "device_burst": 100000}
    config = node_config(tmp_path / "data", broker.port, devices, limits=limits)
    bodies: dict[str, tuple[dict[str, Any], list[str]]] = {
        "rating": ({"level": 3, "reasons": ["R1"]}, ["level", "session", "reasons[0]", "extra"]),
        "print": ({"job_id": "j", "state": "done"}, ["pages", "job_id", "extra"]),
        "scan": ({"data": "PICKUP-1"}, ["symbology", "extra"]),
    }
    expected_acks: dict[str, str] = {}  # msg_id -> the field its rejection must name
    expected_errors = 0
    retained: dict[str, bytes] = {}  # topic -> the last payload retained there
    async with observe(broker.port, f"{ROOT}/dev/+/ack", f"{ROOT}/dev/+/error") as seen:
        async with (
            running_hub(config) as hub,
            aiomqtt.Client(
                "127.0.0.1", broker.port, identifier="fuzzer", max_inflight_messages=1000
            ) as fuzzer,
        ):
            fuzzer.pending_calls_threshold = 2000
            for batch in range(3):
                publishes = []
                for n in range(1000):
                    leaf = rng.choice(list(bodies))
                    device = "qr-00" if leaf == "scan" else f"terminal-{rng.randrange(4):02d}"
                    base, fields = bodies[leaf]
                    field = rng.choice(fields)
                    msg_id = f"h{batch}-{n}"
                    if rng.random() < 0.1:
                        payload = with_number({"msg_id": msg_id, **base}, field, rng.choice(NOT_NUMBERS))
                        expected_errors += 1
                    else:
                        payload = with_number({"msg_id": msg_id, **base}, field, rng.choice(HUGE_NUMBERS))
                        expected_acks[msg_id] = field
                    topic = f"{ROOT}/dev/{device}/{leaf}"
                    retain = rng.random() < 0.2
                    if retain:
                        retained[topic] = payload
                    publishes.append(fuzzer.publish(topic, payload, qos=1, retain=retain))
                await asyncio.gather(*publishes)
            acks = await wait_for_answers(seen, "ack", len(expected_acks), timeout=60)
            errors = await wait_for_answers(seen, "error", expected_errors, timeout=30)
            assert await hub.node_status.problems() == []
        wrong = [
            (a["msg_id"], a["error"])
            for a in acks
            if a["status"] != "rejected"
            or not a["error"].startswith(f"{expected_acks[a['msg_id']]}: number ")
        ]
        assert wrong == [], wrong[:5]
        assert sorted(a["msg_id"] for a in acks) == sorted(expected_acks), "one answer each"
        assert all(e["error"].startswith("payload is not JSON the hub reads: ") for e in errors)

        async with running_hub(config) as hub:
            errors = await wait_for_answers(seen, "error", expected_errors + len(retained), timeout=15)
            await asyncio.sleep(0.3)  # an ack would follow its refusal at once
            text = await scrape(hub)
            assert len(answers(seen, "ack")) == len(expected_acks), "no retained copy was acked"
        refusals = [e for e in errors if "retained" in e["error"]]
        assert sorted(e["topic"] for e in refusals) == sorted(retained)
        assert len(errors) == expected_errors + len(retained)
        assert metric(text, 'hallhub_rejects_total{reason="retained"}') == len(retained)


async def test_serial_noise_mutated_frames_and_a_key_flood(tmp_path: Path, broker: MosquittoBroker) -> None:
    rng = random.Random(7)
    left, right = SimulatedKeypad(1), SimulatedKeypad(2)
    port = tmp_path / "ttyKP0"
    devices = [
        {
            "id": "kp-01",
            "kind": "keypad",
            "transport": "serial",
            "port": str(port),
            "address": 1,
            "window": "01",
        },
        {
            "id": "kp-02",
            "kind": "keypad",
            "transport": "serial",
            "port": str(port),
            "address": 2,
            "window": "02",
        },
    ]
    config = node_config(tmp_path / "data", broker.port, devices, evaluation={"max_free_per_minute": 6})
    async with SimulatedLine(port, [left, right]) as line, running_hub(config) as hub:
        async with asyncio.timeout(10):
            while not (hub.registry.get("kp-01").online and hub.registry.get("kp-02").online):  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        valid = encode_frame(make_frame(9, 1, Key(0, 5, ())))
        for n in range(100_000):
            frame = bytearray(valid)
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            line.inject(bytes(frame) + rng.randbytes(rng.randint(0, 3)))
            if n % 1000 == 0:
                await asyncio.sleep(0.01)
        presses = [right.free_rating(1 + n % 5) for n in range(30)]
        assert all([await p.wait() for p in presses])
        assert await left.free_rating(4).wait(), "the other keypad on the line is served"
        text = await scrape(hub)
        await asyncio.sleep(0.2)
        records = (await hub.outbox.pending_page(0, 1000, "evaluation"))[0]
    flags = [json.loads(r)["data"]["flags"] for r in records if json.loads(r)["data"]["device_id"] == "kp-02"]
    assert len(flags) == 30
    assert flags.count(["suspect"]) == 24, "beyond 6 free ratings a minute, presses are kept but flagged"
    assert metric(text, "hallhub_frames_dropped_total") > 1000


def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes and read one answer: until its body is complete, the server closes, or 5 s pass.

    The write side stays open, since a server may drop a half-closed connection before answering.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            head, found, body = answer.partition(b"\r\n\r\n")
            if found and len(body) >= _content_length(head):
                break
    return answer


def _post(path: bytes, body: bytes, host: bytes, content_type: bytes, token: bytes = b"") -> bytes:
    """A raw POST as a hostile client writes it (whatever Host, type and body it likes)."""
    auth = b"Authorization: Bearer " + token + b"\r\n" if token else b""
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\n"
        + auth
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


async def test_broken_http_requests(tmp_path: Path, broker: MosquittoBroker) -> None:
    rng = random.Random(3)
    config = node_config(tmp_path / "data", broker.port, terminals(1))
    async with running_hub(config) as hub:
        port = hub.api_port
        assert port is not None
        statuses: list[bytes] = []
        broken = [
            b"GET /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
            b"POST /v1/records/ack HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}",
            b"POST /v1/records/ack HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /v1/windows/01/evaluate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"y" * 20000 + b"\r\n\r\n",
        ]
        for _ in range(300):
            junk = rng.randbytes(rng.randint(1, 300))
            broken.append(
                b"POST /v1/records/ack HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(junk) + junk
            )
        for request in broken:
            answer = await asyncio.to_thread(raw_http, port, request)
            statuses.append(answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b"closed")
        assert statuses.count(b"closed") < len(statuses) // 10, "the hub should answer, not just hang up"
        assert b"500" not in statuses
        token_answer = await asyncio.to_thread(raw_http, port, broken[0])
        assert token_answer.startswith(b"HTTP/1.1 401"), token_answer[:200]
        assert b"wrong token" in token_answer
        assert set(statuses) <= {b"400", b"401", b"404", b"405", b"413", b"431", b"closed"}
        # The §9 shapes: numbers no field holds, foreign Hosts, cross-site form posts, at volume.
        hostile: list[tuple[bytes, bytes]] = []
        for n in range(200):
            digits = b"9" * rng.choice((31, 400, 4301, 20000))
            body = b'{"request_id": "r%d", "timeout_s": %s}' % (n, digits)
            hostile.append(
                (_post(b"/v1/windows/w0/evaluate", body, b"127.0.0.1", b"application/json"), b"400")
            )
            host = rng.choice((b"evil.example", b"10.9.9.9:8780", b"localhost.evil.example"))
            hostile.append(
                (_post(b"/v1/windows/w0/evaluate", b'{"request_id": "x"}', host, b"application/json"), b"421")
            )
            hostile.append((_post(b"/v1/alerts/a/ack", b"by=x", b"127.0.0.1", b"text/plain"), b"415"))
            upto = b'{"upto": %s}' % digits
            hostile.append(
                (
                    _post(b"/v1/records/ack", upto, b"127.0.0.1", b"application/json", PULL_TOKEN.encode()),
                    b"400",
                )
            )
        for request, expected in hostile:
            answer = await asyncio.to_thread(raw_http, port, request)
            assert answer.startswith(b"HTTP/1.1 " + expected), (request[:120], answer[:200])
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status == 200
