"""QR decoders for camera frames: zxing-cpp (default) and pyzbar, both restricted to QR codes.

Restricting the symbology is deliberate: searching every 1D and 2D format costs time on each frame
and lets stray printed barcodes (EAN on a leaflet, Code 128 on a ticket) be reported as scans.
Each decoder imports its library only when built, so choosing one never loads the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

_log = logging.getLogger(__name__)

DecoderName = Literal["zxing", "pyzbar"]
Roi = tuple[int, int, int, int]
"""A region of interest in pixels: (x, y, width, height) from the frame's top-left corner."""

QR_SYMBOLOGY = "QRCode"


@dataclass(frozen=True, slots=True)
class DecodedCode:
    """One code found in a frame: its text and the format name the decoder reported."""

    text: str
    symbology: str = QR_SYMBOLOGY


class QrDecoder(Protocol):
    """Finds QR codes in one 8-bit grayscale frame. Called from one worker thread at a time."""

    name: str

    def decode(self, gray: NDArray[np.uint8]) -> list[DecodedCode]:
        """Every QR code readable in the frame (an empty list when there is none)."""
        ...


def check_roi(roi: Roi | None) -> Roi | None:
    """Return `roi` if well formed (x, y >= 0; width, height > 0); raise `ValueError` otherwise."""
    if roi is None:
        return None
    if len(roi) != 4 or any(not isinstance(v, int) for v in roi):
        raise ValueError(f"roi must be four integers (x, y, width, height), not {roi!r}")
    x, y, width, height = roi
    if x < 0 or y < 0 or width <= 0 or height <= 0:
        raise ValueError(f"roi needs x, y >= 0 and width, height > 0, not {roi!r}")
    return roi


class _Cropper:
    """Cuts the region of interest out of a frame; warns once if it lies outside the frame."""

    def __init__(self, roi: Roi | None) -> None:
        self._roi = check_roi(roi)
        self._warned = False

    def crop(self, gray: NDArray[np.uint8]) -> NDArray[np.uint8] | None:
        """The part of the frame to decode (contiguous), or None if the ROI misses the frame."""
        import numpy as np  # noqa: PLC0415  (loaded with the decoder, not with the package)

        if self._roi is None:
            return gray
        x, y, width, height = self._roi
        region = gray[y : y + height, x : x + width]
        if region.size == 0:
            if not self._warned:
                self._warned = True
                _log.error(
                    "QR roi %s lies outside the %dx%d frame: nothing can be decoded",
                    self._roi,
                    gray.shape[1],
                    gray.shape[0],
                )
            return None
        return np.ascontiguousarray(region)


class ZxingDecoder:
    """zxing-cpp, asked for the QR family only (`BarcodeFormat.QRCode`); text as encoded."""

    name = "zxing"

    def __init__(self, roi: Roi | None = None) -> None:
        import zxingcpp  # noqa: PLC0415  (only the chosen decoder's library is loaded)

        self._zxing = zxingcpp
        self._formats = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
        self._cropper = _Cropper(roi)

    def decode(self, gray: NDArray[np.uint8]) -> list[DecodedCode]:
        """Decode the QR codes in the (cropped) frame."""
        region = self._cropper.crop(gray)
        if region is None:
            return []
        found = self._zxing.read_barcodes(region, formats=self._formats, text_mode=self._zxing.TextMode.Plain)
        return [DecodedCode(b.text, b.format.name) for b in found if b.valid and b.text]


class PyzbarDecoder:
    """pyzbar (libzbar0), asked for QR codes only (`ZBarSymbol.QRCODE`)."""

    name = "pyzbar"

    def __init__(self, roi: Roi | None = None) -> None:
        from pyzbar import pyzbar  # noqa: PLC0415  (only the chosen decoder's library is loaded)

        self._pyzbar = pyzbar
        self._symbols = [pyzbar.ZBarSymbol.QRCODE]
        self._cropper = _Cropper(roi)

    def decode(self, gray: NDArray[np.uint8]) -> list[DecodedCode]:
        """Decode the QR codes in the (cropped) frame; zbar hands text over as UTF-8."""
        region = self._cropper.crop(gray)
        if region is None:
            return []
        found = self._pyzbar.decode(region, symbols=self._symbols)
        codes: list[DecodedCode] = []
        for symbol in found:
            raw: bytes = symbol.data
            text = raw.decode("utf-8", errors="replace")
            if text:
                codes.append(DecodedCode(text, QR_SYMBOLOGY))
        return codes


def make_decoder(name: DecoderName = "zxing", roi: Roi | None = None) -> QrDecoder:
    """Build the decoder named in the config (`zxing` or `pyzbar`), cropping to `roi` if given."""
    if name == "zxing":
        return ZxingDecoder(roi)
    if name == "pyzbar":
        return PyzbarDecoder(roi)
    raise ValueError(f"unknown QR decoder {name!r}: use 'zxing' (default) or 'pyzbar'")
