"""How a device talks to the service, as a small interface.

The agent depends on :class:`Transport` only. ``edge_client`` ships the HTTP
implementation (aiohttp); the simulator and tests plug in an in-process one
that calls the real service app without sockets. Paths and headers follow
docs/protocol.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedge.errors import FedgeError


class TransportError(FedgeError):
    """The request did not complete: connection refused or reset, timeout,
    truncated body. Retrying later may succeed."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; TransportError if it is not (a garbled answer)."""
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TransportError(f"HTTP {self.status}: body is not JSON ({exc})") from exc

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


class Transport(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request; raise TransportError if no complete answer came."""
        ...

    async def close(self) -> None: ...
