"""The event a QR scanner driver emits when it reads a code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drivers.base import DeviceEvent

ScanSource = Literal["serial", "camera"]


@dataclass(frozen=True, slots=True)
class CodeScanned(DeviceEvent):
    """One code read by a scanner, already framed, decoded to text and de-duplicated.

    `symbology` is the format name as the decoder reports it (`QRCode` from a camera); a serial
    scanner sends bare text, so its driver reports the symbology it was configured with.
    """

    data: str
    symbology: str
    source: ScanSource
