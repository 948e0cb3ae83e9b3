"""Serial window keypads speaking HKP/1 (CONTRACTS §3).

The hub uses `KeypadLineDriver` (one per serial port) and receives `KeyPressed` plus the common
events of `drivers.base`; the codec, the simulator and `probe` (what `hallhub doctor` asks) are
importable from their own modules.

The driver (pyserial, tenacity) is imported on first use, for memory: a hub without keypads still
recognises `KeyPressed` (from `drivers.keypad.events`) but never loads the serial side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.keypad.events import KeyPressed
from drivers.lazy import lazy_attributes

if TYPE_CHECKING:
    from drivers.keypad.driver import (
        KeypadCommandError,
        KeypadInfo,
        KeypadLineDriver,
        KeypadTimings,
    )

__all__ = [
    "KeyPressed",
    "KeypadCommandError",
    "KeypadInfo",
    "KeypadLineDriver",
    "KeypadTimings",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "KeypadCommandError": "drivers.keypad.driver",
        "KeypadInfo": "drivers.keypad.driver",
        "KeypadLineDriver": "drivers.keypad.driver",
        "KeypadTimings": "drivers.keypad.driver",
    },
)
