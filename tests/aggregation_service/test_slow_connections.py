"""Slow and piled-up connections against a real ``fedge serve``: a trickled
request head or body is cut off with 408, connections beyond the caps are
refused with one-line 503s before they reach aiohttp, and a process at a
systemd-sized open-file limit keeps answering /healthz under 400 such
connections — without a log flood."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from pathlib import Path
from typing import Any

import pytest

from tests.aggregation_service.realserver import (
    ServerProcess,
    start_server,
    stop_server,
    write_config,
)

pytestmark = pytest.mark.slow


def _server(tmp_path: Path, preexec_fn: Any = None, **limits: Any) -> ServerProcess:
    config = write_config(tmp_path / "server.yaml", tmp_path / "data", limits=limits)
    return start_server(tmp_path / "data", config, tmp_path, preexec_fn=preexec_fn)


async def _open(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _status(reader: asyncio.StreamReader, timeout: float = 10.0) -> int | None:
    """The status of the answer, or None if the server closed without one."""
    line = await asyncio.wait_for(reader.readline(), timeout)
    return int(line.split()[1]) if line else None


async def _healthz(port: int, source: str = "127.0.0.1") -> int | None:
    reader, writer = await _open(port, source)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        return await _status(reader)
    finally:
        writer.close()


async def test_a_trickled_head_is_cut_off(tmp_path: Path) -> None:
    server = _server(tmp_path, header_timeout_s=1.0)
    try:
        reader, writer = await _open(server.port)
        started = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.2)
            if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                break
        assert await _status(reader) == 408
        assert time.monotonic() - started < 5.0  # cut at ~1 s, not after the whole trickle
        # A silent connection is closed too.
        reader, _ = await _open(server.port)
        assert await _status(reader) == 408
        assert await _healthz(server.port) == 200
    finally:
        stop_server(server)


async def test_a_trickled_body_is_cut_off(tmp_path: Path) -> None:
    server = _server(tmp_path, body_timeout_s=1.0)
    try:
        reader, writer = await _open(server.port)
        writer.write(
            b"POST /v1/devices/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"enrollment_token\": "
        )
        await writer.drain()
        assert await _status(reader, timeout=15.0) == 408
        writer.close()
    finally:
        stop_server(server)


async def test_connection_caps(tmp_path: Path) -> None:
    server = _server(
        tmp_path, header_timeout_s=60.0, max_connections=30, max_connections_per_peer=20
    )
    held: list[Any] = []
    try:
        for _ in range(20):
            held.append(await _open(server.port))
        reader, writer = await _open(server.port)
        assert await _status(reader) == 503  # the 21st from this address
        held.append((reader, writer))
        assert await _healthz(server.port, "127.0.0.2") == 200  # another address gets in
        for _ in range(10):
            held.append(await _open(server.port, "127.0.0.3"))
        await asyncio.sleep(0.3)
        # 30 open, all idle: a prompt client still gets in, the oldest idle one goes.
        assert await _healthz(server.port, "127.0.0.4") == 200
        assert await _status(held[0][0]) == 503
        # 30 busy (bodies in flight): now a newcomer is refused.
        for _, w in held:
            w.close()
        held.clear()
        await asyncio.sleep(0.3)
        for i in range(30):
            reader, writer = await _open(server.port, f"127.0.1.{i}")
            writer.write(
                b"POST /v1/devices/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b"\r\nContent-Length: 1000\r\n\r\n{"
            )
            await writer.drain()
            held.append((reader, writer))
        await asyncio.sleep(0.3)
        reader, writer = await _open(server.port, "127.0.0.5")
        held.append((reader, writer))
        assert await _status(reader) == 503
        for _, w in held:
            w.close()
        held.clear()
        await asyncio.sleep(0.3)
        metrics = await _metrics(server.port)
        for reason in ("too_many_connections_from_peer", "evicted_idle", "too_many_connections"):
            assert f'fedge_connections_refused_total{{reason="{reason}"}} 1' in metrics, reason
    finally:
        for _, w in held:
            w.close()
        stop_server(server)


async def _metrics(port: int) -> str:
    reader, writer = await _open(port, "127.0.0.9")
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data.decode()


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))


async def test_healthz_answers_at_a_low_open_file_limit(tmp_path: Path) -> None:
    """systemd's default soft limit is 1,024; 512 here so that 600 slow
    connections exceed it. Without the cap every accept failed with EMFILE,
    /healthz timed out and each failure logged a traceback."""
    server = _server(tmp_path, _low_nofile, header_timeout_s=30.0, max_connections_per_peer=0)
    held: list[Any] = []
    try:
        for _ in range(600):
            with contextlib.suppress(OSError):
                held.append(await _open(server.port))
        await asyncio.sleep(0.5)
        assert await _healthz(server.port, "127.0.0.2") == 200
    finally:
        for _, w in held:
            w.close()
        stop_server(server)
    text = (tmp_path / "server.log").read_text(errors="replace")
    assert "Too many open files" not in text
    assert "Traceback" not in text
    assert len(text) < 20_000, text[-2000:]


async def test_a_client_that_goes_away_is_one_log_line(tmp_path: Path) -> None:
    server = _server(tmp_path)
    try:
        for _ in range(3):
            _, writer = await _open(server.port)
            writer.write(
                b"POST /v1/devices/enroll HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\""
            )
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
        await asyncio.sleep(0.5)
        assert await _healthz(server.port) == 200
    finally:
        stop_server(server)
    text = (tmp_path / "server.log").read_text(errors="replace")
    assert "internal error" not in text and "Traceback" not in text, text[-3000:]
