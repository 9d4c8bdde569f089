"""Verify an exported model under one TFLite runtime, without TensorFlow.

This module needs only NumPy, ``fedge.runtime`` and a TFLite runtime, so the
exporter can run it with other Python environments (tflite-runtime 2.14 with
NumPy 1.x, an edge install without TensorFlow)::

    python -m model_export.runtime_check MODEL_DIR FIXTURE.npz [--runtime NAME]

It prints one JSON object (see :func:`check`) and exits 0 even when a check
fails; a non-zero exit means the runtime itself failed (or crashed).

The fixture is written by the exporter from TensorFlow autodiff of the
original Keras model: initial weights ``w0/<name>``, a batch ``x``, ``y``,
``lr``, ``mu``, the Keras output ``output``, the weights after each
reference step ``step<k>/<name>`` and their losses ``losses``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel

# Relative error bounds: one step of TFLite vs TensorFlow autodiff of Keras.
UPDATE_TOLERANCE = 1e-4
# Both sides store w + Δw in float32, each rounding it by up to half a unit in the
# last place (≤ 2⁻²⁴·|w| per element). An update that is small next to its weight
# cannot be compared more finely than that, so the allowed difference is
# UPDATE_TOLERANCE·‖Δw_ref‖ + ROUNDING·‖w‖.
ROUNDING = 4 * 2.0**-24
OUTPUT_TOLERANCE = 1e-4
LOSS_STEPS = 20


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))
    return diff / scale if scale > 0 else diff


def update_error(delta: np.ndarray, delta_ref: np.ndarray, weights: np.ndarray) -> float:
    """The update's relative error, with float32 rounding of the weights allowed for:
    ≤ UPDATE_TOLERANCE ⟺ ‖Δ − Δref‖ ≤ UPDATE_TOLERANCE·‖Δref‖ + ROUNDING·‖w‖."""
    diff = float(np.linalg.norm(delta - delta_ref))
    scale = float(np.linalg.norm(delta_ref))
    scale += ROUNDING / UPDATE_TOLERANCE * float(np.linalg.norm(weights.astype(np.float64)))
    return diff / scale if scale > 0 else diff


def check(model_dir: Path, fixture: Path, runtime: str | None = None) -> dict[str, Any]:
    """Run every check; returns ``{runtime, version, checks, measurements, errors}``."""
    manifest, model_path = load_model_dir(model_dir)
    data = dict(np.load(fixture, allow_pickle=False))
    names = [t.name for t in manifest.tensors]
    w0 = {n: data[f"w0/{n}"] for n in names}
    x, y = data["x"], data["y"]
    lr, mu = float(data["lr"]), float(data["mu"])
    losses_ref = data["losses"]
    checks: dict[str, bool] = {}
    measurements: dict[str, float] = {}
    errors: list[str] = []

    # A fresh interpreter: the dropout step counter starts at 0, as in the reference.
    model = TrainableModel(model_path.read_bytes(), manifest, runtime=runtime)
    model.set_weights(w0)

    output = model.infer(x)
    out_err = _rel(output, data["output"])
    measurements["output_rel_error"] = out_err
    checks["infer_matches_keras"] = out_err <= OUTPUT_TOLERANCE
    if not checks["infer_matches_keras"]:
        errors.append(f"infer differs from Keras (relative error {out_err:.2e})")

    worst = 0.0
    loss_err = 0.0
    previous = w0
    for k in range(len(losses_ref)):
        start = time.perf_counter()
        loss = model.train_step(x, y, lr, mu if manifest.fedprox else None)
        if k == 0:
            measurements["first_step_ms"] = (time.perf_counter() - start) * 1e3
        expected_loss = float(losses_ref[k])
        loss_err = max(loss_err, abs(loss - expected_loss) / max(abs(expected_loss), 1e-12))
        after = model.get_weights()
        for n in names:
            expected = data[f"step{k}/{n}"]
            delta_ref = expected.astype(np.float64) - previous[n]
            delta = after[n].astype(np.float64) - previous[n]
            err = update_error(delta, delta_ref, expected)
            if not np.any(delta_ref):
                err = float(np.max(np.abs(delta)))  # frozen tensors must not move at all
            worst = max(worst, err)
            if err > UPDATE_TOLERANCE:
                errors.append(f"step {k + 1}: {n} update differs (relative error {err:.2e})")
        previous = {n: data[f"step{k}/{n}"].astype(np.float64) for n in names}
    measurements["max_rel_error"] = worst
    measurements["loss_rel_error"] = loss_err
    checks["train_matches_keras"] = worst <= UPDATE_TOLERANCE and loss_err <= UPDATE_TOLERANCE
    if loss_err > UPDATE_TOLERANCE:
        errors.append(f"training loss differs from Keras (relative error {loss_err:.2e})")

    # get_weights/set_weights round trip, bit for bit, with values nobody would train to.
    rng = np.random.default_rng(7)
    probe = {n: rng.standard_normal(w0[n].shape).astype(np.float32) for n in names}
    model.set_weights(probe)
    back = model.get_weights()
    checks["weights_round_trip"] = all(np.array_equal(back[n], probe[n]) for n in names)
    if not checks["weights_round_trip"]:
        errors.append("get_weights after set_weights does not return the same tensors")

    # Loss falls on a fixed batch.
    model.set_weights(w0)
    losses = []
    start = time.perf_counter()
    for _ in range(LOSS_STEPS):
        losses.append(model.train_step(x, y, lr, 0.0 if manifest.fedprox else None))
    measurements["step_ms"] = (time.perf_counter() - start) * 1e3 / LOSS_STEPS
    measurements["loss_first"] = losses[0]
    measurements["loss_last"] = float(np.mean(losses[-3:]))
    finite = bool(np.isfinite(losses).all())
    checks["loss_decreases"] = finite and measurements["loss_last"] < losses[0]
    if not checks["loss_decreases"]:
        errors.append(
            f"loss did not fall over {LOSS_STEPS} steps: {losses[0]:.4f} → {losses[-1]:.4f}"
        )
    metrics = model.evaluate(x, y)
    checks["evaluate_runs"] = all(np.isfinite(v) for v in metrics.values())
    return {
        "runtime": model.runtime.name,
        "version": model.runtime.version,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "checks": checks,
        "measurements": measurements,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("fixture", type=Path)
    parser.add_argument("--runtime", default=None)
    args = parser.parse_args(argv)
    result = check(args.model_dir, args.fixture, args.runtime)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
