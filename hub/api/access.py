"""Who may use which route of the local API (CONTRACTS §9), decided in one middleware.

Every route falls in one class, by path and method, with state-changing requests denied unless
proven otherwise:

- open: `/healthz`, `/metrics`, `/board` — anyone.
- pull: `/v1/records…` — the pull token, checked by the pull handlers themselves (§5).
- phone: `/r/{token}` — the link's single-use token is the credential (§13); no control token and
  no JSON (a phone posts a plain form), but a `Host` that is this node or the host of
  `qr_evaluation.base_url` (`phone_hosts`), so that a DNS-rebound name cannot reach the page either.
  Its refusals are pages a phone can show, logged without the client's address or the token.
- view: any other GET/HEAD — open on a loopback listen address, otherwise the control or the view
  token (`Authorization: Bearer`, or HTTP Basic with the token as password so that a browser can
  open the status page and keep the credential for its session).
- control: anything else (every POST: an evaluation request, a window's staff event of §12, an
  alert's steps) — `Content-Type: application/json`, a `Host` that is this
  node (so a web page elsewhere, or a DNS-rebound name, cannot drive it) and, once one is set, the
  control token. A web page on the hall network can send neither JSON cross-site without a CORS
  pre-flight (never granted) nor a foreign `Host`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from hub.api.phone_pages import phone_refusal
from hub.config import is_loopback

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RefusalCounter = Callable[[str], None]
RequestHook = Callable[[web.Request], Callable[[], None] | None]

OPEN_PATHS = frozenset({"/healthz", "/metrics", "/board"})
PULL_PREFIX = "/v1/records"
PHONE_PREFIX = "/r/"
READ_METHODS = frozenset({"GET", "HEAD"})
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


class Access(enum.Enum):
    """The credential a route needs."""

    OPEN = "open"
    PULL = "pull"
    PHONE = "phone"
    VIEW = "view"
    CONTROL = "control"


def access_for(method: str, path: str) -> Access:
    """The access class of a request, by its path and method."""
    if path in OPEN_PATHS:
        return Access.OPEN
    if path == PULL_PREFIX or path.startswith(PULL_PREFIX + "/"):
        return Access.PULL
    if path.startswith(PHONE_PREFIX):
        return Access.PHONE
    if method in READ_METHODS:
        return Access.VIEW
    return Access.CONTROL


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _host_name(header: str) -> str:
    """The host part of a `Host` header, lower-cased (`[::1]:8780` → `[::1]`)."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[: text.find("]") + 1] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _same(offered: str, secret: str) -> bool:
    """Constant-time comparison; a header may carry undecodable bytes (aiohttp: surrogates)."""
    return hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), secret.encode("utf-8"))


@dataclass(slots=True)
class AccessPolicy:
    """The §9 rules for one node: its listen address, tokens and allowed `Host` names."""

    listen_host: str
    listen_port: int
    control_token: str = field(default="", repr=False)
    view_token: str = field(default="", repr=False)
    allowed_hosts: Iterable[str] = ()
    phone_hosts: Iterable[str] = ()
    """Host names phones use for `/r/…` besides this node's names: `qr_evaluation.base_url`'s (§13)."""
    _names: frozenset[str] = frozenset()
    _host_ports: frozenset[str] = frozenset()
    _phone_names: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        names = set(LOCAL_HOSTS)
        names.add(_bracketed(self.listen_host.lower()))
        host_ports = set()
        for entry in self.allowed_hosts:
            text = entry.strip().lower()
            if _host_name(text) != text:
                host_ports.add(text)
            else:
                names.add(_bracketed(text))
        self._names = frozenset(names)
        self._host_ports = frozenset(host_ports)
        self._phone_names = frozenset(_bracketed(name.strip().lower()) for name in self.phone_hosts)

    @property
    def loopback(self) -> bool:
        """True when only processes on this machine can reach the API."""
        return is_loopback(self.listen_host)

    def host_allowed(self, header: str | None) -> bool:
        """Is `Host` this node: the listen address, a loopback name or an `api.allowed_hosts` entry?"""
        if not header:
            return False
        text = header.strip().lower()
        return _host_name(text) in self._names or text in self._host_ports

    def phone_host_allowed(self, header: str | None) -> bool:
        """Is `Host` this node, or the host (any port: a proxy may forward) of the phones' base URL?"""
        return self.host_allowed(header) or (
            bool(header) and _host_name(str(header).strip().lower()) in self._phone_names
        )

    def origin_allowed(self, origin: str | None) -> bool:
        """A browser's `Origin`, if sent, must name this node too (`null` never does)."""
        if origin is None:
            return True
        parts = urlsplit(origin.strip())
        return bool(parts.netloc) and self.host_allowed(parts.netloc)

    def bearer(self, request: web.Request) -> str | None:
        """The bearer token of a request (or the password of HTTP Basic), None if it has none."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and value.strip():
            return value.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
            return decoded.partition(":")[2] or None
        return None

    def control_granted(self, token: str | None) -> bool:
        """The control token, when one is set; open to loopback processes only when none is."""
        if not self.control_token:
            return self.loopback
        return token is not None and _same(token, self.control_token)

    def view_granted(self, token: str | None) -> bool:
        """Views are open on loopback; elsewhere the control or view token opens them."""
        if self.loopback:
            return True
        if token is None:
            return False
        return any(_same(token, secret) for secret in (self.control_token, self.view_token) if secret)


class AccessGuard:
    """The middleware applying an `AccessPolicy`; refusals are counted by reason and logged."""

    def __init__(self, policy: AccessPolicy, count: RefusalCounter, hook: RequestHook | None = None) -> None:
        self.policy = policy
        self._count = count
        self._hook = hook

    def _refuse(
        self, request: web.Request, status: int, reason: str, message: str, *, challenge: bool = False
    ) -> web.Response:
        self._count(reason)
        log.warning("api: %s %s from %s refused: %s", request.method, request.path, request.remote, message)
        # Only views challenge: a browser then asks for the token itself. A challenge on a fetch()
        # from the status page would hold it behind the browser's dialog instead of the page's own.
        headers = {"WWW-Authenticate": 'Basic realm="hallhub", charset="UTF-8"'} if challenge else None
        return web.json_response({"error": message}, status=status, headers=headers)

    def check(self, request: web.Request) -> web.Response | None:
        """None if the request may proceed, else the refusal to send."""
        access = access_for(request.method, request.path)
        policy = self.policy
        if access is Access.PHONE:
            return self._check_phone(request)
        if access in (Access.OPEN, Access.PULL):
            return None
        if not policy.host_allowed(request.headers.get("Host")):
            return self._refuse(
                request,
                421,
                "http_host",
                f"Host {request.headers.get('Host', '(none)')!r} is not this node "
                "(use its address, or add the name to api.allowed_hosts)",
            )
        token = policy.bearer(request)
        if access is Access.VIEW:
            if policy.view_granted(token):
                return None
            message = "this page needs the view or control token"
            return self._refuse(request, 401, "http_unauthorized", message, challenge=True)
        if not policy.control_granted(token):
            return self._refuse(
                request,
                401,
                "http_unauthorized",
                "wrong token"
                if token is not None
                else "missing bearer token (Authorization: Bearer <api.control_token>)",
            )
        if not policy.origin_allowed(request.headers.get("Origin")):
            return self._refuse(
                request, 403, "http_origin", f"Origin {request.headers.get('Origin')!r} is not this node"
            )
        if request.content_type != "application/json":
            return self._refuse(
                request,
                415,
                "http_content_type",
                f"Content-Type must be application/json, got {request.content_type!r}",
            )
        return None

    def _check_phone(self, request: web.Request) -> web.Response | None:
        """`/r/…`: only the `Host` is checked here; the handler checks the token, form and rate."""
        if self.policy.phone_host_allowed(request.headers.get("Host")):
            return None
        self._count("http_host")
        # Neither the client's address nor the path (it holds the link's token) is logged (§13).
        log.warning(
            "api: %s /r/… refused: Host is not this node nor qr_evaluation.base_url's", request.method
        )
        return phone_refusal(421, "请使用评价二维码中的地址打开评价页面。")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Apply the policy before the handler; tell the connection guard a request is in progress."""
        done = self._hook(request) if self._hook is not None else None
        try:
            refusal = self.check(request)
            if refusal is not None:
                return refusal
            return await handler(request)
        finally:
            if done is not None:
                done()


__all__ = ["Access", "AccessGuard", "AccessPolicy", "access_for"]
