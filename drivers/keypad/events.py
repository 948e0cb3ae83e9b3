"""The event a keypad driver emits for a rating key, besides the common events of `drivers.base`.

Kept apart from the driver so that the hub can recognise it without loading pyserial and tenacity
on a node that has no keypad (for memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import DeviceEvent

__all__ = ["KeyPressed"]


@dataclass(frozen=True, slots=True)
class KeyPressed(DeviceEvent):
    """A rating key pressed on a keypad (HKP/1 KEY); submit it, ack the keypad once stored.

    The driver reports what the keypad said: the session it answers (0: a free rating, unprompted)
    and the frame's SEQ, which a retransmission repeats. What counts as a repeat, and for how long,
    is the hub's decision (`hub.ingest.intake.rating_dedup`).
    """

    session: int
    level: int
    reasons: tuple[str, ...]
    seq: int
