"""Serial scanner framing: bytes in, decoded codes out. Pure: no I/O, no asyncio, time is passed in.

A serial or USB-CDC scanner sends each code as text followed by a terminator (CR, LF or CRLF, set in
the scanner's own configuration). The simulator uses `encode_scan` from here, so both ends of the
line share one definition of the format.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Literal, get_args

Terminator = Literal["cr", "lf", "crlf", "any"]
"""What ends a code: `any` accepts CR, LF and CRLF (empty lines are ignored)."""

SendTerminator = Literal["cr", "lf", "crlf", "none"]
"""What a sender appends to a code; `none` leaves the code unterminated."""

AUTO_ENCODING = "auto"
"""Encoding setting that tries strict UTF-8 first and falls back to GBK."""

DEFAULT_MAX_LENGTH = 4096
"""The contract's limit for scan data (`data: str ≤4096`), applied here to the bytes on the line."""

_TERMINATOR_BYTES: dict[str, bytes] = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "none": b""}


@dataclass(frozen=True, slots=True)
class ScannedText:
    """A complete code, decoded to text (the terminator removed, nothing else changed)."""

    text: str


@dataclass(frozen=True, slots=True)
class RejectedFrame:
    """Input that was dropped; `reason` is a metric label: `too_long` or `bad_encoding`."""

    reason: str


FrameResult = ScannedText | RejectedFrame


def check_encoding(encoding: str) -> str:
    """Return the normalised encoding setting, or raise `ValueError` naming the bad value."""
    if encoding == AUTO_ENCODING:
        return encoding
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(
            f"unknown encoding {encoding!r}: use 'auto', 'utf-8', 'gbk' or another codec name"
        ) from None


def encode_scan(text: str, terminator: SendTerminator = "cr", encoding: str = "utf-8") -> bytes:
    """Encode one code as a scanner sends it: the text in `encoding`, then the terminator."""
    if terminator not in _TERMINATOR_BYTES:
        raise ValueError(f"terminator must be one of {sorted(_TERMINATOR_BYTES)}, not {terminator!r}")
    if encoding == AUTO_ENCODING:
        raise ValueError("a sender needs a concrete encoding, such as 'utf-8' or 'gbk'")
    return text.encode(encoding) + _TERMINATOR_BYTES[terminator]


def decode_payload(payload: bytes, encoding: str) -> str | None:
    """Decode a code's bytes strictly (`auto`: UTF-8 if valid, else GBK); None if nothing fits."""
    candidates = ("utf-8", "gbk") if encoding == AUTO_ENCODING else (encoding,)
    for candidate in candidates:
        try:
            return payload.decode(candidate)
        except UnicodeDecodeError:
            continue
    return None


class ScanFramer:
    """Splits a scanner's byte stream into codes.

    - A code ends at its terminator, or when no byte has arrived for `idle_timeout_s` (a scanner
      configured without a terminator, or a lost terminator byte).
    - A code longer than `max_length` bytes is reported once as `too_long`; the rest of it, up to
      the next terminator or idle gap, is discarded, so the buffer never grows past the limit.
    - Bytes that are not valid in the configured encoding are reported as `bad_encoding`.
    - Empty codes (e.g. the LF of a CRLF when the terminator is `any`) are ignored.
    """

    def __init__(
        self,
        terminator: Terminator = "any",
        *,
        encoding: str = AUTO_ENCODING,
        max_length: int = DEFAULT_MAX_LENGTH,
        idle_timeout_s: float = 0.3,
    ) -> None:
        if terminator not in get_args(Terminator):
            raise ValueError(f"terminator must be one of {list(get_args(Terminator))}, not {terminator!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, not {idle_timeout_s}")
        self._terminator: Terminator = terminator
        self._encoding = check_encoding(encoding)
        self._max_length = max_length
        self._idle_timeout_s = idle_timeout_s
        self._buffer = bytearray()
        self._searched = 0  # bytes of the buffer already known to hold no terminator
        self._discarding = False  # inside a code that was already reported as too long
        self._last_byte_at: float | None = None

    @property
    def deadline(self) -> float | None:
        """When the pending partial code ends by idle timeout; None when nothing is pending."""
        if self._last_byte_at is None or not (self._buffer or self._discarding):
            return None
        return self._last_byte_at + self._idle_timeout_s

    def feed(self, data: bytes, now: float) -> list[FrameResult]:
        """Add bytes received at `now`; return every code (or rejection) they complete."""
        results = self.expire(now)
        if not data:
            return results
        self._last_byte_at = now
        self._buffer += data
        while (found := self._find_terminator()) is not None:
            start, end = found
            payload = bytes(self._buffer[:start])
            del self._buffer[:end]
            self._searched = 0
            self._finish(payload, results)
        self._check_overflow(results)
        return results

    def expire(self, now: float) -> list[FrameResult]:
        """End the pending partial code if the line has been idle for the idle timeout."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        payload = bytes(self._buffer)
        if self._terminator == "crlf" and payload.endswith(b"\r"):
            payload = payload[:-1]  # half a terminator whose LF never came
        self._buffer.clear()
        self._searched = 0
        results: list[FrameResult] = []
        self._finish(payload, results)
        return results

    def reset(self) -> None:
        """Forget any partial code (the port was closed and reopened)."""
        self._buffer.clear()
        self._searched = 0
        self._discarding = False
        self._last_byte_at = None

    def _find_terminator(self) -> tuple[int, int] | None:
        """Locate the first terminator at or after the searched mark: (start, end) or None."""
        buffer = self._buffer
        if self._terminator == "any":
            positions = [
                p for p in (buffer.find(b"\r", self._searched), buffer.find(b"\n", self._searched)) if p >= 0
            ]
            if not positions:
                self._searched = len(buffer)
                return None
            first = min(positions)
            return first, first + 1
        marker = _TERMINATOR_BYTES[self._terminator]
        position = buffer.find(marker, self._searched)
        if position < 0:
            # A CR at the very end may be the first half of a CRLF: search it again next time.
            self._searched = max(0, len(buffer) - len(marker) + 1)
            return None
        return position, position + len(marker)

    def _check_overflow(self, results: list[FrameResult]) -> None:
        """Bound the buffer: report a too-long code once and discard the rest of it."""
        keep_tail = self._terminator == "crlf" and self._buffer.endswith(b"\r")
        pending = len(self._buffer) - (1 if keep_tail else 0)
        if not self._discarding and pending > self._max_length:
            results.append(RejectedFrame("too_long"))
            self._discarding = True
        if self._discarding:
            del self._buffer[:pending]
            self._searched = 0

    def _finish(self, payload: bytes, results: list[FrameResult]) -> None:
        """Turn one complete payload into a result (nothing for an empty or discarded one)."""
        if self._discarding:
            self._discarding = False  # this terminator ends the code already reported
            return
        if not payload:
            return
        if len(payload) > self._max_length:
            results.append(RejectedFrame("too_long"))
            return
        text = decode_payload(payload, self._encoding)
        if text is None:
            results.append(RejectedFrame("bad_encoding"))
        else:
            results.append(ScannedText(text))
