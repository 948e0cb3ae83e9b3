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

    `dedup_key` identifies repeats per device: session and level for a prompted rating (no time
    window), the frame SEQ for a free rating (session 0), which repeats only within
    `dedup_window_s`.
    """

    session: int
    level: int
    reasons: tuple[str, ...]
    seq: int
    dedup_key: str
    dedup_window_s: float | None
