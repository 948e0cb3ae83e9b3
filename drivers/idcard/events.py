"""The event an ID-card reader driver emits for a card, besides the common events of `drivers.base`.

Kept apart from the driver so that the hub can recognise it without loading pyserial and tenacity
on a node that has no ID-card reader (for memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import CitizenIdentity, DeviceEvent
from drivers.idcard.textblock import CardType, Sex

__all__ = ["CardRead"]


@dataclass(frozen=True, slots=True)
class CardRead(DeviceEvent):
    """An ID card was placed on the reader (the hub stores it as a record of kind `card`).

    Only what may be kept: the card type, the masked number, keyed reference and optional sealed
    fields (`identity`), sex, year of birth and the end of validity (ISO date or `长期`).
    """

    card_type: CardType
    identity: CitizenIdentity
    sex: Sex
    birth_year: int
    valid_until: str

    def card_fields(self) -> dict[str, object]:
        """What the `card` record adds for an ID card: sex, year of birth, end of validity."""
        return {"sex": str(self.sex), "birth_year": self.birth_year, "valid_until": self.valid_until}
