"""Transports the simulator gives each device's agent.

:class:`InProcessTransport` calls the real aiohttp application directly: the
request is built as aiohttp's own ``make_mocked_request`` builds it (a real
``StreamReader`` body, the app's real ``client_max_size``), dispatched through
``Application._handle`` (router and middlewares, exactly as the server does)
and the response is prepared against a capturing writer, so every response
type — ``web.Response``, ``FileResponse`` with ``Range``, streamed responses —
is serialised by aiohttp itself. No socket, no real I/O: a request completes
within one settling of the event loop, which is what lets the virtual clock
advance only when every device is asleep (see :mod:`.driver`).

:class:`SimulatedLink` wraps any transport with one device's network: RTT,
bandwidth (virtual time charged on the clock), a loss rate, and byte counters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs as aiohttp_hdrs
from aiohttp import streams, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11, RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from device_profiles.device import SimDevice, hash_uniform
from device_profiles.sim.driver import Activity
from fedge.clock import Clock
from fedge.transport import Response, Transport, TransportError


class _CapturingWriter(AbstractStreamWriter):
    """Collects what aiohttp writes for a response (headers and body)."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.status_line = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.eof = False

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        self.body += chunk

    async def write_eof(self, chunk: bytes = b"") -> None:
        self.body += chunk
        self.eof = True

    async def drain(self) -> None:
        return None

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        # The in-process path never negotiates Accept-Encoding, so aiohttp only
        # asks for compression if a handler forces it; refuse loudly rather
        # than hand the agent a body that does not match its headers.
        raise TransportError("in-process transport: response compression is not supported")

    def enable_chunking(self) -> None:
        return None  # the body is captured whole; chunked framing is a wire detail

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        self.status_line = status_line
        self.headers = CIMultiDict(headers)


class _Protocol:
    """What a request and its body stream read from aiohttp's connection
    protocol: aiohttp's default limits for its multipart reader, no socket
    (no peer address, no TLS), and flow control that has nothing to pause.
    A plain object, not a ``Mock``: a mock records every call made on it, and
    the body stream calls ``resume_reading`` on every request."""

    _reading_paused = False
    connected = True
    max_field_size = 8190
    max_headers = 128
    max_line_size = 8190
    max_line_length = 8190
    ssl_context = None
    peername = None
    sockname = None

    def __init__(self) -> None:
        self.transport: Any = None
        self.writer: Any = None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self, resume_parser: bool = True) -> None:
        return None


class InProcessTransport:
    """A :class:`fedge.transport.Transport` into an aiohttp app, without sockets.

    The app must have been started (``web.AppRunner(app).setup()``) so its
    startup hooks and cleanup contexts ran. Requests are served one at a time
    (a lock): with many simulated devices this makes the order in which the
    service sees concurrent requests deterministic, and costs no virtual time.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        headers: Mapping[str, str] | None = None,
        quiesce: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.headers = dict(headers or {})
        # Awaited before each request: lets the service's background work
        # (publishing a version, evaluating it) finish first, so whether an
        # upload sees version N or N+1 does not depend on thread timing.
        self.quiesce = quiesce
        self._lock = asyncio.Lock()
        self._protocol: Any = _Protocol()
        self._transport: Any = None
        self._task: Any = None  # Request.task; nothing in the service reads it
        self.requests = 0
        self.in_flight = Activity()  # requests inside this transport (queued or served)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        self.in_flight.begin()
        try:
            async with self._lock:
                if self.quiesce is not None:
                    await self.quiesce()
                self.requests += 1
                return await self._dispatch(method, path, headers, body)
        finally:
            self.in_flight.end()

    async def _dispatch(
        self, method: str, path: str, headers: Mapping[str, str] | None, body: bytes | None
    ) -> Response:
        loop = asyncio.get_running_loop()
        hdrs: CIMultiDict[str] = CIMultiDict(self.headers)
        hdrs.update(headers or {})
        data = body or b""
        hdrs["Content-Length"] = str(len(data))
        hdrs.setdefault("Host", "fedge.simulated")
        protocol = self._protocol
        payload = streams.StreamReader(protocol, 2**16, loop=loop)
        if data:
            payload.feed_data(data)
        payload.feed_eof()
        writer = _CapturingWriter()
        request = self._request(method, path, hdrs, payload, writer)
        try:
            response = await self.app._handle(request)
        except web.HTTPException as exc:
            response = exc
        if not isinstance(response, web.StreamResponse):
            raise TransportError(f"{method} {path}: handler returned {type(response).__name__}")
        if not writer.status_line:
            await response.prepare(request)
            await response.write_eof()
        return Response(
            status=response.status,
            body=bytes(writer.body),
            headers=dict(writer.headers.items()),
        )

    def _request(self, method: str, path: str, hdrs: CIMultiDict[str],
                 payload: streams.StreamReader, writer: _CapturingWriter) -> web.Request:
        """What aiohttp's ``make_mocked_request`` builds, minus its two fresh
        ``Mock`` objects per request (a task and a match-info route, each a
        few hundred microseconds; ``Application._handle`` resolves the real
        route anyway)."""
        headers = CIMultiDictProxy(hdrs)
        raw = tuple((k.encode("utf-8"), v.encode("utf-8")) for k, v in hdrs.items())
        chunked = "chunked" in headers.get(aiohttp_hdrs.TRANSFER_ENCODING, "").lower()
        message = RawRequestMessage(
            method.upper(), path, HttpVersion11, headers, raw, False, None, False, chunked,
            URL(path),
        )
        protocol = self._protocol
        protocol.transport = None
        protocol.writer = writer
        return web.Request(
            message, payload, protocol, writer, self._task, asyncio.get_running_loop(),
            client_max_size=self.app._client_max_size,
        )

    async def close(self) -> None:
        return None


@dataclass
class LinkStats:
    requests: int = 0
    failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0  # virtual seconds spent in transfers


class SimulatedLink:
    """One device's network on top of another transport.

    Each request costs ``rtt/2 + request bytes / uplink`` of virtual time
    before it reaches the service and ``rtt/2 + response bytes / downlink``
    after; it fails (TransportError, as a reset connection would) with the
    device's loss rate, drawn from a counter-based hash so runs repeat.
    Header bytes are not counted: at fedge's payload sizes they are noise.
    """

    def __init__(self, inner: Transport, device: SimDevice, clock: Clock) -> None:
        self.inner = inner
        self.device = device
        self.clock = clock
        self.stats = LinkStats()

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        device = self.device
        n = self.stats.requests
        self.stats.requests += 1
        up = len(body or b"")
        cost = device.rtt_s / 2 + up * 8.0 / (device.up_mbps * 1e6)
        await self.clock.sleep(cost)
        self.stats.seconds += cost
        self.stats.bytes_up += up
        if hash_uniform(device.seed, 101, n) < device.loss_rate:
            self.stats.failures += 1
            raise TransportError(f"simulated network loss ({method} {path})")
        response = await self.inner.request(method, path, headers=headers, body=body)
        down = len(response.body)
        cost = device.rtt_s / 2 + down * 8.0 / (device.down_mbps * 1e6)
        await self.clock.sleep(cost)
        self.stats.seconds += cost
        self.stats.bytes_down += down
        return response

    async def close(self) -> None:
        return None
