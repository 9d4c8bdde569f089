"""The pipelined intake (async, mean, no screening): the next batch decodes on
the decode thread while the previous one is booked on the event loop. What
it must keep: every buffer's sum is the logged frames summed one at a time
in log order, bit for bit (what replay does), across seals and with refused
frames in between; a batch never spills into a buffer that sealed under it;
same-key retries still get the first upload's answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import quantization
from aggregation_service import service as service_module
from aggregation_service.updatelog import UpdateLog

from .conftest import SHAPES, EnvFactory, frame

K = 13  # buffer size: batches of a few uploads straddle its seals


class CountingExecutor(ThreadPoolExecutor):
    """The decode worker, counting how many jobs were queued at once: the
    pipeline is only exercised if a second batch was handed over before the
    first one finished."""

    def __init__(self) -> None:
        super().__init__(1, thread_name_prefix="fedge-cpu-test")
        self.outstanding = 0
        self.most = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.outstanding += 1  # submit and done callbacks: event loop / worker
        self.most = max(self.most, self.outstanding)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any]) -> None:
        self.outstanding -= 1


@pytest.fixture
def slow_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen each batch's time on the decode thread so uploads queue behind it."""
    real = service_module._decode_batch

    def slow(*args: Any) -> Any:
        time.sleep(0.01)
        return real(*args)

    monkeypatch.setattr(service_module, "_decode_batch", slow)


def update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Values of mixed magnitudes: float64 sums of them depend on the order.
    return {
        k: (rng.standard_normal(s) * 10.0 ** rng.integers(-4, 3, size=s)).astype(np.float32)
        for k, s in SHAPES.items()
    }


async def test_concurrent_uploads_sum_in_log_order_across_seals(
    make_env: EnvFactory, slow_decode: None
) -> None:
    env = await make_env(buffer_size=K, max_staleness=1000, over_provisioning=10.0)
    executor = CountingExecutor()
    env.service._cpu = executor
    sealed: list[dict[str, np.ndarray]] = []
    seal = env.service._seal

    def spy(rt: Any, *, abandon: bool = False) -> None:
        sealed.append({k: v.copy() for k, v in rt.buffer.sums.items()})
        seal(rt, abandon=abandon)

    env.service._seal = spy  # type: ignore[method-assign]
    devices = await env.enroll(80)
    plans = [await env.plan(d) for d in devices]
    bodies = [frame(update(i), {"bits": 8}) for i in range(len(devices))]
    bad = set(range(3, len(devices), 9))  # frames refused by the codec mid-stream
    for i in bad:
        bodies[i] = bodies[i][:-5]

    async def staggered(i: int) -> tuple[int, dict[str, Any]]:
        # Arrivals spread over the decodes, so batches of a few uploads form
        # while others are on the decode thread (one burst would make a
        # single batch larger than the buffer: nothing to overlap).
        await asyncio.sleep(0.002 * i)
        return await env.upload(devices[i], plans[i], bodies[i])

    answers = await asyncio.gather(*(staggered(i) for i in range(len(devices))))
    for i, (status, body) in enumerate(answers):
        assert status == (422 if i in bad else 202), (i, status, body)
    await env.service.wait_idle()
    assert executor.most >= 2, "no batch was ever queued behind another: nothing pipelined"

    accepted = len(devices) - len(bad)
    assert len(sealed) == accepted // K
    log = UpdateLog(env.data_dir / "log", fsync=False)
    log.open()
    records = list(log.replay(0))
    log.close()
    assert len(records) == accepted
    for n, got in enumerate(sealed):
        acc: dict[str, Any] = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
        for rec in records[n * K : (n + 1) * K]:
            quantization.decode_into(rec.body, acc, rec.header["weight"], expected=SHAPES)
        for k in SHAPES:
            assert got[k].tobytes() == acc[k].tobytes(), f"buffer {n}, tensor {k}"
    # The open buffer holds exactly the records after the last seal.
    rt = env.service.runtime("m")
    assert rt.buffer.count == accepted % K
    assert rt.buffer.count == len(records) - len(sealed) * K


async def test_a_retry_of_an_in_flight_upload_gets_its_answer(
    make_env: EnvFactory, slow_decode: None
) -> None:
    env = await make_env(buffer_size=50, max_staleness=1000)
    devices = await env.enroll(12)
    plans = [await env.plan(d) for d in devices]
    key = str(uuid.uuid4())
    first = asyncio.ensure_future(env.upload(devices[0], plans[0], frame(update(0)), key=key))
    await asyncio.sleep(0.002)  # the first is on the decode thread
    others = [
        env.upload(d, p, frame(update(i)))
        for i, (d, p) in enumerate(zip(devices[1:], plans[1:], strict=True), 1)
    ]
    retry = env.upload(devices[0], plans[0], frame(update(0)), key=key)
    results = await asyncio.gather(first, retry, *others)
    (s1, b1), (s2, b2) = results[0], results[1]
    assert (s1, s2) == (202, 202)
    assert b1["duplicate"] is False and b2["duplicate"] is True
    assert b1["update_id"] == b2["update_id"]
    assert all(status == 202 for status, _ in results[2:])
    assert env.service.runtime("m").buffer.count == len(devices)


def test_update_ids_drawn_in_blocks_are_distinct_fixed_width_hex() -> None:
    ids = service_module._RandomIds(10, block=4)
    drawn = [ids.next() for _ in range(4 * 50 + 3)]  # crosses block boundaries
    assert len(set(drawn)) == len(drawn)
    assert all(len(i) == 20 and int(i, 16) >= 0 for i in drawn)
