"""hub.mqtt: the hub's MQTT 3.1.1 client, a sans-I/O codec and an asyncio protocol (the zigpy shape).

Why a client of our own (issue 14: public library APIs only, ingest no slower than before). Measured by
bench/mqtt_clients.py: 20,000 QoS-1 messages over 50 topics, each answered with a QoS-1 ack not awaited
on its own, the client in a process of its own; medians of 3 rounds (5 for the last two rows) on the
2-core development VM, shared with other test runs (docs/benchmarks.md has every round):

    client                                         msgs/s   CPU µs/msg
    aiomqtt 2.5 public API, a task per publish      1,950      358
    aiomqtt 2.5 public API, publishes gathered      1,650      290
    gmqtt 0.8, sync callback (PUBACK before it)     7,930       53
    gmqtt 0.8, async callback (PUBACK after it)     8,940       66
    hub/mqtt_io.py: paho with 18 private overrides 15,060       28
    hub.mqtt (this package)                        18,590       22

aiomqtt's public path costs a task, a future and a paho message object per message; gmqtt writes each
packet with its own send and copies its read buffer per packet. Both are slower than the former paho
hack, so the hub keeps the hack's design (one read split into packets, a synchronous handler, PUBACK
after it, one write per loop turn) on public asyncio APIs and a codec of its own, which the tests'
fake broker uses too.
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
