"""The repeat limiter: a flood of one message becomes a few lines and a count."""

from __future__ import annotations

import logging

from aggregation_service.logfilter import RepeatLimiter


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, name: str = "x", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_a_flood_is_cut_to_the_burst_and_counted() -> None:
    clock = _Clock()
    limiter = RepeatLimiter(burst=3, interval_s=60.0, clock=clock)
    passed = [limiter.filter(_record("accept failed: %s")) for _ in range(1000)]
    assert sum(passed) == 3
    assert limiter.filter(_record("another message"))  # other messages are not held back
    clock.now = 61.0
    record = _record("accept failed: %s")
    assert limiter.filter(record)
    assert record.msg == "accept failed: %s [997 similar messages suppressed]"


def test_levels_and_loggers_are_apart() -> None:
    limiter = RepeatLimiter(burst=1, clock=_Clock())
    assert limiter.filter(_record("m", "a"))
    assert limiter.filter(_record("m", "b"))
    assert limiter.filter(_record("m", "a", logging.WARNING))
    assert not limiter.filter(_record("m", "a"))


def test_memory_stays_bounded_under_distinct_messages() -> None:
    limiter = RepeatLimiter(burst=1, clock=_Clock(), max_keys=100)
    for i in range(10_000):
        assert limiter.filter(_record(f"distinct {i}"))
    assert len(limiter._windows) <= 100


def test_unparseable_requests_are_one_info_line() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    from aggregation_service.logfilter import ClientErrors

    try:
        raise BadHttpMessage("Invalid header value char")
    except BadHttpMessage:
        import sys

        info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
        ("127.0.0.1",), info,
    )
    assert ClientErrors((BadHttpMessage,)).filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage().startswith("Error handling request from 127.0.0.1: 400")
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), None)
    assert ClientErrors((BadHttpMessage,)).filter(other) and other.levelno == logging.ERROR
