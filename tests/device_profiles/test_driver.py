"""Virtual time: the driver advances only when every task waits on the clock,
ties break deterministically, and the in-process transport serves the real
aiohttp machinery without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from device_profiles import builtin_profiles
from device_profiles.device import SimDevice
from device_profiles.sim.driver import Activity, SimEventLoop, VirtualTimeDriver
from device_profiles.sim.transport import InProcessTransport, SimulatedLink
from fedge.clock import ManualClock
from fedge.transport import TransportError


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    loop = SimEventLoop()
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def test_ties_at_equal_virtual_times_break_in_request_order() -> None:
    async def scenario() -> list[tuple[float, int]]:
        clock = ManualClock()
        log: list[tuple[float, int]] = []

        async def device(i: int) -> None:
            for _ in range(3):
                await clock.sleep(10.0)  # everyone wakes at the same instants
                log.append((clock.monotonic(), i))

        tasks = [asyncio.ensure_future(device(i)) for i in range(5)]
        await VirtualTimeDriver(clock).run_until(100.0)
        await asyncio.gather(*tasks)
        return log

    first, second = run(scenario), run(scenario)
    assert first == second
    assert [i for _, i in first[:5]] == [0, 1, 2, 3, 4]
    assert [t for t, _ in first] == [10.0] * 5 + [20.0] * 5 + [30.0] * 5


def test_the_clock_waits_for_work_in_progress() -> None:
    """While an activity (a request, a Ray task) is in progress the driver
    must not advance virtual time, even though the ready queue is empty."""

    async def scenario() -> list[str]:
        clock = ManualClock()
        work = Activity()
        seen: list[str] = []
        real_done = asyncio.get_running_loop().create_future()

        async def device() -> None:
            work.begin()
            await real_done  # real work: not a clock sleep
            seen.append(f"work done at {clock.monotonic():g}")
            work.end()
            await clock.sleep(5)
            seen.append(f"slept until {clock.monotonic():g}")

        async def other() -> None:
            await clock.sleep(1)
            seen.append(f"other at {clock.monotonic():g}")

        asyncio.get_running_loop().call_later(0.01, real_done.set_result, None)
        tasks = [asyncio.ensure_future(device()), asyncio.ensure_future(other())]
        await VirtualTimeDriver(clock, activities=[work]).run_until(60)
        await asyncio.gather(*tasks)
        return seen

    assert run(scenario) == ["work done at 0", "other at 1", "slept until 5"]


def test_executor_jobs_run_inline_and_in_order() -> None:
    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        order: list[int] = []
        futures = [loop.run_in_executor(None, order.append, i) for i in range(5)]
        await asyncio.gather(*futures)
        failing = loop.run_in_executor(None, int, "x")
        with pytest.raises(ValueError):
            await failing
        return order

    assert run(scenario) == [0, 1, 2, 3, 4]


def _app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"bytes": len(body), "h": request.headers.get("X-Test")})

    async def limited(request: web.Request) -> web.Response:
        raise web.HTTPTooManyRequests(headers={"Retry-After": "3"})

    async def ranged(request: web.Request) -> web.Response:
        return web.Response(status=206, body=b"abc", headers={"Content-Range": "bytes 0-2/9"})

    app = web.Application(client_max_size=1000)
    app.router.add_post("/echo", echo)
    app.router.add_get("/limited", limited)
    app.router.add_get("/ranged", ranged)
    return app


def test_in_process_transport_serves_the_real_app() -> None:
    async def scenario() -> None:
        app = _app()
        runner = web.AppRunner(app)
        await runner.setup()
        transport = InProcessTransport(app)
        resp = await transport.request("POST", "/echo", headers={"X-Test": "1"}, body=b"x" * 10)
        assert resp.status == 200 and resp.json() == {"bytes": 10, "h": "1"}
        resp = await transport.request("GET", "/limited")
        assert resp.status == 429 and resp.header("retry-after") == "3"
        resp = await transport.request("GET", "/ranged")
        assert resp.status == 206 and resp.body == b"abc"
        assert resp.header("Content-Range") == "bytes 0-2/9"
        assert (await transport.request("GET", "/missing")).status == 404
        assert (await transport.request("POST", "/echo", body=b"x" * 5000)).status == 413
        assert transport.in_flight.count == 0
        await runner.cleanup()

    run(scenario)


def test_simulated_link_charges_virtual_time_and_loses_deterministically() -> None:
    profile = builtin_profiles()["android-lowend"]
    device = SimDevice.sample(0, profile, 1)

    async def scenario() -> tuple[float, int, list[bool]]:
        app = _app()
        runner = web.AppRunner(app)
        await runner.setup()
        clock = ManualClock()
        link = SimulatedLink(InProcessTransport(app), device, clock)
        outcomes: list[bool] = []
        finished: list[float] = []

        async def client() -> None:
            for _ in range(200):
                try:
                    await link.request("POST", "/echo", body=b"x" * 900)
                    outcomes.append(True)
                except TransportError:
                    outcomes.append(False)
            finished.append(clock.monotonic())

        task = asyncio.ensure_future(client())
        await VirtualTimeDriver(clock).run_until(1e6)
        await task
        await runner.cleanup()
        return finished[0], link.stats.bytes_up, outcomes

    elapsed, up, outcomes = run(scenario)
    expected = 200 * (device.rtt_s + 900 * 8 / (device.up_mbps * 1e6))
    # Lost requests never get their downlink half; every answer is small.
    assert expected * 0.5 < elapsed <= expected + 200 * 1000 * 8 / (device.down_mbps * 1e6)
    assert up == 200 * 900
    losses = outcomes.count(False)
    assert 0 < losses < 40  # loss_rate is 1-5 % for this profile
    assert run(scenario)[2] == outcomes
