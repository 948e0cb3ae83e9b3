"""MQTT client foundations side by side: the hub's receive-and-ack pattern, one client process each.

Against a private Mosquitto on a free loopback port (`max_queued_messages 0`, anonymous), one
publisher process (bench/loadgen.py's lean `MqttLink`) sends `--messages` QoS-1 JSON ratings over
50 device topics as fast as it can. The client under test, in a process of its own, is subscribed
at QoS 1 with a persistent session (clean_session false) and, for every message, publishes one QoS-1
ack to that device's ack topic without awaiting it on its own, as the hub's gateway does. The figure
is messages per second from the first message to "all received and every ack PUBACKed", and the
client process's CPU seconds per message over the same span (`resource.getrusage`, all threads).

Clients (`--clients`, in this order, rotated each round so that none always runs first):
- (`fastpaho`, the hub's earlier paho-with-private-overrides path, was measured against these and
  removed with it; its figures stay in docs/benchmarks.md);
- `aiomqtt-tasks`: aiomqtt's public API only: `client.messages` and a task per `client.publish`;
- `aiomqtt-gather`: the same, the publishes of what is queued gathered in one await (pipelined);
- `gmqtt`: gmqtt 0.8 (MQTT 3.1.1), a sync callback with its default optimistic PUBACK;
- `gmqtt-async`: gmqtt with an async callback and `optimistic_acknowledgement=False`, so that the
  PUBACK follows the callback as the hub needs;
- `hubmqtt`: hub.mqtt, the client of our own (sans-I/O codec + asyncio protocol).

Every wait is bounded (`--timeout` per client run). Run from the repository root:
    .venv/bin/python bench/mqtt_clients.py --messages 20000 --rounds 3
"""

# Each client process imports only the library it measures (gmqtt is no project dependency), so the
# imports of the clients under test are inside their functions.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    REPO,
    Figure,
    machine_info,
    print_figures,
    start_broker,
    wait_for_quiet,
    work_dir,
    write_result,
)
from loadgen import MqttLink, _utf8, open_link

CLIENTS = ("aiomqtt-tasks", "aiomqtt-gather", "gmqtt", "gmqtt-async", "hubmqtt")
DEVICES = 50
SUBSCRIPTION = "bench/+/rating"
ACK_PAYLOAD = b'{"msg_id":"0123456789abcdef","id":"0190f1f2-0000-7000-8000-000000000000","status":"stored"}'
POLL_S = 0.005
Result = dict[str, Any]


def _ack_topic(topic: str) -> str:
    """bench/{device}/rating -> bench/{device}/ack."""
    return topic[: -len("rating")] + "ack"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Tally:
    """What the client under test saw, and when."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.first = 0.0
        self.last_received = 0.0
        self.cpu_start = 0.0

    def got(self) -> None:
        """Count one message."""
        if not self.received:
            self.first = time.monotonic()
        self.received += 1
        if self.received == self.expected:
            self.last_received = time.monotonic()


async def _until(done: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `done` every few ms until it holds or `timeout_s` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


def _ready() -> None:
    print(json.dumps({"event": "ready"}), flush=True)


def _result(tally: Tally, completed: bool, in_flight: int) -> Result:
    done = time.monotonic()
    cpu = _cpu_s() - tally.cpu_start
    span = done - tally.first if tally.first else float("nan")
    return {
        "event": "result",
        "completed": completed,
        "received": tally.received,
        "acks_unconfirmed": in_flight,
        "span_s": round(span, 4),
        "receive_span_s": round(tally.last_received - tally.first, 4) if tally.last_received else None,
        "rate": round(tally.received / span, 1) if completed else 0.0,
        "cpu_s": round(cpu, 4),
        "cpu_us_per_msg": round(cpu / max(1, tally.received) * 1e6, 1),
    }


# -- the clients under test --------------------------------------------------------------------------


async def _aiomqtt_client(port: int, cid: str) -> Any:
    import aiomqtt

    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=cid,
        clean_session=False,
        keepalive=60,
        max_inflight_messages=0,  # no client-side cap: paho rescans its queue on every PUBACK with one
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


async def run_aiomqtt(port: int, n: int, cid: str, timeout_s: float, *, gather: bool) -> Result:
    """aiomqtt's public API: the messages iterator and `publish`, tasks or gathered batches."""
    tally = Tally(n)
    client = await _aiomqtt_client(port, cid)
    confirmed = 0
    tasks: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        nonlocal confirmed
        tasks.discard(task)
        if not task.cancelled() and task.exception() is None:
            confirmed += 1

    async def read() -> None:
        nonlocal confirmed
        batch: list[Awaitable[None]] = []
        async for message in client.messages:
            tally.got()
            coro = client.publish(_ack_topic(message.topic.value), ACK_PAYLOAD, qos=1)
            if not gather:
                task = asyncio.create_task(coro)
                tasks.add(task)
                task.add_done_callback(done)
            else:
                batch.append(coro)
                if not len(client.messages) or len(batch) >= 500:
                    await asyncio.gather(*batch)
                    confirmed += len(batch)
                    batch = []
            if tally.received >= n:
                break
        if batch:
            await asyncio.gather(*batch)
            confirmed += len(batch)

    async with client:
        client.pending_calls_threshold = 10 * n
        await client.subscribe(SUBSCRIPTION, qos=1)
        tally.cpu_start = _cpu_s()
        _ready()
        reader = asyncio.create_task(read())
        ok = await _until(lambda: confirmed >= n, timeout_s)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        for task in list(tasks):
            task.cancel()
        return _result(tally, ok, n - confirmed)


async def run_gmqtt(port: int, n: int, cid: str, timeout_s: float, *, optimistic: bool) -> Result:
    """gmqtt over MQTT 3.1.1; acks published from its message callback."""
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv311

    tally = Tally(n)
    client = gmqtt.Client(cid, clean_session=False, optimistic_acknowledgement=optimistic)
    topics: dict[str, str] = {}

    def on_message(_client: Any, topic: str, _payload: bytes, _qos: int, _properties: Any) -> int:
        tally.got()
        ack = topics.get(topic)
        if ack is None:
            ack = topics[topic] = _ack_topic(topic)
        client.publish(ack, ACK_PAYLOAD, qos=1)
        return 0

    async def on_message_async(_client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        return on_message(_client, topic, payload, qos, properties)

    client.on_message = on_message if optimistic else on_message_async
    await client.connect("127.0.0.1", port, keepalive=60, version=MQTTv311)
    try:
        client.subscribe(SUBSCRIPTION, qos=1)
        await asyncio.sleep(0.5)  # gmqtt's subscribe is not awaitable; the SUBACK comes meanwhile
        tally.cpu_start = _cpu_s()
        _ready()

        def in_flight() -> int:
            storage = client._persistent_storage
            return 0 if storage.is_empty else len(storage.get_all())

        ok = await _until(lambda: tally.received >= n and in_flight() == 0, timeout_s)
        return _result(tally, ok, in_flight())
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 5)


async def run_hubmqtt(port: int, n: int, cid: str, timeout_s: float) -> Result:
    """hub.mqtt: a synchronous callback and `publish_nowait`, like the gateway's path."""
    from hub.mqtt import Client

    tally = Tally(n)
    topics: dict[str, bytes] = {}
    client: Client | None = None

    def handler(topic: str, _payload: bytes, _retain: bool) -> None:
        tally.got()
        ack = topics.get(topic)
        if ack is None:
            ack = topics[topic] = _ack_topic(topic).encode()
        assert client is not None
        client.publish_nowait(ack, ACK_PAYLOAD)

    client = Client("127.0.0.1", port, identifier=cid, clean_session=False, keepalive=60)
    client.message_handler = handler
    async with client:
        await client.subscribe(SUBSCRIPTION, qos=1)
        tally.cpu_start = _cpu_s()
        _ready()
        live = client
        ok = await _until(lambda: tally.received >= n and not live.in_flight, timeout_s)
        return _result(tally, ok, client.in_flight)


async def client_main(impl: str, port: int, n: int, cid: str, timeout_s: float) -> Result:
    """Run one client under test; returns its result."""
    if impl in ("aiomqtt-tasks", "aiomqtt-gather"):
        return await run_aiomqtt(port, n, cid, timeout_s, gather=impl == "aiomqtt-gather")
    if impl in ("gmqtt", "gmqtt-async"):
        return await run_gmqtt(port, n, cid, timeout_s, optimistic=impl == "gmqtt")
    if impl == "hubmqtt":
        return await run_hubmqtt(port, n, cid, timeout_s)
    raise SystemExit(f"unknown client {impl!r}; one of {', '.join(CLIENTS)}")


# -- the publisher ---------------------------------------------------------------------------------


async def publisher_main(port: int, n: int, cid: str, timeout_s: float) -> Result:
    """Connect, say ready, wait for `go` on stdin, publish `n` QoS-1 ratings, wait for every PUBACK."""
    link = MqttLink(cid, lambda _topic, _payload: None)
    await open_link(link, "127.0.0.1", port)
    code = await asyncio.wait_for(link.connack, 10)
    if code != 0:
        raise ConnectionError(f"publisher refused: {code}")
    topics = [_utf8(f"bench/dev{i:03d}/rating") for i in range(DEVICES)]
    _ready()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.monotonic()
    cpu = _cpu_s()
    for i in range(n):
        body = b'{"msg_id":"m%d","level":%d,"case_no":"B-%d","window":"W%d"}' % (i, 1 + i % 5, i, i % DEVICES)
        link.publish(topics[i % DEVICES], body)
        if i % 200 == 199:
            await link.writable()
            await asyncio.sleep(0)
    sent = time.monotonic() - started
    ok = await _until(lambda: link.pubacks >= n or link.lost, timeout_s)
    if link.transport is not None:
        link.transport.write(b"\xe0\x00")
        link.transport.close()
    return {
        "event": "result",
        "completed": ok and link.pubacks >= n,
        "publish_rate": round(n / sent, 1),
        "cpu_s": round(_cpu_s() - cpu, 4),
    }


# -- the driver ------------------------------------------------------------------------------------


def _read_event(proc: subprocess.Popen[str], timeout_s: float) -> Result:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                return dict(json.loads(line))
            continue
        if proc.poll() is not None:
            break
    raise RuntimeError(f"process {proc.args!r} gave no answer within {timeout_s:.0f} s")


def _spawn(role: str, impl: str, port: int, n: int, cid: str, timeout_s: float) -> subprocess.Popen[str]:
    args = [PYTHON, __file__, "--role", role, "--impl", impl, "--port", str(port)]
    args += ["--messages", str(n), "--client-id", cid, "--timeout", str(timeout_s)]
    return subprocess.Popen(args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


async def _clear_session(port: int, cid: str) -> None:
    """Connect as `cid` with a clean session, ending the persistent one the broker keeps for it.

    Otherwise every finished run's session would stay subscribed and queue every later run's messages.
    """
    link = MqttLink(cid, lambda _topic, _payload: None)
    await open_link(link, "127.0.0.1", port)
    await asyncio.wait_for(link.connack, 10)
    assert link.transport is not None
    link.transport.write(b"\xe0\x00")
    link.transport.close()


def measure_one(impl: str, port: int, n: int, tag: str, timeout_s: float) -> Result:
    """One client run: client subscribed, publisher connected, go, both results."""
    cid = f"under-test-{tag}"
    try:
        return _measure_one(impl, port, n, cid, tag, timeout_s)
    finally:
        asyncio.run(_clear_session(port, cid))


def _measure_one(impl: str, port: int, n: int, cid: str, tag: str, timeout_s: float) -> Result:
    client = _spawn("client", impl, port, n, cid, timeout_s)
    publisher: subprocess.Popen[str] | None = None
    try:
        _read_event(client, 30)
        publisher = _spawn("publisher", "loadgen", port, n, f"publisher-{tag}", timeout_s)
        _read_event(publisher, 30)
        assert publisher.stdin is not None
        publisher.stdin.write("go\n")
        publisher.stdin.flush()
        result = _read_event(client, timeout_s + 30)
        result["publisher"] = _read_event(publisher, timeout_s + 30)
        return result
    finally:
        _stop(client)
        if publisher is not None:
            _stop(publisher)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated, of: " + ", ".join(CLIENTS)
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a client run may take")
    parser.add_argument("--role", choices=("driver", "client", "publisher"), default="driver")
    parser.add_argument("--impl", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--client-id", default="bench")
    args = parser.parse_args()
    if args.role == "client":
        result = asyncio.run(client_main(args.impl, args.port, args.messages, args.client_id, args.timeout))
        print(json.dumps(result), flush=True)
        return
    if args.role == "publisher":
        result = asyncio.run(publisher_main(args.port, args.messages, args.client_id, args.timeout))
        print(json.dumps(result), flush=True)
        return
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    runs: dict[str, list[Result]] = {c: [] for c in clients}
    loads: list[float] = []
    with work_dir("mqtt-clients") as folder, start_broker(folder / "broker") as broker:
        for round_no in range(args.rounds):
            order = clients[round_no % len(clients) :] + clients[: round_no % len(clients)]
            for impl in order:
                loads.append(wait_for_quiet(max_wait_s=20))
                result = measure_one(impl, broker.port, args.messages, f"{impl}-{round_no}", args.timeout)
                runs[impl].append(result)
                print(
                    f"round {round_no + 1} {impl:<15} {result['rate']:>9,.0f} msgs/s "
                    f"{result['cpu_us_per_msg']:>7.1f} us CPU/msg  completed={result['completed']} "
                    f"(publisher {result['publisher']['publish_rate']:,.0f}/s)",
                    flush=True,
                )
    figures: dict[str, Figure] = {}
    summary: dict[str, Any] = {}
    for impl, results in runs.items():
        rates = [r["rate"] for r in results]
        cpus = [r["cpu_us_per_msg"] for r in results]
        summary[impl] = {"rate_median": statistics.median(rates), "cpu_us_median": statistics.median(cpus)}
        key = impl.replace("-", "_")
        figures[f"mqtt_clients.{key}.rate"] = Figure(
            statistics.median(rates), "msgs/s", "higher", f"{impl}: receive + ack, msgs/s"
        )
        figures[f"mqtt_clients.{key}.cpu"] = Figure(
            statistics.median(cpus), "us/msg", "lower", f"{impl}: client CPU per message"
        )
    print_figures(f"MQTT clients, {args.messages:,} QoS-1 messages, medians of {args.rounds} rounds", figures)
    write_result(
        "mqtt_clients",
        ("python bench/mqtt_clients.py " + " ".join(sys.argv[1:])).strip(),
        figures,
        {
            "runs": runs,
            "summary": summary,
            "machine_busy_cores_before_each": loads,
            "machine": machine_info(),
        },
    )


if __name__ == "__main__":
    main()
