"""Second-generation ID card readers speaking the SAM protocol over serial (CONTRACTS.md §4).

Layers: `codec` (frames, commands, answers; pure), `textblock` (the 256-byte text block and its
layouts), `protocol` (asyncio framing and request/answer), `driver` (the `Driver`), and
`simulator` (a fake reader on a pty for tests and the demo, built on the same codec).
"""

from drivers.idcard.driver import MIN_POLL_INTERVAL_S, CardRead, IdCardReaderDriver, SamFaultError
from drivers.idcard.textblock import NO_EXPIRY, CardType, Sex

__all__ = [
    "MIN_POLL_INTERVAL_S",
    "NO_EXPIRY",
    "CardRead",
    "CardType",
    "IdCardReaderDriver",
    "SamFaultError",
    "Sex",
]
