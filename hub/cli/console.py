"""Rich consoles for the command line: fitted to a terminal; piped or logged, never wrapped at 80.

Rich assumes 80 columns when its output is not a terminal, so a message piped to `tee` or read in a
log would be cut into lines mid-sentence and a table squeezed. Every command makes its consoles here.
"""

from __future__ import annotations

import os
from typing import Final

from rich.console import Console

__all__ = ["PIPED_WIDTH", "make_console"]

PIPED_WIDTH: Final = 240
"""Columns a table may take when output goes to a file or a pipe (no terminal to fit)."""


def make_console(*, stderr: bool = False, highlight: bool = True) -> Console:
    """A console for stdout (or stderr): on a terminal rich fits it; otherwise a message stays on one
    line and a table takes the width it needs (up to `PIPED_WIDTH`, or `COLUMNS` when set)."""
    console = Console(stderr=stderr, highlight=highlight)
    if console.is_terminal:
        return console
    width = None if os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, highlight=highlight, soft_wrap=True, width=width)
