"""Unrolled vs ``WHILE``: two ways to write a GRU's training step with builtin ops.

fedge's recurrent layers unroll the recurrence over the model's fixed
sequence length (model_export/layers/recurrent.py). The alternative keeps
the graph small with one builtin ``WHILE`` per direction: the forward loop
writes each step's state and gates into ``[T, B, ·]`` accumulators with
``DYNAMIC_UPDATE_SLICE`` and the backward loop reads them back with
``GATHER`` (TensorArrays would need TensorList ops, which have no builtin
kernels). Both versions share everything outside the loops — the input
projection and the weight gradients as one GEMM over all steps — and the
same GRU (reset_after) numerics; the module checks that they compute the same
gradients before timing them.

Used by bench_export.py: ``measure(steps)`` returns conversion time,
``.tflite`` size, operator count and the median train step under
ai-edge-litert (and, with ``tflite_python``, tflite-runtime 2.14) for both.
"""


from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BATCH, FEATURES, UNITS = 32, 8, 128

STEP_CHILD = """
import json, sys, time
import numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
model = open(sys.argv[1], "rb").read()
steps, n = int(sys.argv[2]), int(sys.argv[3])
it = Interpreter(model_content=model, num_threads=1)
run = it.get_signature_runner("train")
rng = np.random.default_rng(0)
x = rng.standard_normal((32, steps, 8)).astype(np.float32)
y = rng.standard_normal((32, 128)).astype(np.float32)
for _ in range(3):
    run(x=x, y=y)
times = []
for _ in range(n):
    t = time.perf_counter()
    run(x=x, y=y)
    times.append(time.perf_counter() - t)
print(json.dumps({"step_s": float(np.median(times))}))
"""


def _module(steps: int, loop: str) -> Any:
    import tensorflow as tf

    from model_export.layers.base import Context
    from model_export.layers.recurrent import Recurrent

    rng = np.random.default_rng(1)
    kernel = (rng.standard_normal((FEATURES, 3 * UNITS)) * 0.1).astype(np.float32)
    recurrent = (rng.standard_normal((UNITS, 3 * UNITS)) * 0.05).astype(np.float32)
    bias = (rng.standard_normal((2, 3 * UNITS)) * 0.1).astype(np.float32)
    layer = Recurrent("gru", "gru", kernel, recurrent, bias)

    class Step(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.w = [tf.Variable(v) for v in (kernel, recurrent, bias)]

        @tf.function(input_signature=[tf.TensorSpec([None, steps, FEATURES], tf.float32),
                                      tf.TensorSpec([None, UNITS], tf.float32)],
                     autograph=False)
        def train(self, x: Any, y: Any) -> Any:
            params = [v.read_value() for v in self.w]
            if loop == "unrolled":
                h, cache = layer.forward(params, [x], Context(True))
                dy = (h - y) * (2.0 / (BATCH * UNITS))
                grads = layer.backward(params, cache, dy, False).params
            else:
                h, grads = _while_gru(params, x, y, steps)
            for v, g in zip(self.w, grads, strict=True):
                v.assign_sub(0.01 * g)
            return {"loss": tf.reduce_mean((h - y) ** 2)}

    return Step()


def _while_gru(params: list[Any], x: Any, y: Any, steps: int) -> tuple[Any, list[Any]]:
    """The same GRU step with one WHILE forward and one WHILE backward."""
    import tensorflow as tf
    from tensorflow.compiler.tf2xla.python import xla

    kernel, recurrent, bias = params
    b_in, b_rec = tf.unstack(bias, axis=0)
    units = UNITS
    x2 = tf.reshape(x, [-1, FEATURES])
    xw = tf.reshape(tf.nn.bias_add(tf.matmul(x2, kernel), b_in), [-1, steps, 3 * units])
    xw_t = tf.transpose(xw, [1, 0, 2])  # [T, B, 3U]
    batch = tf.shape(x)[0]
    zeros = tf.zeros(tf.stack([steps, batch, units]))
    zeros3 = tf.zeros(tf.stack([steps, batch, 3 * units]))

    def put(acc: Any, t: Any, value: Any) -> Any:
        return xla.dynamic_update_slice(acc, value[None], tf.stack([t, 0, 0]))

    def forward(t: Any, h: Any, hs: Any, zs: Any, rs: Any, hhs: Any, ihs: Any) -> Any:  # noqa: PLR0917
        xt = tf.gather(xw_t, t)
        inner = tf.nn.bias_add(tf.matmul(h, recurrent), b_rec)
        xzr, xh = tf.split(xt, [2 * units, units], axis=1)
        izr, ih = tf.split(inner, [2 * units, units], axis=1)
        z, r = tf.split(tf.sigmoid(xzr + izr), 2, axis=1)
        hh = tf.tanh(xh + r * ih)
        new = z * h + (1.0 - z) * hh
        return (t + 1, new, put(hs, t, h), put(zs, t, z), put(rs, t, r), put(hhs, t, hh),
                put(ihs, t, ih))

    h0 = tf.zeros(tf.stack([batch, units]))
    _, h, hs, zs, rs, hhs, ihs = tf.while_loop(
        lambda t, *_: t < steps, forward, (tf.constant(0), h0, zeros, zeros, zeros, zeros, zeros),
        maximum_iterations=steps,
    )
    dh0 = (h - y) * (2.0 / (BATCH * UNITS))

    def backward(t: Any, dh: Any, dxws: Any, dinners: Any) -> Any:
        h_prev, z, r = tf.gather(hs, t), tf.gather(zs, t), tf.gather(rs, t)
        hh, ih = tf.gather(hhs, t), tf.gather(ihs, t)
        dzh = dh * (1.0 - z) * (1.0 - hh * hh)
        dzz = dh * (h_prev - hh) * z * (1.0 - z)
        dzr = dzh * ih * r * (1.0 - r)
        dxw = tf.concat([dzz, dzr, dzh], axis=1)
        dinner = tf.concat([dzz, dzr, dzh * r], axis=1)
        dh_prev = dh * z + tf.matmul(dinner, recurrent, transpose_b=True)
        return t - 1, dh_prev, put(dxws, t, dxw), put(dinners, t, dinner)

    _, _, dxws, dinners = tf.while_loop(
        lambda t, *_: t >= 0, backward, (tf.constant(steps - 1), dh0, zeros3, zeros3),
        maximum_iterations=steps,
    )
    dxw_rows = tf.reshape(tf.transpose(dxws, [1, 0, 2]), [-1, 3 * units])
    dinner_rows = tf.reshape(dinners, [-1, 3 * units])
    h_rows = tf.reshape(hs, [-1, units])
    dkernel = tf.matmul(tf.transpose(x2), dxw_rows)
    drec = tf.matmul(tf.transpose(h_rows), dinner_rows)
    dbias = tf.stack([tf.reduce_sum(dxw_rows, 0), tf.reduce_sum(dinner_rows, 0)])
    return h, [dkernel, drec, dbias]


def _convert(module: Any, scratch: Path) -> bytes:
    import tensorflow as tf

    saved = scratch / "saved"
    tf.saved_model.save(module, str(saved), signatures={"train": module.train})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["train"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.experimental_enable_resource_variables = True
    content: bytes = converter.convert()
    return content


def _operators(content: bytes) -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(content, 0)
    return sum(root.Subgraphs(i).OperatorsLength() for i in range(root.SubgraphsLength()))


def _step(path: Path, steps: int, n: int, python: str) -> float | None:
    done = subprocess.run([python, "-c", STEP_CHILD, str(path), str(steps), str(n)],
                          capture_output=True, text=True, check=False, timeout=900,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        return None
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result["step_s"]


def same_gradients(steps: int = 6) -> float:
    """Largest relative difference between the two versions' updated weights (eager)."""
    import tensorflow as tf

    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((BATCH, steps, FEATURES)).astype(np.float32))
    y = tf.constant(rng.standard_normal((BATCH, UNITS)).astype(np.float32))
    a, b = _module(steps, "unrolled"), _module(steps, "while")
    a.train(x, y)
    b.train(x, y)
    worst = 0.0
    for va, vb in zip(a.w, b.w, strict=True):
        diff = np.linalg.norm(va.numpy() - vb.numpy()) / np.linalg.norm(va.numpy())
        worst = max(worst, float(diff))
    return worst


def measure(steps: int, n: int, tflite_python: str | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-rnn-loop-") as tmp:
        for loop in ("unrolled", "while"):
            scratch = Path(tmp) / loop
            scratch.mkdir()
            started = time.perf_counter()
            content = _convert(_module(steps, loop), scratch)
            convert_s = time.perf_counter() - started
            path = scratch / "model.tflite"
            path.write_bytes(content)
            row: dict[str, Any] = {
                "convert_s": convert_s, "bytes": len(content), "operators": _operators(content),
                "litert_step_s": _step(path, steps, n, sys.executable),
            }
            if tflite_python:
                row["tflite_step_s"] = _step(path, steps, n, tflite_python)
            out[loop] = row
    return out


if __name__ == "__main__":
    print(f"max relative difference of the updated weights: {same_gradients():.2e}")
    for t in (20, 80):
        print(t, json.dumps(measure(t, 10)))
