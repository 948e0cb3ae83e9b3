"""What of the hub's data may be shown: one set of rules for every output that leaves the process.

Used by `hallhub doctor` (its lines and `--json`), `/v1/status` (and so `hallhub status` and the
status page, which read the same document), the log lines, `hallhub config check` and `hallhub
central`. As in Home Assistant's diagnostics, values are redacted by key (`TO_REDACT`) wherever a
structure has keys; free text is redacted by what it looks like:

- URL user information (`https://user:password@host/` → `https://***@host/`);
- bearer tokens (`Authorization: Bearer <token>`), and `token=`, `password=`, `secret=` values (query
  strings, connection strings);
- citizen ID numbers, masked as records keep them (first 6 and last 4 characters, `hub.privacy.id_numbers`);
- and, through a `Scrubber`, the resolved secret values themselves (passwords, tokens, the node
  secret), wherever they appear.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from hub.privacy.id_numbers import mask_id_numbers

__all__ = [
    "PERSONAL_KEYS",
    "REDACTED",
    "SECRET_KEYS",
    "TO_REDACT",
    "RedactingFormatter",
    "Scrubber",
    "redact",
    "redact_text",
    "redact_url",
]

REDACTED: Final = "**REDACTED**"
"""What stands in for a redacted value."""
USERINFO_MARK: Final = "***"
"""What stands in for a URL's user name and password."""

SECRET_KEYS: Final = frozenset(
    {
        "password",
        "token",
        "pull_token",
        "control_token",
        "view_token",
        "secret",
        "broker_password",
        "central_token",
        "authorization",
    }
)
"""Keys whose values are credentials (config keys, HTTP headers)."""
PERSONAL_KEYS: Final = frozenset(
    {"citizen_ref", "citizen_masked", "id_number", "certkeygov", "name", "photo", "sealed"}
)
"""Keys whose values are a citizen's: never in an operator's output, even pseudonymised."""
TO_REDACT: Final = SECRET_KEYS | PERSONAL_KEYS
"""Every key whose (non-empty) value `redact` replaces; compared case-insensitively."""

_URL_USERINFO: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")  # RFC 6750 token68
_SECRET_PARAMETER: Final = re.compile(
    r"(?i)\b([a-z_]*(?:token|password|passwd|secret|api_?key)=)[^\s&;,'\"]+"
)
_MIN_SECRET_LENGTH: Final = 4


def redact_url(url: str, *, mark: str = USERINFO_MARK) -> str:
    """The URL with its user information replaced by `mark` (dropped with `@` if `mark` is empty)
    and the values of secret query parameters redacted."""
    without = _URL_USERINFO.sub(rf"\g<scheme>{mark}@" if mark else r"\g<scheme>", url)
    return _SECRET_PARAMETER.sub(rf"\g<1>{REDACTED}", without)


def redact_text(text: str) -> str:
    """Free text without URL user information, bearer tokens, secret parameters or full ID numbers."""
    text = redact_url(text)
    text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return mask_id_numbers(text).text


def redact(
    data: Mapping[str, Any], to_redact: Iterable[str] = TO_REDACT, *, text: Callable[[str], str] = redact_text
) -> dict[str, Any]:
    """A copy of `data` with the non-empty values of keys in `to_redact` replaced by `REDACTED`, at
    any depth, and every other string passed through `text`."""
    keys = frozenset(key.lower() for key in to_redact)
    return _redact_mapping(data, keys, text)


def _redact_mapping(
    data: Mapping[Any, Any], keys: frozenset[str], text: Callable[[str], str]
) -> dict[Any, Any]:
    return {
        k: REDACTED if str(k).lower() in keys and v not in ("", None) else _redact_value(v, keys, text)
        for k, v in data.items()
    }


def _redact_value(value: Any, keys: frozenset[str], text: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, Mapping):
        return _redact_mapping(value, keys, text)
    if isinstance(value, list | tuple):
        return [_redact_value(item, keys, text) for item in value]
    return value


class Scrubber:
    """`redact_text` that also removes known secret values (passwords, tokens) wherever they appear."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Scrub these values too (values shorter than 4 characters are ignored: too common)."""
        for secret in secrets:
            if secret and len(secret) >= _MIN_SECRET_LENGTH and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """The text without secrets or full ID numbers."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return redact_text(text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose lines (message, arguments and traceback alike) pass `redact_text`."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted line, redacted."""
        return redact_text(super().format(record))
