"""Driving asyncio code on virtual time.

The devices' agents and the service read time only through a
:class:`fedge.clock.ManualClock`. The driver alternates two phases:

1. **settle** — let the event loop run until nothing can make progress
   without time passing: no ready callbacks, no request inside the
   in-process transport, no executor job the service is waiting on. Real
   threads (the service's SQLite and log executors) finish in real time
   while virtual time stands still.
2. **advance** — jump the clock to the earliest sleeper's deadline. The
   ManualClock wakes sleepers in (deadline, sequence number) order, and the
   event loop runs callbacks FIFO, so ties are broken by the order in which
   the sleeps were requested: deterministic for a seed.

CPU-heavy work (TFLite training) runs synchronously inside the device's
task and is *charged* to virtual time by a clock sleep afterwards, so it
never races with the clock. The only private API used is the loop's ready
queue length (CPython's ``BaseEventLoop._ready``); without it the driver
falls back to yielding a fixed number of times, which is correct but slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from fedge.clock import ManualClock

# Without access to the ready queue, yield this many times before deciding
# the loop is idle. Chains of awaits inside aiohttp are far shorter.
_FALLBACK_YIELDS = 64
# Real seconds to wait while a request or executor job is in progress.
_BUSY_POLL_S = 0.0002


@dataclass
class DriverStats:
    steps: int = 0  # clock advances
    woken: int = 0  # sleepers woken (≈ events)
    settle_yields: int = 0


class VirtualTimeDriver:
    """Runs the loop's tasks against ``clock`` until a virtual deadline."""

    def __init__(self, clock: ManualClock, *, busy: Callable[[], bool] = lambda: False) -> None:
        self.clock = clock
        self.busy = busy  # True while something outside the loop's queue is in progress
        self.stats = DriverStats()

    async def settle(self) -> None:
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)
        idle_rounds = 0
        while True:
            await asyncio.sleep(0)
            self.stats.settle_yields += 1
            if self.busy():
                idle_rounds = 0
                await asyncio.sleep(_BUSY_POLL_S)
                continue
            if ready is not None:
                # Our own wake-up is not in the queue while we run, so an
                # empty queue means every other task is blocked.
                if not ready:
                    # Two consecutive empty checks: a callback scheduled by
                    # call_soon from a finishing future lands one turn later.
                    idle_rounds += 1
                    if idle_rounds >= 2:
                        return
                else:
                    idle_rounds = 0
            else:
                idle_rounds += 1
                if idle_rounds >= _FALLBACK_YIELDS:
                    return

    async def run_until(
        self, end: float, *, on_step: Callable[[float], None] | None = None
    ) -> None:
        """Advance virtual time step by step until ``end`` (monotonic seconds)
        or until nobody sleeps any more."""
        while True:
            await self.settle()
            deadline = self.clock.next_deadline
            if deadline is None or deadline > end:
                break
            now = self.clock.monotonic()
            self.stats.woken += self.clock.advance(max(0.0, deadline - now))
            self.stats.steps += 1
            if on_step is not None:
                on_step(self.clock.monotonic())
        if self.clock.monotonic() < end:
            self.clock.advance(end - self.clock.monotonic())
            await self.settle()
