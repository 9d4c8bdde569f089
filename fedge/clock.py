"""Time as a dependency.

The service (deadlines, staleness, pace steering, rate limits), the agent
(backoff, idle windows, allowed hours) and the simulator all read time through
a :class:`Clock`, so a fleet can run on a virtual clock against the real code.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the Unix epoch (may jump: wall clock)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to: a test seam and the simulator's
    virtual time. Sleepers wake in deadline order as :meth:`advance` passes
    their deadlines; ``wall_offset`` lets a test make the wall clock jump
    without moving monotonic time."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = 0.0
        self._epoch = start
        self.wall_offset = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._epoch + self._now + self.wall_offset

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), future))
        await future

    @property
    def next_deadline(self) -> float | None:
        """Monotonic time of the earliest pending sleeper, if any."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled sleepers
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> int:
        """Move time forward and wake every sleeper whose deadline passed.
        Returns how many were woken. The woken tasks run at the event loop's
        next turns; yield to the loop to let them."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards; set wall_offset for wall-clock jumps")
        self._now += seconds
        woken = 0
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken

    def advance_to_next(self) -> bool:
        """Jump to the earliest pending deadline; False when nobody sleeps."""
        deadline = self.next_deadline
        if deadline is None:
            return False
        self.advance(max(0.0, deadline - self._now))
        return True
