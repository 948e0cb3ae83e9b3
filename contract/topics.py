"""Topic names of CONTRACTS §2, built and parsed in one place."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Leaf(enum.StrEnum):
    """The last part of a device's topic: what it publishes, and what it hears."""

    STATE = "state"
    RATING = "rating"
    SCAN = "scan"
    PRINT = "print"
    HEALTH = "health"
    ACK = "ack"
    CMD = "cmd"
    ERROR = "error"


DEVICE_LEAVES: tuple[str, ...] = (Leaf.STATE, Leaf.RATING, Leaf.SCAN, Leaf.PRINT, Leaf.HEALTH)
"""What a device publishes (device → hub); its broker account may write only these."""
HUB_TO_DEVICE_LEAVES: tuple[str, ...] = (Leaf.ACK, Leaf.CMD, Leaf.ERROR)
"""What a device hears (hub → device); its broker account may read only these."""
ACKED_LEAVES = frozenset({Leaf.RATING, Leaf.SCAN, Leaf.PRINT})
"""Messages the hub answers on `ack` once stored; a device retries them with the same `msg_id`."""
LEAVES_BY_KIND: dict[str, frozenset[str]] = {
    Leaf.RATING: frozenset({"terminal", "pad"}),
    Leaf.SCAN: frozenset({"qr", "terminal"}),
    Leaf.PRINT: frozenset({"terminal"}),
}
"""Which device kinds may send which acked leaves (a rating from a QR scanner is refused)."""


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
        return self.device(device_id, Leaf.ACK)

    def cmd(self, device_id: str) -> str:
        """Where a device receives commands."""
        return self.device(device_id, Leaf.CMD)

    def error(self, device_id: str) -> str:
        """Where a device hears about a payload that could not be answered by msg_id."""
        return self.device(device_id, Leaf.ERROR)

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

    def window_staff(self, window: str) -> str:
        """Who serves at a window: sign in, sign out, pause, resume (§12)."""
        return f"{self.root}/window/{window}/staff"

    def window_state(self, window: str) -> str:
        """A window's state, retained (§12)."""
        return f"{self.root}/window/{window}/state"

    def window_error(self, window: str) -> str:
        """Why a staff event for a window was refused (hallhub extension of §12)."""
        return f"{self.root}/window/{window}/error"

    def subscriptions(self) -> list[str]:
        """What the hub subscribes to (its own ack/cmd/error topics excluded)."""
        return [self.device("+", leaf) for leaf in DEVICE_LEAVES] + [
            self.window_evaluate("+"),
            self.window_staff("+"),
        ]

    def parse(self, topic: str) -> tuple[str, str, str] | None:
        """`(area, name, leaf)` for `dev/{id}/{leaf}` or `window/{w}/{leaf}` under this node, else None."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 3 or parts[0] not in ("dev", "window"):
            return None
        return parts[0], parts[1], parts[2]
