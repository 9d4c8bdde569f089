"""Connection-level defences for ``fedge serve``: caps on open connections
(overall and per peer address) and a deadline for each request head.

aiohttp never closes a connection that trickles a request head one byte at a
time, nor one that opens and sends nothing; enough of them exhaust the
process's file descriptors and every other request fails. :class:`ConnectionGuard`
wraps aiohttp's protocol factory: each connection is counted on arrival (and
refused with a one-line 503 when a cap is reached, before aiohttp sees it), and
must deliver a complete request head (``\\r\\n\\r\\n``) within the head
deadline of opening or of its first byte after the previous response — else
it is answered 408 and closed. Body deadlines are enforced where bodies are
read (:func:`aggregation_service.bodies.read_capped`), and idle keep-alive
connections by aiohttp's own ``keepalive_timeout``.

Running behind a proxy that enforces its own timeouts (HAProxy's ``timeout
http-request``, nginx's ``client_header_timeout``) is the stronger
deployment: docs/service.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext

from aiohttp import web

from aggregation_service.config import ConnectionLimits

log = logging.getLogger("aggregation_service.connections")

# The listen backlog: asyncio accepts up to this many sockets in one go (each
# an fd) before the guard sees the first of them.
BACKLOG = 128
# File descriptors kept free when the connection cap is derived from the
# open-file limit: the update log, SQLite, blobs and evaluation, plus one
# accept burst.
RESERVED_FDS = 128 + BACKLOG


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as servers do; systemd
    starts services at a soft 1,024) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(limits: ConnectionLimits, open_files: int) -> int:
    """The overall cap: the configured one, or what the fd limit leaves room for."""
    room = max(16, open_files - RESERVED_FDS)
    return min(limits.max_connections, room) if limits.max_connections else room


def _refusal(status: int, reason: str, code: str, detail: str) -> bytes:
    body = json.dumps({"error": {"code": code, "detail": detail}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    )
    if status == 503:
        head += "Retry-After: 5\r\n"
    return head.encode() + b"\r\n" + body


@dataclass
class _Conn:
    peer: str
    timer: asyncio.TimerHandle | None = None
    awaiting_head: bool = True
    tail: bytes = b""  # the last bytes seen, to find a head end split across reads
    doomed: bool = False  # answered 408/503 by the guard: its bytes no longer reach aiohttp


def _uncounted(reason: str) -> None:
    return None


@dataclass
class ConnectionGuard:
    limits: ConnectionLimits
    max_connections: int
    # Called with the refusal's code (too_many_connections, too_many_connections_from_peer,
    # evicted_idle, header_timeout).
    count: Callable[[str], None] = _uncounted
    _open: dict[asyncio.BaseTransport, _Conn] = field(default_factory=dict)
    _per_peer: dict[str, int] = field(default_factory=dict)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` around aiohttp's."""
        return lambda: _GuardedProtocol(factory(), self)

    # --- called by the protocol ---------------------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> bytes | None:
        """Count a new connection, or the refusal to send it."""
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if len(self._open) >= self.max_connections and not self._evict_idle():
            self.count("too_many_connections")
            return _refusal(
                503,
                "Service Unavailable",
                "too_many_connections",
                f"the server holds its maximum of {self.max_connections} connections, "
                "all of them busy",
            )
        cap = self.limits.max_connections_per_peer
        if cap and self._per_peer.get(peer, 0) >= cap:
            self.count("too_many_connections_from_peer")
            return _refusal(
                503,
                "Service Unavailable",
                "too_many_connections_from_peer",
                f"{cap} connections from this address are open already",
            )
        self._open[transport] = _Conn(peer)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self._arm(transport)
        return None

    def received(self, transport: asyncio.BaseTransport, data: bytes) -> bool:
        """Note bytes from a connection; False if they must not reach aiohttp."""
        conn = self._open.get(transport)
        if conn is None:
            return True
        if conn.doomed:
            return False
        if not conn.awaiting_head:
            return True
        if conn.timer is None:  # the first byte of a keep-alive connection's next request
            self._arm(transport)
        seen = conn.tail + data
        if b"\r\n\r\n" in seen:
            conn.awaiting_head = False
            self._disarm(conn)
        conn.tail = seen[-3:]
        return True

    def response_done(self, transport: asyncio.BaseTransport | None) -> None:
        """A request was answered: the next head's deadline starts at its first byte."""
        conn = self._open.get(transport) if transport is not None else None
        if conn is not None:
            conn.awaiting_head, conn.tail = True, b""
            self._disarm(conn)

    def closed(self, transport: asyncio.BaseTransport) -> None:
        self._forget(transport)

    def _forget(self, transport: asyncio.BaseTransport) -> None:
        conn = self._open.pop(transport, None)
        if conn is None:
            return
        self._disarm(conn)
        left = self._per_peer.get(conn.peer, 1) - 1
        if left:
            self._per_peer[conn.peer] = left
        else:
            self._per_peer.pop(conn.peer, None)

    def _evict_idle(self) -> bool:
        """At the cap, close the oldest connection that is between requests
        (idle keep-alive, or trickling a head): a slow client must not keep a
        prompt one — a health probe, a device — out."""
        for transport, conn in self._open.items():
            if conn.awaiting_head and not conn.doomed and not transport.is_closing():
                self.count("evicted_idle")
                conn.doomed = True
                # Closed at once, not half-closed: its descriptor is needed now.
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(
                        _refusal(
                            503,
                            "Service Unavailable",
                            "evicted_idle",
                            "the server is at its connection cap; idle connections close first",
                        )
                    )
                transport.close()
                self._forget(transport)
                return True
        return False

    # --- deadlines -----------------------------------------------------------------------

    def _arm(self, transport: asyncio.BaseTransport) -> None:
        conn = self._open[transport]
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(self.limits.header_timeout_s, self._expire, transport)

    @staticmethod
    def _disarm(conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        conn = self._open.get(transport)
        if conn is None or not conn.awaiting_head:
            return
        conn.timer = None
        conn.doomed = True
        self.count("header_timeout")
        _answer_and_close(
            transport,
            _refusal(
                408,
                "Request Timeout",
                "header_timeout",
                f"no complete request head within {self.limits.header_timeout_s:g} s",
            ),
        )


def _answer_and_close(transport: asyncio.BaseTransport, answer: bytes) -> None:
    """Send ``answer``, stop sending, and close a moment later: closing a
    socket with unread input makes the kernel reset it, and the client may
    then lose the answer it was about to read."""
    if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
        transport.close()
        return
    transport.write(answer)
    if transport.can_write_eof():
        transport.write_eof()
        asyncio.get_running_loop().call_later(1.0, transport.close)
    else:  # TLS has no half-close
        transport.close()


class _GuardedProtocol(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's handler, telling the guard
    about arrivals, bytes and departures."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        refusal = self._guard.admit(transport)
        if refusal is not None:
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(refusal)
            transport.close()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return  # refused: nothing reaches aiohttp
        if self._guard.received(self._transport, data):
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._transport is None:
            return None
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._guard.closed(self._transport)
        self._inner.connection_lost(exc)


# Set by ``fedge serve`` (absent under test servers): the app's middleware tells
# it when a response is done.
GUARD = web.AppKey("connection_guard", ConnectionGuard)


class GuardedSite(web.BaseSite):
    """``web.TCPSite`` with every connection passed through a :class:`ConnectionGuard`."""

    __slots__ = ("_bound", "_guard", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        ssl_context: SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._host, self._port, self._guard = host, port, guard
        self._bound = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._bound}"

    @property
    def port(self) -> int:
        return self._bound

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
        )
        if self._server.sockets:
            self._bound = int(self._server.sockets[0].getsockname()[1])
