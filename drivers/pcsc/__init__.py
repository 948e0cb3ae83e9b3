"""PC/SC card readers over pcscd: reader and card events, contactless UIDs, 社会保障卡 identities.

`PcscDriver` (pyscard, and through it pcscd's client library) is imported on first use, for
memory: the hub recognises the events below on any node but loads pyscard only for a PC/SC reader.
`describe_hresult` puts a PC/SC error code in a technician's words; `drivers.pcsc.probe` is what
`hallhub doctor` asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.lazy import lazy_attributes
from drivers.pcsc.atr import DEFAULT_SSC_ATR_PATTERNS
from drivers.pcsc.events import (
    CardIdentified,
    CardInserted,
    CardRemoved,
    CardType,
    ReaderAttached,
    ReaderDetached,
)

if TYPE_CHECKING:
    from drivers.pcsc._pcsc import describe_hresult
    from drivers.pcsc.driver import PcscDriver

__all__ = [
    "DEFAULT_SSC_ATR_PATTERNS",
    "CardIdentified",
    "CardInserted",
    "CardRemoved",
    "CardType",
    "PcscDriver",
    "ReaderAttached",
    "ReaderDetached",
    "describe_hresult",
]

__getattr__ = lazy_attributes(
    __name__,
    {"PcscDriver": "drivers.pcsc.driver", "describe_hresult": "drivers.pcsc._pcsc"},
)
