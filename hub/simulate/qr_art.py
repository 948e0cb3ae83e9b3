"""A QR code as text, as a simulated rating pad draws the rating link it is prompted with (§13).

Made with segno (pure Python, no dependencies, ~0.5 MB installed), which the hub itself never needs:
a real pad draws its own QR codes. It is the optional extra `hallhub[simulate]` (and part of `dev`);
without it the simulators and the demo show the link as text instead.
"""

from __future__ import annotations

import importlib.util

UPPER, LOWER, BOTH, NONE = "▀", "▄", "█", " "
QUIET_ZONE = 2
"""Modules of light border: QR asks for 4, but terminals put their own dark-on-light margin around."""


def qr_available() -> bool:
    """True when segno is installed (`pip install hallhub[simulate]`)."""
    return importlib.util.find_spec("segno") is not None


def qr_text(data: str, *, invert: bool = True) -> str | None:
    """`data` as a QR code in half-block characters (two modules per character cell), or None
    without segno. `invert`: dark modules drawn as spaces, for a light-on-dark terminal."""
    if not qr_available():
        return None
    import segno  # noqa: PLC0415 (optional: the simulators' extra, never the hub's)

    matrix = [[bool(cell) for cell in row] for row in segno.make_qr(data, error="m").matrix]
    size = len(matrix) + 2 * QUIET_ZONE
    light = [False] * size
    padded = [light] * QUIET_ZONE
    padded += [[False] * QUIET_ZONE + row + [False] * QUIET_ZONE for row in matrix]
    padded += [light] * (QUIET_ZONE + 1)  # one more: rows are drawn in pairs
    lines = []
    for top, bottom in zip(padded[0::2], padded[1::2], strict=False):
        cells = []
        for dark_top, dark_bottom in zip(top, bottom, strict=True):
            upper, lower = (not dark_top, not dark_bottom) if invert else (dark_top, dark_bottom)
            cells.append(BOTH if upper and lower else UPPER if upper else LOWER if lower else NONE)
        lines.append("".join(cells))
    return "\n".join(lines)


__all__ = ["qr_available", "qr_text"]
