"""One pull of a node's `/v1/records` and its ack (CONTRACTS §5), against hostile answers.

Nothing a node answers is trusted: redirects are never followed (a 3xx could carry the token to
another host or off TLS), bodies are read up to a byte limit, JSON numbers and nesting are
bounded, the page must move forward, and each record is checked as the push receiver checks it.
A record that fails is kept verbatim as a rejected entry, never dropped silently behind the ack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from contract import jsonbounds
from contract.http import PULL_LIMIT_MAX
from contract.wire import ReceivedRecord, RecordError, validate_record
from sync.collector._nodes import NodeSpec
from sync.receiver import PulledRecord

__all__ = ["ACK_PATH", "PULL_PATH", "Page", "PullError", "ack", "fetch_page", "parse_page"]

PULL_PATH: Final = "/v1/records"
ACK_PATH: Final = "/v1/records/ack"
_MAX_SEQ: Final = 2**63 - 1
_MAX_ACK_ANSWER: Final = 64 * 1024
_MAX_RETRY_AFTER_S: Final = 3600.0
_READ_CHUNK: Final = 64 * 1024


class PullError(Exception):
    """A pull or ack that failed; `reason` is a short label for metrics and logs."""

    def __init__(self, reason: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Page:
    """A checked page: its entries, where the next one starts, and whether more is waiting."""

    records: list[PulledRecord]
    next_after: int
    more: bool


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After", "")
    if isinstance(value, str) and value.strip().isdecimal():
        return min(float(value.strip()), _MAX_RETRY_AFTER_S)
    return None


def _status_error(response: aiohttp.ClientResponse, what: str) -> PullError:
    status = response.status
    if 300 <= status < 400:
        location = response.headers.get("Location", "")[:200]
        return PullError(
            "redirect", f"{what} answered {status} to {location!r}: redirects are never followed"
        )
    if status in (401, 403):
        return PullError("unauthorized", f"{what} answered {status}: the node refuses the pull token")
    if status in (408, 429) or status >= 500:
        return PullError("unavailable", f"{what} answered {status}", _retry_after(response.headers))
    return PullError("status", f"{what} answered {status}")


async def _read(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise PullError(
            "too_large", f"{what}: answer of {response.content_length} bytes is over the {limit} limit"
        )
    chunks: list[bytes] = []
    size = 0
    while chunk := await response.content.read(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PullError("too_large", f"{what}: answer is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(body: bytes, what: str) -> Any:
    try:
        return jsonbounds.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PullError("garbage", f"{what}: answer is not valid JSON: {str(exc)[:200]}") from None


def _entry(raw: Any, after: int, next_after: int, index: int) -> PulledRecord:
    seq = raw.get("seq") if isinstance(raw, dict) else None
    if isinstance(seq, int) and not isinstance(seq, bool) and not after < seq <= next_after:
        raise PullError("garbage", f"records[{index}].seq {seq} is outside ({after}, {next_after}]")
    position = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
    try:
        return PulledRecord(position, ReceivedRecord.of(validate_record(raw)))
    except RecordError as exc:
        text = json.dumps(raw, ensure_ascii=True)
        return PulledRecord(position, None, raw=text, error=f"records[{index}].{exc.message}")


def parse_page(document: Any, after: int, what: str) -> Page:
    """Check a decoded page against the request's `after`; `PullError('garbage')` if it is wrong."""
    if not isinstance(document, dict):
        raise PullError("garbage", f"{what}: the page is not a JSON object")
    records, next_after, more = document.get("records"), document.get("next_after"), document.get("more")
    if not isinstance(records, list):
        raise PullError("garbage", f"{what}: records must be a list")
    if not isinstance(next_after, int) or isinstance(next_after, bool) or not after <= next_after <= _MAX_SEQ:
        raise PullError(
            "garbage", f"{what}: next_after must be an integer from {after} up, got {next_after!r}"
        )
    if not isinstance(more, bool):
        raise PullError("garbage", f"{what}: more must be true or false, got {more!r}")
    if len(records) > PULL_LIMIT_MAX:
        raise PullError("garbage", f"{what}: {len(records)} records in one page, over {PULL_LIMIT_MAX}")
    if more and next_after == after:
        raise PullError("garbage", f"{what}: more is true but next_after did not move from {after}")
    if records and next_after == after:
        raise PullError("garbage", f"{what}: records came with next_after still {after}")
    return Page([_entry(raw, after, next_after, i) for i, raw in enumerate(records)], next_after, more)


async def fetch_page(
    http: aiohttp.ClientSession, node: NodeSpec, token: str, after: int, limit: int, max_bytes: int
) -> Page:
    """GET one page of the node's pending records after `after`."""
    what = f"GET {node.url}{PULL_PATH}"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    params = {"after": str(after), "limit": str(limit)}
    try:
        async with http.get(
            f"{node.url}{PULL_PATH}", params=params, headers=headers, allow_redirects=False
        ) as response:
            if response.status != 200:
                raise _status_error(response, what)
            body = await _read(response, max_bytes, what)
    except TimeoutError:
        raise PullError("network", f"{what}: no complete answer within the request timeout") from None
    except aiohttp.ClientError as exc:
        raise PullError("network", f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None
    return parse_page(_decode(body, what), after, what)


async def ack(http: aiohttp.ClientSession, node: NodeSpec, token: str, upto: int) -> None:
    """POST the ack up to `upto`: the node marks those records delivered."""
    what = f"POST {node.url}{ACK_PATH}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with http.post(
            f"{node.url}{ACK_PATH}", json={"upto": upto}, headers=headers, allow_redirects=False
        ) as response:
            if response.status != 200:
                raise _status_error(response, what)
            answer = _decode(await _read(response, _MAX_ACK_ANSWER, what), what)
    except TimeoutError:
        raise PullError("network", f"{what}: no complete answer within the request timeout") from None
    except aiohttp.ClientError as exc:
        raise PullError("network", f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(answer, dict) or answer.get("upto") != upto:
        raise PullError("garbage", f"{what}: answer does not confirm upto {upto}: {str(answer)[:200]}")
