"""The central platform: DNS, TLS, the node's token, and the clock skew from the answer's `Date` header.

The probe is a batch POST with no records, which no receiver stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from urllib.parse import urlsplit

import aiohttp

from hub.config import is_loopback
from hub.ops.doctor.base import CheckContext
from hub.ops.doctor.clock import judge_skew
from hub.ops.doctor.report import Finding
from hub.ops.tls import CentralTlsError, central_tls_context

__all__ = ["check_central"]


async def check_central(ctx: CheckContext) -> list[Finding]:
    """DNS, TLS, the token and the clock skew from the `Date` header.

    The probe is a batch POST with no records, which no receiver stores. A platform checks the token
    before the body (the reference receiver does): 401/403 means a wrong token, and the 400 for an
    empty batch means the token was accepted.
    """
    central = ctx.config.central
    if not central.url:
        return [Finding.ok("central", "-", "push is off (central.url is empty); the platform must pull")]
    url = central.url.rstrip("/")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    subject = url
    findings: list[Finding] = []
    if not ctx.secrets.central_token:
        findings.append(
            Finding.error(
                "central",
                subject,
                "push is on but there is no token",
                f"set central.token or central.token_file to the token issued for node {ctx.config.node.id}",
            )
        )
    if parts.scheme == "http" and not is_loopback(host):
        findings.append(
            Finding.warn(
                "central",
                subject,
                "plain http: records and the token travel unencrypted",
                "use the platform's https:// URL in central.url",
            )
        )
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(ctx.options.timeout_s):
            await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, TimeoutError) as exc:
        reason = "no answer from DNS" if isinstance(exc, TimeoutError) else exc.strerror
        return [
            *findings,
            Finding.error(
                "central",
                subject,
                f"cannot resolve {host}: {reason}",
                "check the host name in central.url and the DNS servers in /etc/resolv.conf",
            ),
        ]
    try:
        ssl_context = central_tls_context(ctx.config.central) if parts.scheme == "https" else None
    except CentralTlsError as exc:
        return [
            *findings,
            Finding.error(
                "central",
                subject,
                f"TLS files unusable: {exc}",
                "check central.ca_file, central.cert_file and central.key_file",
            ),
        ]
    from contract.wire import batch_path  # noqa: PLC0415

    node_id = ctx.config.node.id
    batch_id = f"doctor-{uuid.uuid4()}"
    body = json.dumps(
        {"node_id": node_id, "batch_id": batch_id, "sent_at": _now_rfc3339(), "records": []}
    ).encode()
    headers = {
        "Authorization": f"Bearer {ctx.secrets.central_token}",
        "Content-Type": "application/json",
        "Idempotency-Key": batch_id,
    }
    target = url + batch_path(node_id)
    timeout = aiohttp.ClientTimeout(total=ctx.options.timeout_s)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            sent = time.time()
            async with session.post(target, data=body, headers=headers, ssl=ssl_context or True) as response:
                received = time.time()
                status = response.status
                date = response.headers.get("Date")
                text = await response.text(errors="replace")
    except aiohttp.ClientConnectorCertificateError as exc:
        return [
            *findings,
            Finding.error(
                "central",
                subject,
                f"TLS certificate of {host} not trusted: {_verify_message(exc.certificate_error)}",
                "set central.ca_file to the platform's CA certificate, or install it"
                " (/usr/local/share/ca-certificates/ and update-ca-certificates)",
            ),
        ]
    except aiohttp.ClientSSLError as exc:
        return [
            *findings,
            Finding.error(
                "central",
                subject,
                f"TLS handshake with {host} failed: {exc}",
                "check central.url's port and the platform's TLS settings",
            ),
        ]
    except aiohttp.ClientConnectorError as exc:
        reason = (exc.os_error.strerror or str(exc.os_error)).lower()
        return [
            *findings,
            Finding.error(
                "central",
                subject,
                f"cannot connect to {host}:{port}: {reason}",
                "check central.url and that the firewall lets the node reach it",
            ),
        ]
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = (
            f"no answer within {ctx.options.timeout_s:.0f} s" if isinstance(exc, TimeoutError) else str(exc)
        )
        return [
            *findings,
            Finding.error("central", subject, reason, "check central.url and the network path to it"),
        ]
    findings.append(_judge_central(status, text, subject, node_id, target))
    findings.append(judge_skew(date, (sent + received) / 2))
    return findings


def _verify_message(error: Exception) -> str:
    """`self-signed certificate` rather than the whole OpenSSL line with its source position."""
    message = getattr(error, "verify_message", None)
    return message if isinstance(message, str) and message else str(error)


def _now_rfc3339() -> str:
    """`sent_at` of the test batch, as the uplink writes it."""
    from contract.records import utc_now  # noqa: PLC0415

    return utc_now()


def _error_text(body: str) -> str:
    """The platform's `error` from a JSON answer, else the start of the body (never all of it)."""
    with contextlib.suppress(ValueError, AttributeError):
        value = json.loads(body).get("error")
        if isinstance(value, str):
            return value[:200]
    return body.strip()[:200]


def _judge_central(status: int, body: str, subject: str, node_id: str, target: str) -> Finding:
    """What the answer to the empty test batch says about the URL and the token."""
    if status in (401, 403):
        return Finding.error(
            "central",
            subject,
            f"refused the node's token (HTTP {status}: {_error_text(body)})",
            f"set central.token (or central.token_file) to the token issued for node {node_id}",
        )
    if status in (404, 405):
        return Finding.error(
            "central",
            subject,
            f"no batch endpoint at {target} (HTTP {status})",
            "central.url must be the platform's base URL: the hub appends /v1/nodes/{node_id}/batches",
        )
    if 200 <= status < 300:
        return Finding.ok("central", subject, f"token accepted (HTTP {status} for an empty test batch)")
    if status in (400, 413, 422):
        return Finding.ok(
            "central", subject, f"token accepted (HTTP {status} for an empty test batch, as expected)"
        )
    return Finding.warn(
        "central",
        subject,
        f"answered HTTP {status} ({_error_text(body)}); the hub retries such answers",
        "if it persists, ask the platform's operators",
    )
