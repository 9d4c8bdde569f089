"""A log filter that keeps a flood of one message from drowning the rest.

Under attack or overload the same line repeats thousands of times a second
("Too many open files" from every failed accept, one traceback per refused
request); written out, that fills disks and hides the first, useful line.
:class:`RepeatLimiter` lets each distinct message (logger, level, format
string) through ``burst`` times per ``interval_s`` and counts the rest; the
first one let through after a quiet spell says how many were dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    started: float
    passed: int = 0
    dropped: int = 0


class RepeatLimiter(logging.Filter):
    def __init__(
        self,
        *,
        burst: int = 5,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        super().__init__()
        self.burst, self.interval_s, self.clock, self.max_keys = burst, interval_s, clock, max_keys
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self.interval_s:
            dropped = window.dropped if window is not None else 0
            if len(self._windows) >= self.max_keys:
                self._windows.clear()  # bounded memory under a flood of distinct messages
            self._windows[key] = window = _Window(now)
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar messages suppressed]"
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.dropped += 1
        return False


class ClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (a control byte in a header, an
    over-long line) at ERROR with a traceback: that is a client's mistake,
    already answered 400. Make it one INFO line."""

    def __init__(self, kinds: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and info[1] is not None and isinstance(info[1], self.kinds):
            record.msg = f"{record.getMessage()}: {info[1]!s}".replace("\n", " ")
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install(logger: logging.Logger | None = None) -> RepeatLimiter:
    """Add the filters to every handler of ``logger`` (default: the root)."""
    from aiohttp.http_exceptions import HttpProcessingError  # noqa: PLC0415 (server only)

    limiter = RepeatLimiter()
    client_errors = ClientErrors((HttpProcessingError,))
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(client_errors)  # first: a rewritten record is limited as itself
        handler.addFilter(limiter)
    return limiter
