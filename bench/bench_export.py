"""Exported builtin-only model (ai-edge-litert) vs Keras ``train_on_batch`` (TensorFlow).

For each reference model (``mlp`` 64-64-10 on 64 inputs, ``cnn`` on 28×28×1,
``cnn1d`` on 128×3), batch 32, SGD: per-step training time and peak RSS, each
runtime measured in its own child process in the same run (RSS is the
child's ``ru_maxrss``). The exported side imports only NumPy, fedge and
ai-edge-litert; the Keras side builds the same model and compiles it with the
same loss and optimizer.

Targets (mlp): ≥ 20× faster per step, ≤ 1/8 of the peak RSS.

Run: ``.venv/bin/python bench/bench_export.py [--quick]``; writes
``bench/results/export.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from fedge.bench import emit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

Row = dict[str, Any]
BATCH = 32
ROUNDS = 3  # alternating measurement rounds for the mlp (the one with a target)
MODELS = {"mlp": (64,), "cnn": (28, 28, 1), "cnn1d": (128, 3)}

LITERT_CHILD = """
import json, resource, sys, time
import numpy as np
from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel
manifest, path = load_model_dir(sys.argv[1])
steps = int(sys.argv[2])
model = TrainableModel(path, manifest, runtime="ai-edge-litert")
rng = np.random.default_rng(0)
x = rng.standard_normal((32, *manifest.input.shape)).astype(np.float32)
y = rng.integers(0, manifest.label.num_classes, 32).astype(np.int32)
for _ in range(max(steps // 10, 5)):
    model.train_step(x, y, 0.01)
times = []
for _ in range(steps):
    t = time.perf_counter()
    model.train_step(x, y, 0.01)
    times.append(time.perf_counter() - t)
print(json.dumps({"step_s": float(np.median(times)),
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "tensorflow": "tensorflow" in sys.modules}))
"""

KERAS_CHILD = """
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras
from model_export.reference import build_reference
name, shape, steps = sys.argv[1], tuple(json.loads(sys.argv[2])), int(sys.argv[3])
model = build_reference(name, shape, 10)
model.compile(optimizer=keras.optimizers.SGD(0.01),
              loss=keras.losses.SparseCategoricalCrossentropy())
rng = np.random.default_rng(0)
x = rng.standard_normal((32, *shape)).astype(np.float32)
y = rng.integers(0, 10, 32).astype(np.int32)
for _ in range(max(steps // 10, 5)):
    model.train_on_batch(x, y)
times = []
for _ in range(steps):
    t = time.perf_counter()
    model.train_on_batch(x, y)
    times.append(time.perf_counter() - t)
print(json.dumps({"step_s": float(np.median(times)),
                  "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False,
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                       "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def row(benchmark: str, metric: str, value: float, unit: str, *, baseline: float | None,
        target: str | None = None, note: str = "") -> Row:
    return {
        "benchmark": benchmark, "metric": metric, "value": value, "unit": unit,
        "baseline": baseline, "ratio": (value / baseline) if baseline else None,
        "target": target, "note": note,
    }


EXPORT_CHILD = """
import json, sys
from model_export import export_reference
report = export_reference(sys.argv[1], sys.argv[2], input_shape=tuple(json.loads(sys.argv[3])),
                          classes=10, verify=False)
print(json.dumps({"parameters": report.num_parameters}))
"""


def run(quick: bool) -> list[Row]:
    # The export runs in a child too: ru_maxrss survives fork+exec on Linux, so a
    # parent that had loaded TensorFlow would lend its peak RSS to every child.
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedge-bench-export-") as tmp:
        for name, shape in MODELS.items():
            out = Path(tmp) / name
            exported = _child(EXPORT_CHILD, name, str(out), json.dumps(list(shape)))
            small = name == "mlp"
            lite_steps = (2000 if small else 200) if quick else (10000 if small else 1000)
            keras_steps = (200 if small else 50) if quick else (1000 if small else 200)
            # Alternate the two sides over a few rounds and keep each side's best
            # round: on a shared machine the load drifts between children.
            lite_runs, tf_runs = [], []
            for _ in range(ROUNDS if small else 1):
                lite_runs.append(_child(LITERT_CHILD, str(out), str(lite_steps)))
                if lite_runs[-1]["tensorflow"]:
                    raise RuntimeError("the ai-edge-litert child imported TensorFlow")
                tf_runs.append(_child(KERAS_CHILD, name, json.dumps(list(shape)),
                                      str(keras_steps)))
            lite = min(lite_runs, key=lambda r: r["step_s"])
            tf_side = min(tf_runs, key=lambda r: r["step_s"])
            note = (f"{exported['parameters']:,} parameters, batch {BATCH}, SGD, median step, "
                    f"best of {len(lite_runs)} alternating rounds; baseline: Keras "
                    "train_on_batch on TensorFlow")
            lite_us, keras_us = lite["step_s"] * 1e6, tf_side["step_s"] * 1e6
            rows.append(row(name, "train step (ai-edge-litert)", lite_us, "µs",
                            baseline=keras_us, note=note))
            rows.append(row(name, "speed-up vs Keras", keras_us / lite_us, "×", baseline=None,
                            target="≥ 20×" if small else None, note="median step time ratio"))
            lite_mb, keras_mb = lite["rss_kb"] / 1024, tf_side["rss_kb"] / 1024
            rows.append(row(name, "peak RSS (ai-edge-litert)", lite_mb, "MB", baseline=keras_mb,
                            target="≤ 1/8 of Keras" if small else None,
                            note="child ru_maxrss; baseline: Keras child"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args()
    rows = run(args.quick)
    emit(rows, REPO / "bench" / "results" / "export.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
