"""Single-use rating links for the citizen's own phone (CONTRACTS §13, 二维码评价).

Each evaluation session gets a link `{base_url}/r/{token}` when QR evaluation is enabled. The
token is the phone's only credential: 192 random bits (`secrets.token_urlsafe`), bound to one
session, good for one rating, and dead once the session ends or `ttl_s` has passed. Links live in
memory with their sessions (a restart forgets both; the phone is then told the link is invalid).
Nothing about the phone or the citizen is kept here: a link knows its session and its state only.
"""

from __future__ import annotations

import enum
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hub.config import DeviceSection

TOKEN_BYTES: Final = 24
"""Random bytes per token: 192 bits (§13 asks for at least 128), 32 URL-safe characters."""
TOKEN_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{32}$")
"""What `secrets.token_urlsafe(TOKEN_BYTES)` produces; anything else is answered 404 unread."""
MAX_ENDED_LINKS: Final = 2000
"""Ended links kept to answer a late visit with 409 or 410 rather than 404, at most this many (and
for no longer than `ttl_s`): a hall ends a few thousand sessions a day."""
PHONE_DEVICE_ID: Final = "phone"
"""The `device_id` of evaluations rated on a citizen's phone: the phone is no device of the hall,
and the record's `window` says where the citizen was served."""


class LinkState(enum.Enum):
    """Where a link stands; every state but OPEN is final (CLAIMED only while a rating is stored)."""

    OPEN = "open"
    CLAIMED = "claimed"
    USED = "used"
    RATED_ELSEWHERE = "rated_elsewhere"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Link:
    """One session's rating link."""

    token: str
    session: int
    window: str
    expires_at: float
    state: LinkState = LinkState.OPEN
    ended_at: float | None = None


def phone_device(window: str) -> DeviceSection:
    """The device section a phone's rating is recorded under: kind `qr`, so its channel is `qr`
    (national `pf` 3) through the same table as every other rating's channel."""
    return DeviceSection(id=PHONE_DEVICE_ID, kind="qr", transport="mqtt", window=window)


class RatingLinks:
    """The links of open sessions, and of recently ended ones (bounded), by token."""

    def __init__(self, base_url: str, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        """`base_url` is `qr_evaluation.base_url` (validated, no trailing `/`); `clock` is monotonic."""
        self.base_url = base_url
        self.ttl_s = ttl_s
        self._clock = clock
        self._links: dict[str, Link] = {}
        self._ended: dict[str, float] = {}
        """Tokens of ended links in the order they ended, for forgetting the oldest first."""

    def url(self, token: str) -> str:
        """The address a phone opens (and a pad draws as a QR code)."""
        return f"{self.base_url}/r/{token}"

    def issue(self, session: int, window: str) -> str:
        """A new token for `session`, good for `ttl_s` at most."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._links[token] = Link(token, session, window, self._clock() + self.ttl_s)
        return token

    def get(self, token: str) -> Link | None:
        """The link of `token` (an open link past its `ttl_s` is EXPIRED from then on), or None."""
        if not TOKEN_PATTERN.match(token):
            return None
        link = self._links.get(token)
        if link is not None and link.state is LinkState.OPEN and self._clock() >= link.expires_at:
            self._finish(link, LinkState.EXPIRED)
        return link

    def claim(self, link: Link) -> bool:
        """Take an open link for one rating in progress; False if it is not open any more."""
        if self.get(link.token) is not link or link.state is not LinkState.OPEN:
            return False
        link.state = LinkState.CLAIMED
        return True

    def release(self, link: Link) -> None:
        """A claimed rating could not be stored: the link is open again (the citizen may retry)."""
        if link.state is LinkState.CLAIMED:
            link.state = LinkState.OPEN

    def end(self, token: str, state: LinkState) -> None:
        """The session ended: its link is final. A link already final keeps its state."""
        link = self._links.get(token)
        if link is not None and link.state in (LinkState.OPEN, LinkState.CLAIMED):
            self._finish(link, state)

    def _finish(self, link: Link, state: LinkState) -> None:
        now = self._clock()
        link.state = state
        link.ended_at = now
        self._ended[link.token] = now
        self._forget_old(now)

    def _forget_old(self, now: float) -> None:
        """Ended links older than `ttl_s`, and the oldest beyond MAX_ENDED_LINKS, are forgotten."""
        while self._ended:
            token, ended_at = next(iter(self._ended.items()))
            if ended_at > now - self.ttl_s and len(self._ended) <= MAX_ENDED_LINKS:
                return
            del self._ended[token]
            self._links.pop(token, None)

    def __len__(self) -> int:
        """Links kept, open and ended."""
        return len(self._links)


__all__ = [
    "PHONE_DEVICE_ID",
    "TOKEN_BYTES",
    "Link",
    "LinkState",
    "RatingLinks",
    "phone_device",
]
