"""Exported builtin-only model (ai-edge-litert) vs Keras ``train_on_batch`` (TensorFlow).

For each reference model (``mlp`` 64-64-10 on 64 inputs, ``cnn`` on 28×28×1,
``cnn1d`` on 128×3, and the sequence models ``chargru``, ``charlstm`` and
``chartransformer`` on 80 character ids, vocabulary 80), batch 32, SGD:
per-step training time and peak RSS, each runtime measured in its own child
process in the same run (RSS is the child's ``ru_maxrss``). The exported side
imports only NumPy, fedge and ai-edge-litert (one thread); the Keras side
builds the same model and compiles it with the same loss and optimizer
(TensorFlow's default threads). Also: export time and ``.tflite`` size per
sequence model; chargru's step time and graph size at sequence lengths 20,
40, 80, 160; the same GRU step unrolled vs as builtin WHILE loops
(bench/rnn_loop.py); and LiteRT's CompiledModel vs its Interpreter.

Targets: mlp ≥ 20× faster per step and ≤ 1/8 of the peak RSS; the recurrent
models at least as fast as Keras (≥ 1×).

Run: ``.venv/bin/python bench/bench_export.py [--quick]``; writes
``bench/results/export.json``.
"""

from __future__ import annotations

import argparse
import json
import os
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
SEQUENCE_MODELS = {"chargru": (80,), "charlstm": (80,), "chartransformer": (80,)}
VOCABULARY = 80
LENGTHS = (20, 40, 80, 160)

LITERT_CHILD = """
import json, resource, sys, time
import numpy as np
from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel
manifest, path = load_model_dir(sys.argv[1])
steps = int(sys.argv[2])
api = sys.argv[3] if len(sys.argv) > 3 else "interpreter"
model = TrainableModel(path, manifest, runtime="ai-edge-litert", api=api)
rng = np.random.default_rng(0)
classes = manifest.label.num_classes
if manifest.input.dtype == "int32":
    x = rng.integers(0, classes, (32, *manifest.input.shape)).astype(np.int32)
else:
    x = rng.standard_normal((32, *manifest.input.shape)).astype(np.float32)
y = rng.integers(0, classes, 32).astype(np.int32)
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
classes = int(sys.argv[4])
model = build_reference(name, shape, classes)
model.compile(optimizer=keras.optimizers.SGD(0.01),
              loss=keras.losses.SparseCategoricalCrossentropy())
rng = np.random.default_rng(0)
if name.startswith("char"):
    x = rng.integers(0, classes, (32, *shape)).astype(np.int32)
else:
    x = rng.standard_normal((32, *shape)).astype(np.float32)
y = rng.integers(0, classes, 32).astype(np.int32)
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
import json, sys, time
from model_export import export_reference
started = time.perf_counter()
report = export_reference(sys.argv[1], sys.argv[2], input_shape=tuple(json.loads(sys.argv[3])),
                          classes=int(sys.argv[4]), verify=False)
print(json.dumps({"parameters": report.num_parameters, "bytes": report.file_size,
                  "operators": report.operators["train"],
                  "export_s": time.perf_counter() - started}))
"""

LOOP_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import rnn_loop
print(json.dumps({"same": rnn_loop.same_gradients(),
                  "rows": rnn_loop.measure(int(sys.argv[2]), int(sys.argv[3]),
                                           sys.argv[4] or None)}))
"""


def run(quick: bool) -> list[Row]:
    # The export runs in a child too: ru_maxrss survives fork+exec on Linux, so a
    # parent that had loaded TensorFlow would lend its peak RSS to every child.
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedge-bench-export-") as tmp:
        for name, shape in MODELS.items():
            out = Path(tmp) / name
            exported = _child(EXPORT_CHILD, name, str(out), json.dumps(list(shape)), "10")
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
                                      str(keras_steps), "10"))
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
        rows += _sequence_rows(Path(tmp), quick)
        rows += _length_rows(Path(tmp), quick)
        rows += _compiled_rows(Path(tmp), quick)
    rows += _loop_rows(quick)
    return rows


def _export(name: str, out: Path, steps: int) -> dict[str, Any]:
    return _child(EXPORT_CHILD, name, str(out), json.dumps([steps]), str(VOCABULARY))


def _sequence_rows(tmp: Path, quick: bool) -> list[Row]:
    """The recurrent and transformer reference models against Keras, same batch."""
    rows: list[Row] = []
    names = ["chargru", "chartransformer"] if quick else list(SEQUENCE_MODELS)
    for name in names:
        (steps,) = SEQUENCE_MODELS[name]
        out = tmp / name
        exported = _export(name, out, steps)
        n_lite, n_keras = (10, 5) if quick else (40, 20)
        if name == "charlstm":
            n_lite, n_keras = 15, 10
        lite_runs, tf_runs = [], []
        for _ in range(1 if quick else 2):  # alternate: the load drifts between children
            lite_runs.append(_child(LITERT_CHILD, str(out), str(n_lite)))
            tf_runs.append(_child(KERAS_CHILD, name, json.dumps([steps]), str(n_keras),
                                  str(VOCABULARY)))
        lite = min(lite_runs, key=lambda r: r["step_s"])
        keras_side = min(tf_runs, key=lambda r: r["step_s"])
        recurrent = name != "chartransformer"
        note = (f"{exported['parameters']:,} parameters, {steps} steps, vocabulary {VOCABULARY}, "
                f"batch {BATCH}, SGD, median step, best of {len(lite_runs)}; ai-edge-litert on "
                "1 thread; baseline: Keras train_on_batch (TensorFlow, its default threads)")
        lite_ms, keras_ms = lite["step_s"] * 1e3, keras_side["step_s"] * 1e3
        rows.append(row(name, "train step (ai-edge-litert)", lite_ms, "ms", baseline=keras_ms,
                        note=note))
        rows.append(row(name, "speed-up vs Keras", keras_ms / lite_ms, "×", baseline=None,
                        target="≥ 1×" if recurrent else None, note="median step time ratio"))
        rows.append(row(name, "peak RSS (ai-edge-litert)", lite["rss_kb"] / 1024, "MB",
                        baseline=keras_side["rss_kb"] / 1024,
                        note="child ru_maxrss; baseline: Keras child"))
        rows.append(row(name, "export time", exported["export_s"], "s", baseline=None,
                        note="translate + convert, without verification (fresh process)"))
        rows.append(row(name, "model.tflite size", exported["bytes"] / 1e6, "MB", baseline=None,
                        note=f"{exported['operators']:,} operators in the train signature"))
    return rows


def _length_rows(tmp: Path, quick: bool) -> list[Row]:
    """chargru at growing sequence lengths: step time and graph size (unrolled)."""
    rows: list[Row] = []
    if quick:  # four more exports: the full run only
        return rows
    for steps in LENGTHS:
        out = tmp / f"chargru_{steps}"
        exported = _export("chargru", out, steps)
        lite = _child(LITERT_CHILD, str(out), "30")
        keras_side = _child(KERAS_CHILD, "chargru", json.dumps([steps]), "15", str(VOCABULARY))
        label = f"chargru, {steps} steps"
        rows.append(row(label, "train step (ai-edge-litert)", lite["step_s"] * 1e3, "ms",
                        baseline=keras_side["step_s"] * 1e3,
                        note="batch 32, median; baseline: Keras train_on_batch"))
        rows.append(row(label, "train operators", exported["operators"], "", baseline=None,
                        note=f"model.tflite {exported['bytes'] / 1e6:.2f} MB, exported in "
                             f"{exported['export_s']:.1f} s"))
    return rows


def _compiled_rows(tmp: Path, quick: bool) -> list[Row]:
    """LiteRT's CompiledModel vs its Interpreter on the same export, same batch."""
    rows: list[Row] = []
    for name, out, n in (("mlp", tmp / "mlp", 2000 if quick else 10000),
                         ("chargru", tmp / "chargru", 10 if quick else 40)):
        runs: dict[str, list[float]] = {"interpreter": [], "compiled": []}
        for _ in range(ROUNDS):  # alternating rounds, each side's best
            for api, times in runs.items():
                times.append(_child(LITERT_CHILD, str(out), str(n), api)["step_s"])
        unit, scale = ("µs", 1e6) if name == "mlp" else ("ms", 1e3)
        rows.append(row(name, "train step (CompiledModel)", min(runs["compiled"]) * scale, unit,
                        baseline=min(runs["interpreter"]) * scale,
                        note="ai-edge-litert CompiledModel, batch 32 (inputs resized by name); "
                             f"baseline: its Interpreter, same export; best of {ROUNDS} "
                             "alternating rounds"))
    return rows


def _loop_rows(quick: bool) -> list[Row]:
    """One GRU(128) step over [32, T, 8] unrolled vs as builtin WHILE loops."""
    rows: list[Row] = []
    tflite_python = os.environ.get("FEDGE_TFLITE_PYTHON", "")
    for steps in (20,) if quick else (20, 80):
        result = _child(LOOP_CHILD, str(REPO / "bench"), str(steps), "10" if quick else "30",
                        tflite_python)
        unrolled, loop = result["rows"]["unrolled"], result["rows"]["while"]
        label = f"GRU 128, {steps} steps"
        note = (f"same updates (max rel. difference {result['same']:.1e}); baseline: unrolled; "
                f"WHILE: {loop['operators']} operators, {loop['bytes'] / 1e3:.0f} KB, converted "
                f"in {loop['convert_s']:.1f} s; unrolled: {unrolled['operators']} operators, "
                f"{unrolled['bytes'] / 1e3:.0f} KB, {unrolled['convert_s']:.1f} s")
        rows.append(row(label, "train step, WHILE (ai-edge-litert)",
                        loop["litert_step_s"] * 1e3, "ms",
                        baseline=unrolled["litert_step_s"] * 1e3, note=note))
        if loop.get("tflite_step_s") and unrolled.get("tflite_step_s"):
            rows.append(row(label, "train step, WHILE (tflite-runtime 2.14)",
                            loop["tflite_step_s"] * 1e3, "ms",
                            baseline=unrolled["tflite_step_s"] * 1e3,
                            note="baseline: unrolled, same runtime"))
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
