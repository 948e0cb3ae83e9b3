"""A citizen's phone for the demo and tests: opens a rating link and submits its form (§13).

It does what a phone browser with JavaScript off does: GET the page, read the form's fields out of
the HTML, POST them back as `application/x-www-form-urlencoded` to the same address. It refuses to
send what the page does not offer (a level or reason the form has no input for), so a page that
stops offering something fails here as it would for a citizen.
"""

from __future__ import annotations

import html.parser
import re
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

TIMEOUT_S = 10.0
MAX_PAGE_BYTES = 64 * 1024


class PhoneError(Exception):
    """The page could not be used as a citizen would (not found, no such choice)."""


class _Form(html.parser.HTMLParser):
    """The inputs of a page: radio and checkbox values by name, and the textareas' names."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.radios: dict[str, list[str]] = {}
        self.checkboxes: dict[str, list[str]] = {}
        self.textareas: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        name = named.get("name") or ""
        if tag == "input" and named.get("type") in ("radio", "checkbox"):
            kind = self.radios if named["type"] == "radio" else self.checkboxes
            kind.setdefault(name, []).append(named.get("value") or "")
        elif tag == "textarea":
            self.textareas.append(name)


@dataclass(frozen=True, slots=True)
class PhoneAnswer:
    """How the hub answered the submission: its status and the page's title (e.g. 感谢您的评价)."""

    status: int
    title: str


def _title(page: str) -> str:
    found = re.search(r"<title>(.*?)</title>", page, re.S)
    return found.group(1) if found else ""


class SimulatedPhone:
    """One phone on the hall network."""

    def __init__(self, *, user_agent: str = "Mozilla/5.0 (Linux; Android 14) hallhub-sim") -> None:
        self.headers = {"User-Agent": user_agent}

    async def rate(
        self, url: str, level: int, reasons: Sequence[str] = (), comment: str | None = None
    ) -> PhoneAnswer:
        """Open the link and rate: PhoneError if the page is not a rating form offering these."""
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as http:
            async with http.get(url, allow_redirects=False) as response:
                page = (await response.content.read(MAX_PAGE_BYTES)).decode("utf-8", "replace")
                if response.status != 200:
                    return PhoneAnswer(response.status, _title(page))
            form = _Form()
            form.feed(page)
            if str(level) not in form.radios.get("level", []):
                raise PhoneError(f"the page offers no level {level}: {form.radios.get('level')}")
            missing = [code for code in reasons if code not in form.checkboxes.get("reasons", [])]
            if missing:
                raise PhoneError(f"the page offers no reason {missing}")
            fields = [("level", str(level)), *(("reasons", code) for code in reasons)]
            if "comment" in form.textareas:
                fields.append(("comment", comment or ""))
            async with http.post(url, data=fields, allow_redirects=False) as response:
                answer = (await response.content.read(MAX_PAGE_BYTES)).decode("utf-8", "replace")
                return PhoneAnswer(response.status, _title(answer))


__all__ = ["PhoneAnswer", "PhoneError", "SimulatedPhone"]
