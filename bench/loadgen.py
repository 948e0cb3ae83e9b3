"""A lean MQTT load generator for the ingest benchmark: many rating devices in one process.

Each device (a self-service terminal or a rating pad) is its own MQTT 3.1.1 connection (clean
session, QoS 1), speaking the §2 contract: it publishes `dev/{device}/rating` with a distinct
`msg_id`, waits for `dev/{device}/ack`, and resends an un-acked rating with the same `msg_id` after
`retry_s`, as firmware must. Topics come from `contract.topics` and a sample payload is checked
against `contract.mqtt.RatingPayload` at start.

The client is a small asyncio protocol with pre-built packet headers rather than paho or aiomqtt:
on 2 cores every microsecond the generator spends is taken from the hub it measures, and a pure
Python client costs several times more per message (the generator reports its own CPU use).

Two modes:
- closed: each pad keeps `window` ratings in flight and sends the next one on each ack (throughput);
- open: ratings are sent on a fixed schedule at `rate` per second, whatever the acks do (latency,
  measured from the scheduled send time so that a stalled generator or hub cannot hide delay).

Driven by `bench/ingest.py`: the spec is a JSON argument; the process prints `{"event": "ready"}`
once connected, starts at the wall-clock time given on stdin as `go <unix time>`, and prints its
result as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from contract.mqtt import RatingPayload, parse_device_payload  # noqa: E402
from contract.topics import Topics  # noqa: E402
from hub.mqtt.codec import (  # noqa: E402
    Connect,
    Framer,
    Subscribe,
    encode,
    encode_puback,
    encode_publish,
    parse_publish,
)

LEVEL_WEIGHTS = {5: 60, 4: 25, 3: 10, 2: 3, 1: 2}  # a plausible hall: 5 % bad reviews
MAX_ATTEMPTS = 10
CONNECT_TIMEOUT_S = 10.0


class MqttLink(asyncio.Protocol):
    """One MQTT 3.1.1 connection: CONNECT, SUBSCRIBE, QoS-1 PUBLISH, PUBACK of what it receives."""

    def __init__(self, client_id: str, on_message: Any) -> None:
        self.client_id = client_id
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[bytes] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pubacks = 0
        self.lost = False
        self._framer = Framer()
        self._next_id = 0
        self._can_write = asyncio.Event()
        self._can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(encode(Connect(self.client_id, clean_session=True, keepalive=0)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def writable(self) -> None:
        """Wait while the socket's send buffer is full."""
        await self._can_write.wait()

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    async def subscribe(self, topic: str) -> None:
        """SUBSCRIBE at QoS 1 and wait for the SUBACK."""
        assert self.transport is not None
        self.suback = asyncio.get_running_loop().create_future()
        self.transport.write(encode(Subscribe(self._packet_id(), ((topic, 1),))))
        codes = await asyncio.wait_for(self.suback, CONNECT_TIMEOUT_S)
        if 0x80 in codes:
            raise ConnectionError(f"{self.client_id}: subscription to {topic} refused")

    def publish(self, topic: bytes, payload: bytes, *, retain: bool = False) -> None:
        """PUBLISH at QoS 1 to `topic` (UTF-8 bytes); the broker's PUBACK is counted."""
        assert self.transport is not None
        self.transport.write(
            encode_publish(topic, payload, qos=1, retain=retain, packet_id=self._packet_id())
        )

    def data_received(self, data: bytes) -> None:
        for header, body in self._framer.feed(data):
            self._dispatch(header, body)

    def _dispatch(self, header: int, body: bytes) -> None:
        kind = header >> 4
        if kind == 3:
            topic, payload, qos, packet_id, _retain = parse_publish(header, body)
            if qos:
                assert self.transport is not None
                self.transport.write(encode_puback(packet_id))
            self.on_message(topic.encode(), payload)
        elif kind == 4:
            self.pubacks += 1
        elif kind == 2:
            if not self.connack.done():
                self.connack.set_result(body[1])
        elif kind == 9 and self.suback is not None and not self.suback.done():
            self.suback.set_result(body[2:])


async def open_link(link: MqttLink, host: str, port: int) -> None:
    """Open the TCP connection that `link` speaks MQTT over (its CONNECT goes out at once)."""

    def factory() -> MqttLink:
        return link

    await asyncio.get_running_loop().create_connection(factory, host, port)


@dataclass
class Pending:
    """A rating sent and not yet acked."""

    device: int
    scheduled: float
    sent: float
    level: int
    body: bytes
    attempts: int = 1


@dataclass
class Tally:
    """What the generator saw."""

    sent: int = 0
    resent: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    late_acks: int = 0
    errors: int = 0
    bad_acked: int = 0
    given_up: int = 0
    measured_acks: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    per_second: dict[int, int] = field(default_factory=dict)
    rejections: list[str] = field(default_factory=list)


class Generator:
    """The pads of one process and the schedule they follow."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.topics = Topics(spec["node_id"])
        self.devices: list[str] = list(spec["devices"])
        self.rating_topics = [self.topics.device(d, "rating").encode() for d in self.devices]
        self.links: list[MqttLink] = []
        self.pending: dict[str, Pending] = {}
        self.tally = Tally()
        self.run_id: str = spec["run_id"]
        self.random = random.Random(spec.get("seed", 1))
        self.levels = list(LEVEL_WEIGHTS)
        self.weights = list(LEVEL_WEIGHTS.values())
        self.counter = 0
        self.t0 = 0.0
        self.measure_from = 0.0
        self.measure_to = 0.0
        self.stop_sending = 0.0
        self.closed_loop = spec["mode"] == "closed"
        self._ts_second = -1
        self._ts_text = ""

    # -- connections ---------------------------------------------------------------------------

    async def connect_all(self) -> None:
        """Connect every pad, subscribe to its ack and error topics, publish its retained state."""
        for index, device in enumerate(self.devices):
            link = MqttLink(f"bench-{device}-{self.run_id}", self._receiver(index))
            await open_link(link, self.spec["host"], self.spec["port"])
            code = await asyncio.wait_for(link.connack, CONNECT_TIMEOUT_S)
            if code != 0:
                raise ConnectionError(f"{device}: broker refused the connection (code {code})")
            await link.subscribe(self.topics.ack(device))
            await link.subscribe(self.topics.error(device))
            state = json.dumps({"online": True, "kind": self.spec["kind"], "fw": "bench-1"}).encode()
            link.publish(self.topics.device(device, "state").encode(), state, retain=True)
            self.links.append(link)

    def _receiver(self, index: int) -> Any:
        def on_message(topic: bytes, payload: bytes) -> None:
            if topic.endswith(b"/ack"):
                self._on_ack(index, payload)
            else:
                self.tally.errors += 1

        return on_message

    # -- ratings -------------------------------------------------------------------------------

    def _timestamp(self) -> str:
        second = int(time.time())
        if second != self._ts_second:
            self._ts_second = second
            self._ts_text = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(second))
        return self._ts_text

    def _body(self, index: int, msg_id: str, level: int) -> bytes:
        rating: dict[str, Any] = {
            "msg_id": msg_id,
            "level": level,
            "case_no": f"BENCH{msg_id}",
            "item_code": "11370100MB0000000X",
            "ts": self._timestamp(),
        }
        if level <= 2:
            rating["reasons"] = ["R1"]
        return json.dumps(rating, separators=(",", ":")).encode()

    def send_new(self, index: int, scheduled: float) -> None:
        """Send a new rating from pad `index`, remembering when it was due."""
        self.counter += 1
        msg_id = f"{self.run_id}-{index}-{self.counter}"
        level = self.random.choices(self.levels, self.weights)[0]
        body = self._body(index, msg_id, level)
        now = time.monotonic()
        self.pending[msg_id] = Pending(index, scheduled, now, level, body)
        self.links[index].publish(self.rating_topics[index], body)
        self.tally.sent += 1

    def _on_ack(self, index: int, payload: bytes) -> None:
        now = time.monotonic()
        ack = json.loads(payload)
        entry = self.pending.pop(ack.get("msg_id"), None)
        tally = self.tally
        if entry is None:
            tally.late_acks += 1
            return
        status = ack.get("status")
        if status == "stored":
            tally.stored += 1
        elif status == "duplicate":
            tally.duplicate += 1
        else:
            tally.rejected += 1
            if len(tally.rejections) < 5:
                tally.rejections.append(str(ack.get("error")))
        if status in ("stored", "duplicate") and entry.level <= 2:
            tally.bad_acked += 1
        if self.measure_from <= now <= self.measure_to:
            second = int(now - self.t0)
            tally.per_second[second] = tally.per_second.get(second, 0) + 1
        if self.measure_from <= entry.scheduled <= self.measure_to:
            tally.measured_acks += 1
            tally.latencies_ms.append(round((now - entry.scheduled) * 1000, 3))
        if self.closed_loop and now < self.stop_sending:
            self.send_new(index, now)

    async def resend_loop(self, retry_s: float) -> None:
        """Resend un-acked ratings with the same msg_id, as firmware does; give up after a few tries."""
        while True:
            await asyncio.sleep(min(0.5, retry_s / 2))
            now = time.monotonic()
            for msg_id, entry in list(self.pending.items()):
                if now - entry.sent < retry_s:
                    continue
                if entry.attempts >= MAX_ATTEMPTS:
                    del self.pending[msg_id]
                    self.tally.given_up += 1
                    continue
                entry.attempts += 1
                entry.sent = now
                self.links[entry.device].publish(self.rating_topics[entry.device], entry.body)
                self.tally.resent += 1

    async def run_closed(self, window: int) -> None:
        """Fill every pad's window; acks keep it full until `stop_sending`."""
        now = time.monotonic()
        for _ in range(window):
            for index in range(len(self.links)):
                self.send_new(index, now)
        await asyncio.sleep(max(0.0, self.stop_sending - time.monotonic()))

    async def run_open(self, rate: float) -> None:
        """Send on a fixed schedule, round-robin over the pads, catching up in bursts if late."""
        interval = 1.0 / rate
        count = 0
        pads = len(self.links)
        while True:
            due = self.t0 + count * interval
            if due >= self.stop_sending:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            link = self.links[count % pads]
            await link.writable()
            self.send_new(count % pads, due)
            count += 1


async def main_async(spec: dict[str, Any]) -> dict[str, Any]:
    """Connect, report ready, wait for `go`, run the schedule, drain, and return the tally."""
    sample = Generator(spec)._body(0, "sample", 1)
    parse_device_payload(RatingPayload, json.loads(sample))  # the load is the contract's payload
    generator = Generator(spec)
    await generator.connect_all()
    print(json.dumps({"event": "ready"}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start_wall = float(line.split()[1])
    generator.t0 = time.monotonic() + (start_wall - time.time())
    generator.measure_from = generator.t0 + spec["warmup_s"]
    generator.measure_to = generator.measure_from + spec["duration_s"]
    generator.stop_sending = generator.measure_to
    await asyncio.sleep(max(0.0, generator.t0 - time.monotonic()))
    cpu_start = time.process_time()
    resender = asyncio.create_task(generator.resend_loop(spec["retry_s"]))
    if generator.closed_loop:
        await generator.run_closed(int(spec["window"]))
    else:
        await generator.run_open(float(spec["rate"]))
    sent_at_end = generator.tally.sent
    drain_until = time.monotonic() + spec["drain_s"]
    while generator.pending and time.monotonic() < drain_until:
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu_start
    resender.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await resender
    tally = generator.tally
    lost = sum(link.lost for link in generator.links)
    for link in generator.links:
        if link.transport is not None:
            link.transport.write(b"\xe0\x00")  # DISCONNECT
            link.transport.close()
    return {
        "event": "result",
        "devices": len(generator.devices),
        "sent": tally.sent,
        "sent_before_stop": sent_at_end,
        "resent": tally.resent,
        "stored": tally.stored,
        "duplicate": tally.duplicate,
        "rejected": tally.rejected,
        "rejections": tally.rejections,
        "late_acks": tally.late_acks,
        "errors": tally.errors,
        "bad_acked": tally.bad_acked,
        "given_up": tally.given_up,
        "unacked": len(generator.pending),
        "measured_acks": tally.measured_acks,
        "acks_per_second": {str(k): v for k, v in sorted(tally.per_second.items())},
        "latencies_ms": tally.latencies_ms,
        "cpu_s": round(cpu, 3),
        "wall_s": round(time.monotonic() - generator.t0, 3),
        "broker_pubacks": sum(link.pubacks for link in generator.links),
        "connections_lost": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="the run's spec as JSON (see bench/ingest.py)")
    spec = json.loads(parser.parse_args().spec)
    result = asyncio.run(main_async(spec))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
