"""QR scanner drivers: serial/USB-CDC scanners and cameras, both reporting `CodeScanned`.

The camera driver and the decoders load OpenCV and numpy (tens of MB), so they are imported on
first use: a node with only serial scanners never pays for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from drivers.qr.codec import Terminator
from drivers.qr.events import CodeScanned, ScanSource
from drivers.qr.serial import SerialScannerDriver

if TYPE_CHECKING:
    from drivers.qr.camera import CameraScannerDriver
    from drivers.qr.decoders import DecoderName, Roi

__all__ = [
    "CameraScannerDriver",
    "CodeScanned",
    "DecoderName",
    "Roi",
    "ScanSource",
    "SerialScannerDriver",
    "Terminator",
]

_LAZY = {
    "CameraScannerDriver": "drivers.qr.camera",
    "DecoderName": "drivers.qr.decoders",
    "Roi": "drivers.qr.decoders",
}


def __getattr__(name: str) -> object:
    """Import the camera side only when it is first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
