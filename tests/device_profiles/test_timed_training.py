"""The simulated trainer's timed stretches (``TimedSession.steps_before``):
training every batch that starts before a bound with one virtual-clock wait
gives the same batches, losses, weights and end time as batch-by-batch
stepping, and stops at the first batch that would start at or after the
bound (where the agent re-reads the device's state)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from device_profiles.device import SimDevice
from device_profiles.profile import builtin_profiles
from device_profiles.sim.metrics import Recorder
from device_profiles.sim.trainer import InterpreterCache, SimTrainer
from edge_client.config import DataConfig
from edge_client.trainer import StepResult, TimedSession, TrainingJob, TrainingSession
from fedge.clock import ManualClock
from fedge.manifest import Manifest
from fedge.runtime import TrainableModel

T = TypeVar("T")
CAL_STEP_S = 0.5  # virtual seconds per calibration batch of 16 on the host


async def _drive(clock: ManualClock, work: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """Run ``work`` while advancing the virtual clock whenever everyone
    sleeps on it; returns its result and how many wake-ups it took."""
    task = asyncio.ensure_future(work())
    wakeups = 0
    while not task.done():
        for _ in range(3):
            await asyncio.sleep(0)
        if not task.done() and clock.advance_to_next():
            wakeups += 1
    return task.result(), wakeups


def _trainer(exported_mlp: Path, clock: ManualClock) -> tuple[SimTrainer, TrainingJob]:
    manifest = Manifest.from_json((exported_mlp / "manifest.json").read_bytes())
    graph = exported_mlp / "model.tflite"
    weights = TrainableModel(graph, manifest).get_weights()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=100).astype(np.int64)
    device = SimDevice.sample(0, builtin_profiles()["raspberry-pi-4"], 7)
    trainer = SimTrainer(device, x, y, clock=clock, cache=InterpreterCache(),
                         calibration_step_s=CAL_STEP_S, calibration_batch=16,
                         recorder=Recorder())
    job = TrainingJob(graph_path=graph, manifest=manifest, weights=weights,
                      data=DataConfig(kind="callable"), epochs=2, batch_size=16,
                      learning_rate=0.1, max_examples=None, fedprox_mu=0.0, seed=5)
    return trainer, job


async def _one_by_one(session: TrainingSession) -> list[StepResult]:
    steps = []
    while (step := await session.step()) is not None:
        steps.append(step)
    return steps


async def test_a_timed_stretch_matches_batch_by_batch_stepping(exported_mlp: Path) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    trainer_a, job = _trainer(exported_mlp, clock_a)
    trainer_b, _ = _trainer(exported_mlp, clock_b)
    session_a = await trainer_a.start(job)
    session_b = await trainer_b.start(job)
    assert isinstance(session_b, TimedSession)

    steps_a, wakeups_a = await _drive(clock_a, lambda: _one_by_one(session_a))
    steps_b, wakeups_b = await _drive(clock_b, lambda: session_b.steps_before(float("inf")))
    assert await session_b.steps_before(float("inf")) == []  # exhausted

    assert len(steps_a) == 14 and steps_b == steps_a  # 2 epochs × ceil(100 / 16)
    assert (wakeups_a, wakeups_b) == (14, 1)
    assert clock_b.monotonic() == pytest.approx(clock_a.monotonic())
    weights_a, weights_b = await session_a.finish(), await session_b.finish()
    for name, value in weights_a.items():
        np.testing.assert_array_equal(weights_b[name], value)


async def test_a_timed_stretch_stops_at_the_first_batch_starting_at_the_bound(
    exported_mlp: Path,
) -> None:
    clock = ManualClock()
    trainer, job = _trainer(exported_mlp, clock)
    session = await trainer.start(job)
    assert isinstance(session, TimedSession)
    cost = trainer.step_seconds(16, 16)
    bound = 3.5 * cost  # batches start at 0, c, 2c, 3c: four of them, then stop
    steps, wakeups = await _drive(clock, lambda: session.steps_before(bound))
    assert len(steps) == 4 and wakeups == 1
    assert clock.monotonic() == pytest.approx(4 * cost)
    # A bound at or before now still trains the next batch (the agent asks
    # only when the bound is ahead, but a stretch is never empty).
    steps, _ = await _drive(clock, lambda: session.steps_before(clock.monotonic()))
    assert len(steps) == 1
    await session.abort()
