"""Serial window keypads speaking HKP/1 (CONTRACTS §3).

The hub uses `KeypadLineDriver` (one per serial port) and receives `KeyPressed` plus the common
events of `drivers.base`; the codec and the simulator are importable from their own modules.
"""

from drivers.keypad.driver import (
    FREE_RATING_DEDUP_WINDOW_S,
    KeypadCommandError,
    KeypadInfo,
    KeypadLineDriver,
    KeypadTimings,
    KeyPressed,
)

__all__ = [
    "FREE_RATING_DEDUP_WINDOW_S",
    "KeyPressed",
    "KeypadCommandError",
    "KeypadInfo",
    "KeypadLineDriver",
    "KeypadTimings",
]
