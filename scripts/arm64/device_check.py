"""Train an exported fedge model the way a device does, and check the result.

    python device_check.py MODEL_DIR DATA_NPZ [--steps 30] [--batch-size 32]
                           [--learning-rate 0.05] [--runtime tflite-runtime]

Runs inside the arm64 root file system (scripts/arm64/check.sh) and natively
(for the emulated-vs-native step time). It needs only numpy, fedge and a
TFLite runtime: no TensorFlow, no scikit-learn (the data comes as an .npz
with arrays ``x`` and ``y``).

Checks, each reported in the JSON printed on the last line of stdout:
- the model loads under the requested runtime (fedge.runtime.TrainableModel);
- ``steps`` optimizer steps on the data lower the loss on a fixed evaluation
  batch, and the training loss itself falls (mean of the last five steps
  below the mean of the first five);
- ``get_weights`` → ``set_weights`` → ``get_weights`` is exact, and loading
  the initial weights back restores the initial evaluation loss exactly.

Exit status: 0 when every check passes, 1 when a check fails, 2 for a usage
error (missing files, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedge.errors import FedgeError
from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a `fedge export` directory")
    parser.add_argument("data", type=Path, help=".npz with arrays x and y")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--runtime", default="tflite-runtime")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10 (the loss trend compares 5 + 5 steps)")
    if args.batch_size < 1 or not args.learning_rate > 0:
        parser.error("--batch-size must be positive and --learning-rate above 0")
    return args


def _load_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    with np.load(path) as data:
        if "x" not in data or "y" not in data:
            raise ValueError(f"{path}: expected arrays 'x' and 'y', found {sorted(data.files)}")
        x, y = np.asarray(data["x"]), np.asarray(data["y"])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{path}: x has {len(x)} rows and y has {len(y)}")
    return x, y


def run_checks(args: argparse.Namespace) -> dict[str, Any]:
    manifest, model_path = load_model_dir(args.model_dir)
    x, y = _load_data(args.data)
    t0 = time.perf_counter()
    model = TrainableModel(model_path, manifest, runtime=args.runtime)
    load_s = time.perf_counter() - t0

    # The evaluation batch overlaps the training data on purpose: the check is
    # that optimisation works on this runtime, not that the model generalises.
    eval_x, eval_y = x[:256], y[:256]
    initial = model.get_weights()
    loss_before = model.evaluate(eval_x, eval_y)["loss"]

    losses, step_s = [], []
    for step in range(args.steps):
        start = (step * args.batch_size) % max(len(x) - args.batch_size, 1)
        bx, by = x[start : start + args.batch_size], y[start : start + args.batch_size]
        t = time.perf_counter()
        losses.append(model.train_step(bx, by, args.learning_rate))
        step_s.append(time.perf_counter() - t)
    loss_after = model.evaluate(eval_x, eval_y)["loss"]

    trained = model.get_weights()
    model.set_weights(trained)
    again = model.get_weights()
    roundtrip_exact = all(np.array_equal(trained[k], again[k]) for k in trained)
    model.set_weights(initial)
    restored_loss = model.evaluate(eval_x, eval_y)["loss"]
    changed = any(not np.array_equal(initial[k], trained[k]) for k in initial)

    checks = {
        "eval_loss_fell": loss_after < loss_before,
        "train_loss_fell": statistics.fmean(losses[-5:]) < statistics.fmean(losses[:5]),
        "weights_changed": changed,
        "weights_roundtrip_exact": roundtrip_exact,
        "initial_weights_restore_loss": restored_loss == loss_before,
        "losses_finite": bool(np.all(np.isfinite(losses))),
    }
    result: dict[str, Any] = {
        "ok": all(checks.values()),
        "checks": checks,
        "runtime": str(model.runtime),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "model": manifest.name,
        "parameters": manifest.num_parameters,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_loss_before": loss_before,
        "eval_loss_after": loss_after,
        "first_losses": losses[:3],
        "last_losses": losses[-3:],
        "load_s": load_s,
        # The first step includes tensor allocation for the batch size.
        "step_ms_median": 1e3 * statistics.median(step_s[1:]),
        "step_ms_min": 1e3 * min(step_s[1:]),
    }
    result["summary"] = (
        f"{result['runtime']} on {result['machine']} (Python {result['python']}, numpy "
        f"{result['numpy']}): eval loss {loss_before:.4f} -> {loss_after:.4f} in {args.steps} "
        f"steps, step {result['step_ms_median']:.3f} ms median, load {load_s:.2f} s"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        result = run_checks(args)
    except (FedgeError, FileNotFoundError, ValueError) as exc:
        print(f"device_check: error: {exc}", file=sys.stderr)
        return 2
    for name, passed in result["checks"].items():
        print(f"{'PASS' if passed else 'FAIL'} {name}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
