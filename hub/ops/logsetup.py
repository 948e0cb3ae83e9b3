"""Logging for journald and terminals: one line per event, level and logger, no personal data.

Every line passes `hub.privacy.redact` (URL user information, bearer tokens, ID numbers), tracebacks too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from hub.privacy.redact import RedactingFormatter

REPEAT_INTERVAL_S = 10.0
MAX_KINDS = 1000


@dataclass(slots=True)
class _Kind:
    since: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """One line per kind (logger, level, message template) per interval; the repeats are counted
    and the next line of that kind says how many were left out.

    A flood (a thousand idle connections, thousands of unknown device ids) otherwise writes the same
    line tens of thousands of times a second and fills the journal. CRITICAL lines always pass.
    """

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        max_kinds: int = MAX_KINDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """True to emit the record (with the count of the repeats left out before it)."""
        if record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self._clock()
        kind = self._kinds.get(key)
        if kind is not None and now - kind.since < self.interval_s:
            kind.suppressed += 1
            self.suppressed += 1
            return False
        if kind is not None and kind.suppressed:
            record.msg = (
                f"{record.getMessage()} [{kind.suppressed} more like this in the last "
                f"{now - kind.since:.0f} s left out]"
            )
            record.args = None
        self._kinds.pop(key, None)
        self._kinds[key] = _Kind(now)
        while len(self._kinds) > self.max_kinds:
            del self._kinds[next(iter(self._kinds))]
        return True


def setup_logging(level: str = "INFO", file: str | None = None) -> None:
    """Log to stderr (journald adds time and unit) or to a file with timestamps."""
    handler: logging.Handler
    if file:
        handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        journald = "JOURNAL_STREAM" in os.environ
        fmt = (
            "%(levelname)s %(name)s: %(message)s"
            if journald
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        handler.setFormatter(RedactingFormatter(fmt))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
