"""The HTTP implementation of :class:`fedge.transport.Transport` (aiohttp).

aiohttp's exceptions never leave this module: a refused or reset connection,
a timeout, or a truncated body becomes :class:`TransportError`. Besides the
shared ``request``, :meth:`HttpTransport.fetch_to` streams a large body into a
file so a download cut half-way keeps what arrived (the next attempt resumes
it with ``Range``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp

from fedge.transport import Response, TransportError

CHUNK = 64 * 1024


@runtime_checkable
class StreamingTransport(Protocol):
    async def fetch_to(
        self, path: str, dest: Path, *, headers: Mapping[str, str] | None = None
    ) -> Response:
        """GET ``path`` appending a 206 body to ``dest`` (or replacing it on 200);
        the returned Response has an empty body."""
        ...


class HttpTransport:
    """One aiohttp session per agent; created lazily on the running loop."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=connect_timeout_s, sock_read=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookie jar: the device authenticates with its bearer token only.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    def _url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        try:
            async with self._client().request(
                method, self._url(path), headers=dict(headers or {}), data=body,
                allow_redirects=False,
            ) as resp:
                data = await resp.read()
                return Response(resp.status, data, dict(resp.headers))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def fetch_to(
        self, path: str, dest: Path, *, headers: Mapping[str, str] | None = None
    ) -> Response:
        try:
            async with self._client().get(
                self._url(path), headers=dict(headers or {}), allow_redirects=False
            ) as resp:
                if resp.status not in (200, 206):
                    return Response(resp.status, await resp.read(), dict(resp.headers))
                mode = "ab" if resp.status == 206 else "wb"
                # Each chunk is a small write to a local file; it is flushed so that
                # a cut connection leaves every received byte for the resume.
                with dest.open(mode) as fh:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        fh.write(chunk)
                        fh.flush()
                    os.fsync(fh.fileno())
                return Response(resp.status, b"", dict(resp.headers))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransportError(f"GET {path}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
