"""TFLite work the simulator does outside the devices: the host calibration
run that device speeds are relative to, evaluation, and the centrally trained
baseline the demo compares against. All of it runs the exported model through
:class:`fedge.runtime.TrainableModel`, the same adapter the agent uses."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.manifest import Manifest, load_model_dir
from fedge.runtime import TrainableModel


def load_model(model_dir: Path) -> tuple[TrainableModel, Manifest, bytes]:
    manifest, model_path = load_model_dir(model_dir)
    content = model_path.read_bytes()
    return TrainableModel(content, manifest), manifest, content


@dataclass(frozen=True)
class Calibration:
    """Host seconds per train step of the reference model at ``batch_size``.
    A device with compute speed s spends ``step_s / s`` of virtual time per step."""

    step_s: float
    batch_size: int
    steps_measured: int
    runtime: str


def calibrate(model_dir: Path, x: np.ndarray, y: np.ndarray, batch_size: int,
              *, steps: int = 200) -> Calibration:
    """Median wall time of ``steps`` train steps on the host (after a warm-up)."""
    model, _, _ = load_model(model_dir)
    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 10):
        idx = rng.integers(0, len(x), size=batch_size)
        start = time.perf_counter()
        model.train_step(x[idx], y[idx], 0.0)  # lr 0: timing only, weights unchanged
        if i >= 10:
            times.append(time.perf_counter() - start)
    return Calibration(statistics.median(times), batch_size, steps, str(model.runtime))


def evaluate(model_dir: Path, weights: Mapping[str, np.ndarray] | None,
             x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    model, _, _ = load_model(model_dir)
    if weights is not None:
        model.set_weights(weights)
    return model.evaluate(x, y)


@dataclass(frozen=True)
class CentralBaseline:
    accuracy: float
    loss: float
    examples: int  # examples processed (with repetition over epochs)
    steps: int
    batch_size: int
    learning_rate: float


def central_baseline(
    model_dir: Path,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    examples: int | None = None,
    steps: int | None = None,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> CentralBaseline:
    """Train the exported model from its initial weights on the union of all
    devices' data, shuffled each epoch, with the clients' batch size and
    learning rate, for ``examples`` examples in total (the number the fleet's
    accepted updates trained on) or ``steps`` train steps (batches), then
    evaluate on the same test set."""
    if (examples is None) == (steps is None):
        raise ValueError("central_baseline: give examples or steps, not both")
    budget_examples = examples if examples is not None else np.inf
    budget_steps = steps if steps is not None else np.inf
    model, _, _ = load_model(model_dir)
    rng = np.random.default_rng(seed)
    steps_done = 0
    done = 0
    while done < budget_examples and steps_done < budget_steps and len(x_train):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            model.train_step(x_train[idx], y_train[idx], learning_rate)
            steps_done += 1
            done += len(idx)
            if done >= budget_examples or steps_done >= budget_steps:
                break
    metrics = model.evaluate(x_test, y_test)
    return CentralBaseline(
        accuracy=float(metrics.get("accuracy", float("nan"))),
        loss=float(metrics.get("loss", float("nan"))),
        examples=done, steps=steps_done, batch_size=batch_size, learning_rate=learning_rate,
    )
