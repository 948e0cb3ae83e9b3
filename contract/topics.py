"""Topic names of CONTRACTS §2, built and parsed in one place."""

from __future__ import annotations

from dataclasses import dataclass

DEVICE_LEAVES = ("rating", "scan", "print", "health", "state")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topics under `hall/v1/{node_id}`."""

    node_id: str

    @property
    def root(self) -> str:
        """`hall/v1/{node_id}`."""
        return f"hall/v1/{self.node_id}"

    def device(self, device_id: str, leaf: str) -> str:
        """`dev/{device}/{leaf}`."""
        return f"{self.root}/dev/{device_id}/{leaf}"

    def ack(self, device_id: str) -> str:
        """Where a device hears that its message was stored."""
        return self.device(device_id, "ack")

    def cmd(self, device_id: str) -> str:
        """Where a device receives commands."""
        return self.device(device_id, "cmd")

    def error(self, device_id: str) -> str:
        """Where a device hears about a payload that could not be answered by msg_id."""
        return self.device(device_id, "error")

    def event(self, kind: str) -> str:
        """`events/{kind}`: every stored record."""
        return f"{self.root}/events/{kind}"

    @property
    def alerts(self) -> str:
        """Every alert record."""
        return f"{self.root}/alerts"

    @property
    def hub_state(self) -> str:
        """The hub's retained state and will."""
        return f"{self.root}/hub/state"

    def window_evaluate(self, window: str) -> str:
        """A window PC's evaluation request."""
        return f"{self.root}/window/{window}/evaluate"

    def window_session(self, window: str) -> str:
        """Session state changes for a window."""
        return f"{self.root}/window/{window}/session"

    def subscriptions(self) -> list[str]:
        """What the hub subscribes to (its own ack/cmd/error topics excluded)."""
        return [self.device("+", leaf) for leaf in DEVICE_LEAVES] + [self.window_evaluate("+")]

    def parse(self, topic: str) -> tuple[str, str, str] | None:
        """`(area, name, leaf)` for `dev/{id}/{leaf}` or `window/{w}/{leaf}` under this node, else None."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 3 or parts[0] not in ("dev", "window"):
            return None
        return parts[0], parts[1], parts[2]
