"""The simulator's implementation of ``edge_client``'s Trainer interface.

Training is real: every batch goes through the exported model's ``train``
signature on a TFLite interpreter. What is simulated is *how long* it takes:
after each batch the session sleeps on the virtual clock for
``calibrated step time × (batch / calibration batch) / device speed``.

Interpreters are cached per process and shared by all devices: a session
that finds another session's weights in the interpreter saves them into that
session and loads its own (``get_weights`` / ``set_weights``; microseconds
for the reference mlp). Because a step runs synchronously between two awaits,
no other device can touch the interpreter in the middle of one.

Drop-outs: while training, a device drops out with its profile's hazard
(per hour of virtual training time), drawn from a counter-based hash so the
run repeats; the session then raises ``TrainingError`` as the agent would see
an interrupted training, and nothing is uploaded for that attempt.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_profiles.device import SimDevice, hash_uniform
from device_profiles.sim.metrics import Recorder
from device_profiles.sim.ray_trainer import RayPool
from edge_client.data import ArrayData
from edge_client.errors import TrainingError
from edge_client.trainer import StepResult, TrainingJob, TrainingSession, local_runtime
from fedge.clock import Clock
from fedge.manifest import Manifest
from fedge.runtime import TrainableModel


@functools.cache
def _host_runtime() -> str:
    """The host's TFLite runtime and version, looked up once per process (a
    package-metadata scan; 2 ms × 10,000 devices at enrolment)."""
    return local_runtime(None)


@dataclass
class _Slot:
    model: TrainableModel
    owner: _Session | None = None


class InterpreterCache:
    """One interpreter per model graph, shared by every simulated device."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self.loads = 0

    def slot(self, graph_path: Path, manifest: Manifest) -> _Slot:
        key = manifest.sha256
        if key not in self._slots:
            self._slots[key] = _Slot(TrainableModel(graph_path, manifest))
            self.loads += 1
        return self._slots[key]


class _Session:
    def __init__(
        self,
        trainer: SimTrainer,
        slot: _Slot,
        *,
        weights: dict[str, np.ndarray],
        batches: Iterator[tuple[np.ndarray, np.ndarray]],
        learning_rate: float,
        mu: float | None,
        batch_size: int,
    ) -> None:
        self.trainer = trainer
        self.slot = slot
        self.weights: dict[str, np.ndarray] | None = weights
        self.batches = batches
        self.learning_rate = learning_rate
        self.mu = mu
        self.batch_size = batch_size
        self.runtime = str(slot.model.runtime)
        self.data_bytes = trainer.data_bytes
        self.trained_s = 0.0
        self.active = True
        trainer.recorder.training_now += 1

    def _take_interpreter(self) -> TrainableModel:
        slot = self.slot
        if slot.owner is not self:
            if slot.owner is not None and slot.owner.weights is not None:
                slot.owner.weights = slot.model.get_weights()
            assert self.weights is not None
            slot.model.set_weights(self.weights)
            slot.owner = self
        return slot.model

    def _end(self) -> None:
        if self.active:
            self.active = False
            self.trainer.recorder.training_now -= 1
        if self.slot.owner is self:
            self.slot.owner = None
        self.weights = None

    async def step(self) -> StepResult | None:
        steps = await self._run(None)
        return steps[0] if steps else None

    async def steps_before(self, until: float) -> list[StepResult]:
        return await self._run(until)

    async def _run(self, until: float | None) -> list[StepResult]:
        """One batch (``until`` None), or the next batch and every later one
        that starts before ``until`` on the virtual clock. The steps are real and run now; their
        simulated duration is slept once at the end (a drop-out: up to the
        point in the batch where it happens), so the device's timeline is the
        one batch-by-batch stepping gives, at one wake-up instead of one per
        batch. No other device can observe the difference: what this session
        does in between is private until it returns."""
        if self.weights is None:
            raise TrainingError("training session already ended")
        trainer = self.trainer
        start = trainer.clock.monotonic()
        elapsed = 0.0
        steps: list[StepResult] = []
        while not steps or (until is not None and start + elapsed < until):
            batch = next(self.batches, None)
            if batch is None:
                break
            x, y = batch
            pool = trainer.ray_pool
            if pool is not None:
                assert self.weights is not None
                self.weights, loss = await pool.step(
                    trainer.device.index, self.weights, x, y, lr=self.learning_rate, mu=self.mu)
            else:
                model = self._take_interpreter()
                loss = model.train_step(x, y, self.learning_rate, self.mu)
            trainer.recorder.train_steps += 1
            cost = trainer.step_seconds(len(x), self.batch_size)
            # Drop-out within this step: P = 1 − exp(−hazard × duration).
            p_drop = 1.0 - math.exp(-trainer.device.profile.dropout_per_hour * cost / 3600.0)
            draw = hash_uniform(trainer.device.seed, 202, trainer.steps_taken)
            trainer.steps_taken += 1
            if draw < p_drop:
                await trainer.clock.sleep(elapsed + cost * draw / p_drop)  # part of the step
                trainer.recorder.dropouts += 1
                self._end()
                raise TrainingError("simulated drop-out while training (profile hazard)")
            elapsed += cost
            self.trained_s += cost
            steps.append(StepResult(len(x), loss))
        if elapsed > 0:
            await trainer.clock.sleep(elapsed)
        return steps

    async def finish(self) -> dict[str, np.ndarray]:
        if self.weights is None:
            raise TrainingError("training session already ended")
        if self.trainer.ray_pool is not None:
            weights = self.weights
        else:
            weights = self._take_interpreter().get_weights()
        self._end()
        return weights

    async def abort(self) -> None:
        self._end()


class SimTrainer:
    """``edge_client.trainer.Trainer`` for one simulated device."""

    def __init__(
        self,
        device: SimDevice,
        x: np.ndarray,
        y: np.ndarray,
        *,
        clock: Clock,
        cache: InterpreterCache,
        calibration_step_s: float,
        calibration_batch: int,
        recorder: Recorder,
        ray_pool: RayPool | None = None,
    ) -> None:
        self.ray_pool = ray_pool  # train on Ray workers instead of the shared interpreter
        self.device = device
        self.x = x
        self.y = y
        self.clock = clock
        self.cache = cache
        self.calibration_step_s = calibration_step_s
        self.calibration_batch = calibration_batch
        self.recorder = recorder
        self.data_bytes = int(x.nbytes + y.nbytes)
        self.steps_taken = 0
        self.sessions = 0

    def step_seconds(self, examples: int, batch_size: int) -> float:
        """Virtual seconds for one batch on this device: the calibrated host
        step time scaled by batch size (linear in examples for dense layers)
        and divided by the device's relative speed."""
        per_example = self.calibration_step_s / self.calibration_batch
        return self.device.compute_seconds(per_example * max(examples, 1))

    async def start(self, job: TrainingJob) -> TrainingSession:
        slot = self.cache.slot(job.graph_path, job.manifest)
        data = ArrayData(self.x, self.y)
        self.sessions += 1
        batches = data.batches(job.batch_size, job.epochs, job.max_examples, job.seed)
        mu = job.fedprox_mu if job.manifest.fedprox else None
        weights = {k: np.array(v, copy=True) for k, v in job.weights.items()}
        return _Session(
            self, slot, weights=weights, batches=batches, learning_rate=job.learning_rate,
            mu=mu, batch_size=job.batch_size,
        )

    async def probe_runtime(self) -> str:
        return _host_runtime()
