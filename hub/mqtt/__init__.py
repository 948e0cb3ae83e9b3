"""hub.mqtt: the hub's MQTT 3.1.1 client, a sans-I/O codec and an asyncio protocol (the zigpy shape).

Why our own client: measured by bench/mqtt_clients.py (figures below and in docs/benchmarks.md),
both aiomqtt's public API and gmqtt are slower than the hub's former path, which overrode paho's
private names. The codec is meant to be the one place MQTT framing is written (tests, load generator).
"""

from hub.mqtt.client import Client, MessageHandler
from hub.mqtt.codec import Will
from hub.mqtt.errors import (
    ConnectionLost,
    InflightExhausted,
    MalformedPacket,
    MqttConnectError,
    MqttError,
    MqttTimeout,
    NotConnected,
    SubscribeRefused,
)

__all__ = [
    "Client",
    "ConnectionLost",
    "InflightExhausted",
    "MalformedPacket",
    "MessageHandler",
    "MqttConnectError",
    "MqttError",
    "MqttTimeout",
    "NotConnected",
    "SubscribeRefused",
    "Will",
]
