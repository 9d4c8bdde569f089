"""``fedge serve``: run the app on a real socket, optionally with TLS.

The bound address is printed, and written to ``port_file`` when configured,
so tests and scripts can start the server on port 0 and find it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import time
from pathlib import Path

from aiohttp import web

from aggregation_service import logfilter
from aggregation_service.app import SERVICE, create_app
from aggregation_service.config import OPERATOR_TOKEN_ENV, ServiceConfig
from aggregation_service.connections import (
    GUARD,
    ConnectionGuard,
    GuardedSite,
    connection_cap,
    raise_open_file_limit,
)
from aggregation_service.errors import ConfigError

log = logging.getLogger("aggregation_service")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(json_lines: bool) -> None:
    if not json_lines:
        return
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())


def ssl_context(config: ServiceConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_cert/tls_key: cannot load {config.tls_cert} / {config.tls_key}: {exc}"
        ) from exc
    return context


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


async def serve(config: ServiceConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set)."""
    if not config.operator_token:
        raise ConfigError(
            f"no operator token: set {OPERATOR_TOKEN_ENV} or operator_token in the config "
            "(at least 16 characters)"
        )
    context = ssl_context(config)
    app = create_app(config)
    open_files = raise_open_file_limit()
    metrics = app[SERVICE].metrics
    guard = ConnectionGuard(
        config.limits,
        connection_cap(config.limits, open_files),
        count=metrics.connections_refused.inc,
    )
    app[GUARD] = guard
    metrics.connections.collect = lambda: {(): float(guard.open_connections)}
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=config.limits.keepalive_timeout_s,
        # After an early answer (413, 408) aiohttp reads the rest of the body
        # for this long before closing; a slow client must not keep it (or a
        # graceful stop) waiting the default 10 s.
        lingering_time=2.0,
    )
    await runner.setup()
    try:
        site = GuardedSite(runner, config.host, config.port, guard, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc}") from exc
        port = site.port
        log.info(
            "open-file limit %d: at most %d connections, %s per address",
            open_files,
            guard.max_connections,
            config.limits.max_connections_per_peer or "no cap",
        )
        scheme = "https" if context else "http"
        if config.port_file is not None:
            _write_port_file(config.port_file, port)
        print(f"fedge serve: listening on {scheme}://{config.host}:{port}", flush=True)
        log.info("serving %s on %s://%s:%d", config.data_dir, scheme, config.host, port)
        done = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        log.info("shutting down")
    finally:
        started = time.perf_counter()
        await runner.cleanup()
        log.info("stopped in %.2f s", time.perf_counter() - started)


def run(config: ServiceConfig) -> int:
    configure_logging(config.log_json)
    logfilter.install()
    asyncio.run(serve(config))
    return 0
