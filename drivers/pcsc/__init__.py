"""PC/SC card readers over pcscd: reader and card events, contactless UIDs, 社会保障卡 identities."""

from drivers.pcsc.atr import DEFAULT_SSC_ATR_PATTERNS
from drivers.pcsc.driver import PcscDriver
from drivers.pcsc.events import (
    CardIdentified,
    CardInserted,
    CardRemoved,
    CardType,
    ReaderAttached,
    ReaderDetached,
)

__all__ = [
    "DEFAULT_SSC_ATR_PATTERNS",
    "CardIdentified",
    "CardInserted",
    "CardRemoved",
    "CardType",
    "PcscDriver",
    "ReaderAttached",
    "ReaderDetached",
]
