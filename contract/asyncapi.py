"""The node broker's topics and payloads (CONTRACTS §2, §12) as an AsyncAPI 3.0 document.

Generated, never written by hand: each channel's address comes from `contract.topics.Topics`
(built with the parameter names in place of a node, device, window or kind) and each payload's
schema from the msgspec type the hub decodes or encodes it with. The document describes the hub:
`receive` operations are what it subscribes to, `send` what it publishes.
`python -m contract.docs` writes it to docs/asyncapi.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from contract.mqtt import (
    DEVICE_PAYLOADS,
    AckPayload,
    CmdPayload,
    ErrorPayload,
    EvaluateRequest,
    HubState,
    SessionUpdate,
    StaffEvent,
    WindowError,
    WindowState,
)
from contract.openapi import schema_components
from contract.records import ID_REGEX, KINDS, WINDOW_REGEX
from contract.topics import DEVICE_LEAVES, Leaf, Topics
from contract.wire import Record

__all__ = ["ASYNCAPI_VERSION", "CHANNELS", "Channel", "asyncapi_document"]

ASYNCAPI_VERSION: Final = "3.0.0"
_T: Final = Topics("{node_id}")


@dataclass(frozen=True, slots=True)
class Channel:
    """One topic of §2: its name in the document, address, payload model and the hub's action."""

    name: str
    address: str
    payload: type[msgspec.Struct]
    action: Literal["receive", "send"]
    summary: str
    retained: bool = False


def _channels() -> tuple[Channel, ...]:
    device = "{device_id}"
    window = "{window}"
    receive = [
        Channel(
            f"dev_{leaf}",
            _T.device(device, leaf),
            DEVICE_PAYLOADS[leaf],
            "receive",
            f"A device's `{leaf}` message (§2).",
            retained=leaf == Leaf.STATE,
        )
        for leaf in DEVICE_LEAVES
    ]
    return (
        *receive,
        Channel(
            "window_evaluate",
            _T.window_evaluate(window),
            EvaluateRequest,
            "receive",
            "A window PC asks for a rating.",
        ),
        Channel(
            "window_staff", _T.window_staff(window), StaffEvent, "receive", "Who serves at a window (§12)."
        ),
        Channel(
            "dev_ack",
            _T.ack(device),
            AckPayload,
            "send",
            "A device's message stored, a duplicate or rejected.",
        ),
        Channel("dev_cmd", _T.cmd(device), CmdPayload, "send", "Prompt, cancel or show on a device."),
        Channel("dev_error", _T.error(device), ErrorPayload, "send", "A payload with no usable msg_id."),
        Channel(
            "window_session", _T.window_session(window), SessionUpdate, "send", "A session's state changes."
        ),
        Channel(
            "window_state",
            _T.window_state(window),
            WindowState,
            "send",
            "A window's state (§12).",
            retained=True,
        ),
        Channel(
            "window_error", _T.window_error(window), WindowError, "send", "A staff event refused (extension)."
        ),
        Channel("events", _T.event("{kind}"), Record, "send", "Each stored record (§1), by kind."),
        Channel("alerts", _T.alerts, Record, "send", "Each alert record (§1)."),
        Channel(
            "hub_state", _T.hub_state, HubState, "send", "The hub's state; also its will.", retained=True
        ),
    )


CHANNELS: Final = _channels()
"""Every topic of the node broker the hub subscribes to or publishes on."""

_PARAMETERS: Final[dict[str, dict[str, Any]]] = {
    "node_id": {"description": f"The node's id ({ID_REGEX})."},
    "device_id": {"description": f"A configured device's id, its MQTT username ({ID_REGEX})."},
    "window": {"description": f"A window ({WINDOW_REGEX})."},
    "kind": {"description": "A record kind.", "enum": list(KINDS)},
}


def _schemas() -> dict[str, Any]:
    """The JSON Schema of every payload model, by model name, references between them resolved there."""
    models = sorted({channel.payload for channel in CHANNELS}, key=lambda model: model.__name__)
    return schema_components(models)


def asyncapi_document(version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the node broker, for hallhub `version`."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for channel in CHANNELS:
        name = channel.payload.__name__
        messages[name] = {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        parameters = {
            p: {"$ref": f"#/components/parameters/{p}"} for p in _PARAMETERS if f"{{{p}}}" in channel.address
        }
        channels[channel.name] = {
            "address": channel.address,
            "description": channel.summary + (" Retained." if channel.retained else ""),
            "parameters": parameters,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"{channel.action}_{channel.name}"] = {
            "action": channel.action,
            "channel": {"$ref": f"#/channels/{channel.name}"},
            "summary": channel.summary,
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "hallhub node broker",
            "version": version,
            "description": "The MQTT topics and payloads of a hallhub node (CONTRACTS §2, §12); QoS 1, "
            "UTF-8 JSON objects. Operations are the hub's: it receives what devices and window PCs send.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": _schemas(),
            "messages": dict(sorted(messages.items())),
            "parameters": _PARAMETERS,
        },
    }
