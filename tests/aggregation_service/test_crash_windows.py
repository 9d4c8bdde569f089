"""Crash windows of publication, driven through the core API (no HTTP).

Each test runs the same sequence of updates twice: once uninterrupted, once
with a simulated crash at one point of publishing version 3, followed by a
restart on the same data directory. The restarted service must end in the
same state: same versions, bit for bit, and every update counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregation_service.service import AggregationService, UpdateRequest
from fedge.clock import ManualClock
from tests.aggregation_service.conftest import (
    SHAPES,
    frame,
    initial_weights,
    make_config,
    synthetic_manifest,
)

K = 3
N_UPDATES = 7  # versions 2 and 3, and one update left in the open buffer


class SimulatedCrash(Exception):
    pass


def updates() -> list[tuple[bytes, int]]:
    rng = np.random.default_rng(42)
    out = []
    for _ in range(N_UPDATES):
        delta = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}
        out.append((frame(delta, {"density": 0.5, "bits": 8}), int(rng.integers(1, 40))))
    return out


async def new_service(data: Path) -> AggregationService:
    config = make_config(
        data,
        buffer_size=K,
        over_provisioning=10.0,
        optimizer={"name": "fedadam", "learning_rate": 0.05},
    )
    service = AggregationService(config, clock=ManualClock(), rng=random.Random(0))
    await service.start()
    return service


async def feed(
    service: AggregationService, items: list[tuple[bytes, int]], device: str, start: int
) -> None:
    for i, (body, examples) in enumerate(items, start):
        answer = await service.checkin(device, {"model": "m", "eligible": True})
        assert answer["action"] == "train"
        plan = answer["plan"]
        await service.accept_update(
            UpdateRequest(
                device, "m", plan["assignment_id"], plan["version"], examples, f"key-{i:04d}", body
            )
        )
        if service.runtime("m").sealed:
            # Sequential runs publish before the next update (same τ in both
            # runs); a publication stuck on a simulated crash stays stuck.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.wait_idle(), 1.0)


async def enroll_device(service: AggregationService) -> str:
    token = (await service.create_enrollment_token(1, 3600.0))["token"]
    return str((await service.enroll(token, {}))["device_id"])


async def final_state(service: AggregationService) -> dict[str, Any]:
    info = await service.describe_model("m")
    weights = {}
    for v in info["versions"]:
        row = await service.version_row("m", v["version"])
        weights[v["version"]] = service.blobs.get(row.weights_sha256)
    return {
        "versions": [(v["version"], v["num_updates"]) for v in info["versions"]],
        "buffer": info["buffer"]["count"],
        "weights": weights,
    }


async def reference(tmp_path: Path) -> dict[str, Any]:
    service = await new_service(tmp_path / "ref")
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    device = await enroll_device(service)
    await feed(service, updates(), device, 0)
    await service.wait_idle()
    state = await final_state(service)
    await service.stop()
    return state


@pytest.mark.parametrize(
    "window",
    [
        "before_weights_blob",  # the buffer is complete and durable, nothing published
        "after_weights_blob",  # an orphan blob, no version row
        "after_commit",  # version row committed, memory not yet switched
    ],
)
async def test_crash_during_publication_recovers_the_same_versions(
    tmp_path: Path, window: str
) -> None:
    want = await reference(tmp_path)
    data = tmp_path / "crash"
    service = await new_service(data)
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    device = await enroll_device(service)
    publishes = {"n": 0}
    real_publish = service._publish

    async def publish(rt: Any, buf: Any) -> None:
        publishes["n"] += 1
        if publishes["n"] == 2:
            if window == "before_weights_blob":
                raise SimulatedCrash(window)
            original = service.store.publish

            def crash_at_commit(*a: Any, **k: Any) -> None:
                if window == "after_commit":
                    original(*a, **k)
                raise SimulatedCrash(window)  # after_weights_blob: the blobs are written

            service.store.publish = crash_at_commit  # type: ignore[method-assign]
        await real_publish(rt, buf)

    service._publish = publish  # type: ignore[method-assign]
    await feed(service, updates(), device, 0)
    await service.crash_for_tests()

    restarted = await new_service(data)
    await restarted.wait_idle()
    got = await final_state(restarted)
    await restarted.stop()
    assert got["versions"] == want["versions"] == [(1, 0), (2, K), (3, K)]
    assert got["buffer"] == want["buffer"] == N_UPDATES - 2 * K
    assert got["weights"] == want["weights"]


async def test_torn_log_tail_is_cut_and_the_rest_replayed(tmp_path: Path) -> None:
    data = tmp_path / "torn"
    service = await new_service(data)
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    device = await enroll_device(service)
    await feed(service, updates()[:5], device, 0)  # version 2 + two buffered
    await service.crash_for_tests()
    segment = sorted((data / "log").glob("*.log"))[-1]
    with segment.open("ab") as fh:
        fh.write(b"FUL1\x10\x00\x00\x00garbage-torn-write")
    restarted = await new_service(data)
    assert restarted.runtime("m").buffer.count == 2
    assert restarted.runtime("m").training.version == 2
    await restarted.stop()
