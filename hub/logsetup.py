"""Logging for journald and terminals: one line per event, level and logger, no personal data."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "INFO", file: str | None = None) -> None:
    """Log to stderr (journald adds time and unit) or to a file with timestamps."""
    handler: logging.Handler
    if file:
        handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        journald = "JOURNAL_STREAM" in os.environ
        fmt = (
            "%(levelname)s %(name)s: %(message)s"
            if journald
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
