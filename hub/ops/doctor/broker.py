"""The node's broker, logged in to as the hub: publish and receive on a scratch topic under the node's
root, and read the retained state of the MQTT devices."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any, Final

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from contract.topics import Topics
from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.report import Finding

__all__ = ["check_broker"]

_CONNACK_REASONS: Final = {
    4: "bad username or password",
    5: "not authorized",
    134: "bad username or password",
    135: "not authorized",
}


def _connack_reason(exc: aiomqtt.MqttCodeError) -> str:
    """The broker's reason for refusing a login, in words that do not depend on the MQTT version."""
    code = exc.rc if isinstance(exc.rc, int) or exc.rc is None else exc.rc.value
    return _CONNACK_REASONS.get(code, str(exc)) if isinstance(code, int) else str(exc)


async def check_broker(ctx: CheckContext) -> list[Finding]:
    """Log in as the hub, publish and receive on a scratch topic, and read devices' retained state."""
    broker = ctx.config.broker
    subject = f"{broker.host}:{broker.port}"
    who = f'"{broker.username}"' if broker.username else "anonymous"
    topics = Topics(ctx.config.node.id)
    scratch = f"{topics.root}/doctor/{uuid.uuid4().hex[:12]}"
    payload = json.dumps({"doctor": uuid.uuid4().hex}).encode()
    mqtt_devices = [d for d in ctx.config.device if d.transport == "mqtt"]
    states: dict[str, dict[str, Any]] = {}
    connected = False
    acl_fix = f"let {who} read and write {topics.root}/# in the broker's ACL (config/mosquitto/hub.acl)"
    try:
        async with asyncio.timeout(ctx.options.timeout_s):
            async with aiomqtt.Client(
                hostname=broker.host,
                port=broker.port,
                username=broker.username or None,
                password=ctx.secrets.broker_password or None,
                identifier=f"hallhub-doctor-{uuid.uuid4().hex[:8]}",
                clean_session=True,
                timeout=ctx.options.timeout_s + 1,  # the outer timeout speaks first
            ) as client:
                connected = True
                if mqtt_devices:
                    await client.subscribe(topics.device("+", "state"), qos=1)
                await client.subscribe(scratch, qos=1)
                await client.publish(scratch, payload, qos=1)
                async for message in client.messages:
                    topic = str(message.topic)
                    if topic == scratch:
                        if message.payload == payload:
                            break
                        continue
                    parsed = topics.parse(topic)
                    if parsed is not None and isinstance(message.payload, bytes):
                        with contextlib.suppress(ValueError):
                            states[parsed[1]] = json.loads(message.payload)
    except MqttConnectError as exc:
        return [
            Finding.error(
                "broker",
                subject,
                f"refused the login as {who} ({_connack_reason(exc)})",
                "check broker.username and broker.password (or password_file) against the broker's"
                " password file (mosquitto_passwd)",
            )
        ]
    except aiomqtt.MqttCodeError as exc:
        return [Finding.error("broker", subject, f"refused a test subscription or message ({exc})", acl_fix)]
    except aiomqtt.MqttError as exc:
        text = str(exc)
        reason = "connection refused" if "refused" in text.lower() or "Errno 111" in text else text
        return [
            Finding.error(
                "broker",
                subject,
                f"cannot connect: {reason}",
                "start the broker (systemctl start mosquitto) or correct broker.host and broker.port",
            )
        ]
    except TimeoutError:
        wait = f"{ctx.options.timeout_s:.0f} s"
        if not connected:
            return [
                Finding.error(
                    "broker",
                    subject,
                    f"accepts TCP connections but gave no MQTT answer within {wait}",
                    "check broker.host and broker.port: they must name the broker's plain MQTT listener",
                )
            ]
        return [
            Finding.error(
                "broker",
                subject,
                f"a test message under {topics.root}/doctor/ did not come back within {wait}",
                acl_fix,
            )
        ]
    findings = [
        Finding.ok(
            "broker",
            subject,
            f"logged in as {who}; published and received a test message under {topics.root}/",
        )
    ]
    for device in mqtt_devices:
        state = states.get(device.id)
        if state is None:
            findings.append(
                Finding.warn(
                    "device",
                    device.id,
                    "has never connected to the broker (no retained state)",
                    f"set the device's MQTT host, port, username ({device.id}), password and node id"
                    f" ({ctx.config.node.id}); the broker's log shows refused logins",
                )
            )
        elif state.get("online") is True:
            findings.append(Finding.ok("device", device.id, "online (its retained state on the broker)"))
        else:
            findings.append(
                Finding.warn(
                    "device", device.id, "offline (its retained state on the broker)", "switch the device on"
                )
            )
    return findings
