"""The machine-readable contracts: docs/openapi.json and docs/asyncapi.json are what the contract's
models generate, the hub and the receiver serve theirs, real answers conform (schemathesis against a
running hub and receiver, loopback, a bounded number of examples) and the AsyncAPI channels are the
topics a real hub subscribes to and publishes on, through a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import aiohttp
import aiomqtt
import jsonschema

from contract import docs
from contract.asyncapi import CHANNELS, asyncapi_document
from contract.openapi import openapi_document
from hub import __version__
from hub.ops.broker import MosquittoBroker
from sync.receiver import start_receiver
from tests.support.hub import NODE_ID, node_config, running_hub, terminals
from tests.support.mqtt import observe

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = "8"
"""Examples per operation: enough to reach every body model's edges, bounded for CI."""


def test_the_committed_documents_are_the_generated_ones(tmp_path: Path) -> None:
    assert docs.main(["--check"]) == 0, "run: python -m contract.docs"
    # The check is not blind: a hand edit is caught.
    for path, text in docs.documents().items():
        (tmp_path / path.name).write_text(text.replace('"3.', '"9.', 1))
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 1


async def _schemathesis(url: str, *extra: str) -> tuple[int, str]:
    """`schemathesis run` against `url` (an /openapi.json), bounded; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        url,
        "--max-examples",
        MAX_EXAMPLES,
        "--checks",
        "not_a_server_error,response_schema_conformance,status_code_conformance",
        "--seed",
        "1",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 240)
    return process.returncode or 0, out.decode(errors="replace")


async def test_the_hub_serves_its_document_and_answers_as_it_says(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = node_config(tmp_path / "data", broker.port, devices=terminals(2, "pad"))
    async with running_hub(config) as hub, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{hub.api_port}/openapi.json"
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.json() == openapi_document(__version__, ("hub",))
        code, out = await _schemathesis(url, "--header", "Authorization: Bearer pull-secret-token")
    assert code == 0, out[-4000:]


async def test_the_receiver_serves_its_document_and_answers_as_it_says(tmp_path: Path) -> None:
    async with (
        start_receiver("127.0.0.1:0", f"sqlite:///{tmp_path}/central.db", "node-token") as running,
        aiohttp.ClientSession() as http,
    ):
        url = f"{running.url}/openapi.json"
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.json() == openapi_document(__version__, ("receiver",))
        code, out = await _schemathesis(url, "--header", "Authorization: Bearer node-token")
    assert code == 0, out[-4000:]


def _pattern(address: str) -> re.Pattern[str]:
    """A channel's address with each parameter as one topic level (the node's id for `node_id`)."""
    text = re.escape(address.replace("{node_id}", NODE_ID))
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", text) + "$")


def _filter(address: str) -> str:
    """A channel's address as the topic filter the hub subscribes with (`+` for a parameter)."""
    return re.sub(r"\{[a-z_]+\}", "+", address.replace("{node_id}", NODE_ID))


async def test_the_asyncapi_channels_are_the_topics_a_real_hub_uses(tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path / "broker", extra=["log_type subscribe"])
    broker.start()
    try:
        await _exercise_the_hub(tmp_path, broker)
    finally:
        broker.stop()


async def _exercise_the_hub(tmp_path: Path, broker: MosquittoBroker) -> None:
    document = asyncapi_document(__version__)
    schemas = document["components"]["schemas"]
    receive = {c.name: c for c in CHANNELS if c.action == "receive"}
    send = {c.name: c for c in CHANNELS if c.action == "send"}
    devices = [*terminals(1), *terminals(1, "pad")]
    config = node_config(tmp_path / "data", broker.port, devices=devices)
    root = f"hall/v1/{NODE_ID}"
    async with observe(broker.port, f"{root}/#") as seen, running_hub(config):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="contract-device") as device:
            sent = {
                f"{root}/dev/terminal-00/rating": {"msg_id": "m1", "level": 1},
                f"{root}/dev/terminal-00/scan": {"msg_id": "m2", "data": "code"},
                f"{root}/dev/terminal-00/print": {"msg_id": "m3", "job_id": "j1", "state": "done"},
                f"{root}/dev/terminal-00/health": {"paper": "low"},
                f"{root}/dev/terminal-00/state": {"online": True},
                f"{root}/dev/pad-00/rating": {"level": 5},
                f"{root}/window/w0/staff": {"request_id": "s1", "event": "sign_in", "staff_id": "A1"},
                f"{root}/window/w0/evaluate": {"request_id": "r1", "case_no": "C1"},
                f"{root}/window/w9/staff": {"request_id": "s2", "event": "pause"},
            }
            for topic, payload in sent.items():
                await device.publish(topic, json.dumps(payload), qos=1)
            for topic in (f"{root}/alerts", f"{root}/dev/terminal-00/ack", f"{root}/window/w0/session"):
                await seen.wait_for(topic, timeout=15)
            await seen.wait_for(f"{root}/window/w0/state", timeout=15)
            await seen.wait_for(f"{root}/dev/pad-00/cmd", timeout=15)

    # What the hub subscribed to, from Mosquitto's log: exactly the receive channels.
    log = (broker.workdir / "mosquitto.log").read_text()
    subscribed = set(re.findall(rf"^\d+: \S+ \d (hall/v1/{NODE_ID}/\S+)$", log, re.MULTILINE))
    subscribed -= {f"{root}/#"}  # the observer's
    assert subscribed == {_filter(c.address) for c in receive.values()}

    # Every topic seen is a channel of the document; the hub's payloads valid against its schema.
    hub_topics = set()
    for topic, payloads in seen.messages.items():
        matches = [c for c in CHANNELS if _pattern(c.address).match(topic)]
        assert len(matches) == 1, f"{topic} is no channel of the AsyncAPI document"
        channel = matches[0]
        if channel.action == "send":  # what the hub publishes is what the document promises
            hub_topics.add(channel.name)
            schema = {**schemas[channel.payload.__name__], "components": {"schemas": schemas}}
            for payload in payloads:
                jsonschema.validate(payload, schema)
    assert hub_topics == set(send)
