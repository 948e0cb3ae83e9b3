"""Events of the PC/SC driver, besides the common `DeviceOnline`/`DeviceOffline`/`FrameDropped`.

`reader` is the PC/SC reader name as pcscd reports it; ATRs and UIDs are upper-case hex without
spaces. No event ever carries a full ID number or a name: `CardIdentified.identity` holds only
what `CitizenIdentifier.identify` made of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.base import CitizenIdentity, DeviceEvent

__all__ = [
    "CardIdentified",
    "CardInserted",
    "CardRemoved",
    "CardType",
    "ReaderAttached",
    "ReaderDetached",
]

CardType = Literal["contactless", "social_security"]


@dataclass(frozen=True, slots=True)
class ReaderAttached(DeviceEvent):
    """A reader matching the device's filter appeared in pcscd."""

    reader: str


@dataclass(frozen=True, slots=True)
class ReaderDetached(DeviceEvent):
    """A reader went away (unplugged, or pcscd lost)."""

    reader: str


@dataclass(frozen=True, slots=True)
class CardInserted(DeviceEvent):
    """A card was inserted or brought into the field; `atr` as reported by pcscd."""

    reader: str
    atr: str


@dataclass(frozen=True, slots=True)
class CardRemoved(DeviceEvent):
    """The card left the reader."""

    reader: str


@dataclass(frozen=True, slots=True)
class CardIdentified(DeviceEvent):
    """What the driver read from a card it is allowed to talk to.

    `contactless`: `uid` is the card's UID (None if the reader would not give it), `identity` None.
    `social_security`: `identity` is the masked number and keyed reference, `uid` None.
    """

    reader: str
    card_type: CardType
    uid: str | None
    identity: CitizenIdentity | None

    def card_fields(self) -> dict[str, object]:
        """What the `card` record adds for a PC/SC card: its UID and the reader it was in."""
        return {"uid": self.uid, "reader": self.reader}
