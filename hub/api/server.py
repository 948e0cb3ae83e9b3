"""The local API's listening socket: a cap on open connections and a deadline for request headers.

aiohttp's server has neither: a thousand idle connections exhaust the process's file descriptors
(then asyncio logs every failed `accept`) and a client that sends its headers one byte a minute
holds its connection for ever. This wraps the protocol aiohttp makes for each connection
(`AppRunner.server`, a public factory, the same one `web.TCPSite` hands to `create_server`) and
adds both limits at the socket, before any parsing:

- at `max_connections` open connections, the oldest one still waiting for its request headers is
  closed to make room (a flood of idle connections then only displaces itself); if every one is
  busy with a request, the new connection is closed instead (counted either way);
- a connection whose request headers are not complete `header_timeout_s` after its first byte (or
  after it opened) is closed (counted). The deadline is cleared by `request_started`, which the
  API's middleware calls when aiohttp hands it the parsed request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger(__name__)

DropCounter = Callable[[str], None]


@dataclass(slots=True)
class ConnectionLimits:
    """How many connections at once, and how long a request's headers may take to arrive."""

    max_connections: int = 256
    header_timeout_s: float = 10.0


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, the cap and the header deadline around it."""

    def __init__(self, server: GuardedServer, inner: asyncio.Protocol) -> None:
        self._server = server
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._busy = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if len(self._server.open) >= self._server.limits.max_connections:
            idle = next((guard for guard in self._server.open.values() if not guard._busy), None)
            if idle is None:
                self._server.dropped("limit")
                transport.abort()
                return
            self._server.dropped("evicted_idle")
            idle.close()
        self._counted = True
        self._server.open[transport] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._counted:
            return
        if not self._busy and self._deadline is None:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._counted else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._disarm()
        if self._transport is not None:
            self._server.open.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        """Headers are in: the deadline no longer applies until the next request begins."""
        self._busy = True
        self._disarm()

    def request_done(self) -> None:
        """The handler returned; the next request's first byte starts a new deadline."""
        self._busy = False

    def close(self) -> None:
        """Close this connection now (it made room for a newer one)."""
        if self._transport is not None:
            self._transport.abort()
        self.connection_lost(None)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._server.limits.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._transport is not None and not self._busy:
            self._server.dropped("header_timeout")
            self._transport.abort()


class GuardedServer:
    """Serves an `AppRunner`'s application on `host:port` with connection limits; port 0 picks one."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, limits: ConnectionLimits, on_drop: DropCounter
    ) -> None:
        self._runner = runner
        self._host = host
        self._port = port
        self.limits = limits
        self._on_drop = on_drop
        self._server: asyncio.Server | None = None
        self.open: dict[asyncio.Transport, _Guarded] = {}
        self.port: int | None = None

    async def start(self) -> int:
        """Listen; returns the port (the one the OS chose when asked for 0)."""
        factory = self._runner.server
        if factory is None:
            raise RuntimeError("the runner is not set up: call `await runner.setup()` first")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guarded(self, factory()),
            self._host,
            self._port,
            reuse_address=True,
            backlog=min(self.limits.max_connections, socket.SOMAXCONN),
        )
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
        return self.port

    def connection_for(self, transport: asyncio.BaseTransport | None) -> _Guarded | None:
        """The guard of an open connection, for the middleware's `request_started`/`request_done`."""
        if not isinstance(transport, asyncio.Transport):
            return None
        return self.open.get(transport)

    def dropped(self, reason: str) -> None:
        """Count a connection closed by a limit (and log it: the log filter folds repeats)."""
        self._on_drop(reason)
        log.warning(
            "api: connection closed (%s; limits: %d connections, headers within %.0f s)",
            reason,
            self.limits.max_connections,
            self.limits.header_timeout_s,
        )

    async def stop(self) -> None:
        """Stop listening; open connections are closed by the runner's cleanup."""
        if self._server is not None:
            self._server.close()
            self._server = None
