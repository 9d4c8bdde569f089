from __future__ import annotations

import asyncio

import pytest

from fedge.clock import ManualClock


async def test_manual_clock_wakes_sleepers_in_order() -> None:
    clock = ManualClock(start=1000.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 5), ("a", 2), ("c", 9))]
    await asyncio.sleep(0)
    assert clock.next_deadline == 2
    clock.advance(4)
    await asyncio.sleep(0)
    assert woke == ["a"]
    while clock.advance_to_next():
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert woke == ["a", "b", "c"]
    assert clock.monotonic() == 9
    assert clock.time() == 1009


async def test_wall_clock_jump_leaves_monotonic_alone() -> None:
    clock = ManualClock()
    before = clock.monotonic()
    clock.wall_offset = -3600
    assert clock.monotonic() == before
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
