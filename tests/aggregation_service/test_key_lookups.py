"""Published-key lookups are grouped into one store hop and fail together."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aggregation_service.errors import StorageError
from aggregation_service.service import _KeyLookups


class FakeStore:
    def __init__(self, published: dict[str, str], fail: bool = False) -> None:
        self.published = published
        self.fail = fail
        self.hops: list[list[str]] = []

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        await asyncio.sleep(0.01)  # a hop in flight: later keys queue behind it
        if self.fail:
            raise StorageError("disk gone")
        return fn(*args)

    def published_key(self, key: str) -> str | None:
        return self.published.get(key)


def _lookups(store: FakeStore) -> _KeyLookups:
    original = store.run

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        store.hops.append(list(args[0]))
        return await original(fn, *args)

    store.run = run  # type: ignore[method-assign]
    return _KeyLookups(store, asyncio.ensure_future)  # type: ignore[arg-type]


async def test_concurrent_lookups_share_hops_and_answer_each_key() -> None:
    store = FakeStore({"k1": "up-1", "k3": "up-3"})
    lookups = _lookups(store)
    keys = ["k1", "k2", "k3", "k1", "k4"]
    answers = await asyncio.gather(*(lookups.published(k) for k in keys))
    assert answers == ["up-1", None, "up-3", "up-1", None]
    assert len(store.hops) == 1  # all asked within one loop turn: one hop


async def test_keys_asked_during_a_hop_go_in_the_next_one() -> None:
    store = FakeStore({"b": "up-b"})
    lookups = _lookups(store)
    first = asyncio.ensure_future(lookups.published("a"))
    await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(lookups.published(k)) for k in ("b", "c")]
    assert await first is None
    assert [await f for f in later] == ["up-b", None]
    assert [sorted(set(h)) for h in store.hops] == [["a"], ["b", "c"]]


async def test_a_store_error_reaches_every_waiting_request() -> None:
    store = FakeStore({}, fail=True)
    lookups = _lookups(store)
    results = await asyncio.gather(
        *(lookups.published(k) for k in ("x", "y")), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) for r in results)
    store.fail = False
    assert await lookups.published("x") is None  # the next lookup starts afresh


async def test_a_request_that_went_away_does_not_break_the_others() -> None:
    store = FakeStore({"k": "up-k"})
    lookups = _lookups(store)
    gone = asyncio.ensure_future(lookups.published("k"))
    kept = asyncio.ensure_future(lookups.published("k"))
    await asyncio.sleep(0)
    gone.cancel()
    assert await kept == "up-k"
