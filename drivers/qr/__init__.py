"""QR scanner drivers: serial/USB-CDC scanners and cameras, both reporting `CodeScanned`.

The camera driver and the decoders load OpenCV and numpy (tens of MB), so they are imported on
first use: a node with only serial scanners never pays for them. The serial driver (pyserial,
tenacity) is imported on first use too, for memory: a node without QR scanners loads neither.
`drivers.qr.probe` is what `hallhub doctor` asks of either kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.lazy import lazy_attributes
from drivers.qr.codec import Terminator
from drivers.qr.events import CodeScanned, ScanSource

if TYPE_CHECKING:
    from drivers.qr.camera import CameraScannerDriver
    from drivers.qr.decoders import DecoderName, Roi
    from drivers.qr.serial import SerialScannerDriver

__all__ = [
    "CameraScannerDriver",
    "CodeScanned",
    "DecoderName",
    "Roi",
    "ScanSource",
    "SerialScannerDriver",
    "Terminator",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "CameraScannerDriver": "drivers.qr.camera",
        "DecoderName": "drivers.qr.decoders",
        "Roi": "drivers.qr.decoders",
        "SerialScannerDriver": "drivers.qr.serial",
    },
)
