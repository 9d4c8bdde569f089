"""Exponential backoff with full jitter, in the shape of Flower's
``common/retry_invoker.py`` but asynchronous and clock-driven.

``wait(n) ~ U(0, min(max_s, base_s · 2^n))`` — full jitter spreads a fleet that
failed together (a server restart) over the whole window instead of bringing
it back in lockstep. Sleeps go through the injected clock (monotonic time), so
wall-clock jumps do not shorten or stretch a backoff.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fedge.clock import Clock

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Backoff:
    """Backoff state: ``attempt`` grows on each failure, resets on success."""

    base_s: float
    max_s: float
    rng: random.Random
    attempt: int = 0

    def next_wait(self, floor: float = 0.0) -> float:
        """The next wait (at least ``floor``, e.g. a server's Retry-After)."""
        cap = min(self.max_s, self.base_s * (2.0 ** min(self.attempt, 60)))
        self.attempt += 1
        return max(floor, self.rng.uniform(0.0, cap))

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class RetryDetails:
    attempt: int
    wait: float
    error: BaseException


class RetryInvoker:
    """Calls an async target until it succeeds, ``should_giveup(error)`` says stop,
    or ``max_tries`` is reached; ``on_backoff`` sees each wait."""

    def __init__(
        self,
        clock: Clock,
        backoff: Backoff,
        *,
        retry_on: tuple[type[BaseException], ...],
        max_tries: int | None = None,
        should_giveup: Callable[[BaseException], bool] | None = None,
        wait_floor: Callable[[BaseException], float] | None = None,
        on_backoff: Callable[[RetryDetails], None] | None = None,
    ) -> None:
        self.clock = clock
        self.backoff = backoff
        self.retry_on = retry_on
        self.max_tries = max_tries
        self.should_giveup = should_giveup
        self.wait_floor = wait_floor
        self.on_backoff = on_backoff

    async def invoke(self, target: Callable[[], Awaitable[T]]) -> T:
        tries = 0
        while True:
            tries += 1
            try:
                result = await target()
            except self.retry_on as exc:
                if self.should_giveup and self.should_giveup(exc):
                    raise
                if self.max_tries is not None and tries >= self.max_tries:
                    raise
                floor = self.wait_floor(exc) if self.wait_floor else 0.0
                wait = self.backoff.next_wait(floor)
                details = RetryDetails(tries, wait, exc)
                if self.on_backoff:
                    self.on_backoff(details)
                else:
                    log.warning("attempt %d failed (%s); retrying in %.1f s", tries, exc, wait)
                await self.clock.sleep(wait)
                continue
            self.backoff.reset()
            return result
