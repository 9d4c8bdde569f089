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
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fedge.clock import ManualClock

# Without access to the ready queue, yield this many times before deciding
# the loop is idle. Chains of awaits inside aiohttp are far shorter.
_FALLBACK_YIELDS = 64


class Activity:
    """A count of jobs in progress with an event for "none left", so waiting
    for real work (a thread, a request) is a blocked await, not a poll."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def begin(self) -> None:
        self.count += 1
        if self._idle is not None:
            self._idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self) -> None:
        if self.count == 0:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()


class SimEventLoop(asyncio.SelectorEventLoop):
    """The simulator's event loop: executor jobs run inline.

    The service hands SQLite, log writes, decoding and evaluation to thread
    executors so that a real server's loop never blocks. In a simulation
    nothing else needs the loop while such a job runs (virtual time stands
    still), so running the job inline on the loop thread is equivalent — and
    it makes the order of every job deterministic and removes a thread
    hand-off (which costs milliseconds on a busy 2-core machine) per job.
    ``run_in_executor`` is a public, overridable method, so every caller is
    covered. ``jobs`` counts other real work the simulator awaits (Ray).
    """

    def __init__(self) -> None:
        super().__init__()
        self.jobs = Activity()
        self.inline_jobs = 0

    def run_in_executor(  # type: ignore[override]
        self, executor: concurrent.futures.Executor | None, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.create_future()
        self.inline_jobs += 1
        try:
            future.set_result(func(*args))
        except BaseException as exc:  # delivered to the awaiting caller, as a thread would
            future.set_exception(exc)
        return future


def loop_jobs() -> Activity | None:
    loop = asyncio.get_running_loop()
    return loop.jobs if isinstance(loop, SimEventLoop) else None


async def quiesce(activities: Sequence[Activity], stats: DriverStats | None = None) -> None:
    """Yield to the loop until no other callback is ready and no activity has
    jobs in progress. Jobs are awaited through their idle event (a blocked
    task is not in the ready queue, so two tasks quiescing at once never keep
    each other awake), and a finishing thread wakes the loop at once."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)
    idle_rounds = 0
    while True:
        pending = next((a for a in activities if a.count), None)
        if pending is not None:
            idle_rounds = 0
            await pending.wait_idle()
            continue
        await asyncio.sleep(0)
        if stats is not None:
            stats.settle_yields += 1
        if ready is not None:
            # Our own wake-up is not in the queue while we run, so an empty
            # queue means every other task is blocked. Two consecutive empty
            # checks: a future's done-callbacks land one loop turn later.
            idle_rounds = idle_rounds + 1 if not ready else 0
            if idle_rounds >= 2:
                return
        else:
            idle_rounds += 1
            if idle_rounds >= _FALLBACK_YIELDS:
                return


@dataclass
class DriverStats:
    steps: int = 0  # clock advances
    woken: int = 0  # sleepers woken (≈ events)
    settle_yields: int = 0


class VirtualTimeDriver:
    """Runs the loop's tasks against ``clock`` until a virtual deadline."""

    def __init__(self, clock: ManualClock, *, activities: Sequence[Activity] = ()) -> None:
        self.clock = clock
        self.activities = list(activities)  # real work in progress outside the ready queue
        self.stats = DriverStats()

    def _all(self) -> list[Activity]:
        jobs = loop_jobs()
        return [*self.activities, *([jobs] if jobs is not None else [])]

    async def settle(self) -> None:
        """Return once every other task is blocked on something only virtual
        time can release (a clock sleep) or on an event nobody will set."""
        await quiesce(self._all(), self.stats)

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
