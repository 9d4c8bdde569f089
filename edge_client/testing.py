"""Test seams shipped with the agent (the simulator uses them too).

- :class:`RecordingTransport` wraps any transport and keeps every request it
  sent (the "no raw data leaves the device" test reads it).
- :class:`FaultyTransport` wraps any transport and injects faults by path:
  connection refused, a slow answer that times out, 5xx, 429 with
  ``Retry-After``, garbage or truncated bodies.
- :func:`drive` runs a coroutine on a :class:`~fedge.clock.ManualClock`,
  jumping virtual time whenever everything is asleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from fedge.clock import Clock, ManualClock
from fedge.transport import Response, Transport, TransportError

T = TypeVar("T")


@dataclass(frozen=True)
class SentRequest:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class RecordingTransport:
    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[SentRequest] = []
        self.responses: list[Response | Exception] = []

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        self.sent.append(SentRequest(method, path, dict(headers or {}), body or b""))
        try:
            resp = await self.inner.request(method, path, headers=headers, body=body)
        except Exception as exc:
            self.responses.append(exc)
            raise
        self.responses.append(resp)
        return resp

    async def close(self) -> None:
        await self.inner.close()

    def outbound_bytes(self) -> bytes:
        """Everything sent, concatenated: paths, header names and values, bodies."""
        parts = []
        for r in self.sent:
            parts.append(f"{r.method} {r.path}\n".encode())
            parts.extend(f"{k}: {v}\n".encode() for k, v in r.headers.items())
            parts.append(r.body)
        return b"".join(parts)


Fault = Callable[[Response | None], Response]


def refused(_: Response | None) -> Response:
    raise TransportError("connection refused (injected)")


def status(code: int, retry_after: float | None = None, body: bytes | None = None) -> Fault:
    def fault(_: Response | None) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        payload = body if body is not None else (
            b'{"error": {"code": "injected", "detail": "injected fault"}}'
        )
        return Response(code, payload, headers)

    return fault


def garbage(_: Response | None) -> Response:
    return Response(200, b"\x00\xffnot json<html>", {})


def truncated(resp: Response | None) -> Response:
    if resp is None:
        raise TransportError("truncated (injected)")
    return Response(resp.status, resp.body[: len(resp.body) // 2], resp.headers)


@dataclass
class _Rule:
    method: str | None
    prefix: str
    fault: Fault
    times: int | None
    needs_response: bool
    delay_s: float = 0.0
    hits: int = 0


@dataclass
class FaultyTransport:
    """Faults by (method, path prefix), each for ``times`` requests (None: forever).

    ``after=True`` forwards the request first and spoils the answer (a truncated
    body); otherwise the server never sees it. ``delay_s`` sleeps on ``clock``
    first (a slow server: the fault then is typically a timeout)."""

    inner: Transport
    clock: Clock | None = None
    rules: list[_Rule] = field(default_factory=list)
    injected: int = 0

    def add(
        self,
        prefix: str,
        fault: Fault,
        *,
        times: int | None = 1,
        method: str | None = None,
        after: bool = False,
        delay_s: float = 0.0,
    ) -> FaultyTransport:
        self.rules.append(_Rule(method, prefix, fault, times, after, delay_s))
        return self

    def clear(self) -> None:
        self.rules.clear()

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        for rule in self.rules:
            if rule.times is not None and rule.hits >= rule.times:
                continue
            if not path.startswith(rule.prefix) or (rule.method and rule.method != method):
                continue
            rule.hits += 1
            self.injected += 1
            if rule.delay_s and self.clock is not None:
                await self.clock.sleep(rule.delay_s)
            resp = (
                await self.inner.request(method, path, headers=headers, body=body)
                if rule.needs_response else None
            )
            return rule.fault(resp)
        return await self.inner.request(method, path, headers=headers, body=body)

    async def close(self) -> None:
        await self.inner.close()


async def drive(
    clock: ManualClock, awaitable: Awaitable[T], *, max_jumps: int = 100_000,
    real_poll_s: float = 0.002,
) -> T:
    """Run ``awaitable`` to completion; whenever a task sleeps on the virtual
    clock, jump to the next deadline. Real I/O (a loopback server, a child
    process) is waited for in real time, so the awaited work must be the only
    thing sleeping on ``clock`` (true for one agent, which does one thing at a
    time)."""
    task = asyncio.ensure_future(awaitable)
    jumps = 0
    while not task.done():
        # Let ready callbacks run before deciding that everyone is asleep.
        for _ in range(5):
            await asyncio.sleep(0)
        if task.done():
            break
        if clock.next_deadline is not None:
            clock.advance_to_next()
            jumps += 1
            if jumps > max_jumps:
                task.cancel()
                raise RuntimeError(f"drive: more than {max_jumps} clock jumps; a busy loop?")
        else:
            await asyncio.sleep(real_poll_s)
    return task.result()
