"""The few errors hub.mqtt raises, each carrying its facts as attributes (as aiomqtt's do)."""

from __future__ import annotations

# CONNACK return codes of MQTT 3.1.1 (§3.2.2.3), in words a technician can act on.
CONNACK_REASONS = {
    1: "the broker does not accept MQTT 3.1.1",
    2: "the broker refused the client identifier",
    3: "the broker is unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttError(Exception):
    """Base of every hub.mqtt error: catch this to handle any broker or connection failure."""


class MalformedPacket(MqttError):
    """Bytes that are not a valid MQTT 3.1.1 packet (or one a client must not receive)."""

    def __init__(self, packet: str, reason: str) -> None:
        super().__init__(f"malformed {packet}: {reason}")
        self.packet = packet  # the packet type's name, or "packet" when even the header is bad
        self.reason = reason


class MqttConnectError(MqttError):
    """The connection could not be made: TCP refused (`code` None) or a CONNACK refusal (`code`)."""

    def __init__(self, host: str, port: int, code: int | None, reason: str) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.code = code
        self.reason = reason


class ConnectionLost(MqttError):
    """The connection ended before the operation finished; `cause` is what ended it (None: closed)."""

    def __init__(self, cause: BaseException | None) -> None:
        super().__init__(f"connection lost: {cause}" if cause is not None else "connection closed")
        self.cause = cause


class NotConnected(MqttError):
    """An operation needing a connected client was called before connect or after the connection ended."""


class SubscribeRefused(MqttError):
    """The broker answered a SUBSCRIBE with the failure code 0x80 (e.g. its ACL denies the filter)."""

    def __init__(self, topic_filter: str, code: int) -> None:
        super().__init__(f"subscription to {topic_filter!r} refused (code {code:#04x})")
        self.topic_filter = topic_filter
        self.code = code


class MqttTimeout(MqttError, TimeoutError):
    """The broker did not answer in time: `operation` is what waited (CONNACK, SUBACK, PUBACK, PINGRESP)."""

    def __init__(self, operation: str, timeout_s: float) -> None:
        super().__init__(f"no {operation} from the broker within {timeout_s:g} s")
        self.operation = operation
        self.timeout_s = timeout_s


class InflightExhausted(MqttError):
    """All 65,535 packet identifiers are waiting for an answer: nothing more can be sent at QoS 1."""
