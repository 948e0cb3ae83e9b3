"""Second-generation ID card readers speaking the SAM protocol over serial (CONTRACTS.md §4).

Layers: `codec` (frames, commands, answers; pure), `textblock` (the 256-byte text block and its
layouts), `protocol` (asyncio framing and request/answer), `driver` (the `Driver`), `simulator`
(a fake reader on a pty for tests and the demo, built on the same codec) and `probe` (what
`hallhub doctor` asks).

The driver (pyserial, tenacity) is imported on first use, for memory: a hub without ID-card readers
still recognises `CardRead` (from `drivers.idcard.events`) but never loads the serial side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.idcard.events import CardRead
from drivers.idcard.textblock import NO_EXPIRY, CardType, Sex
from drivers.lazy import lazy_attributes

if TYPE_CHECKING:
    from drivers.idcard.driver import MIN_POLL_INTERVAL_S, IdCardReaderDriver, SamFaultError

__all__ = [
    "MIN_POLL_INTERVAL_S",
    "NO_EXPIRY",
    "CardRead",
    "CardType",
    "IdCardReaderDriver",
    "SamFaultError",
    "Sex",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "MIN_POLL_INTERVAL_S": "drivers.idcard.driver",
        "IdCardReaderDriver": "drivers.idcard.driver",
        "SamFaultError": "drivers.idcard.driver",
    },
)
