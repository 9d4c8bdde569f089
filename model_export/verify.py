"""Export-time verification: the reference step in TensorFlow, the checks in each runtime.

The reference is TensorFlow autodiff through the original Keras model (with
BatchNormalization in inference mode and each Dropout replaced by the exact
mask the exported graph draws), a Keras loss and a Keras optimizer. Each
runtime then replays the same steps from the same weights with
:mod:`model_export.runtime_check`.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export import runtime_check
from model_export.report import RuntimeCheck

REFERENCE_STEPS = 2
BATCH = 16
SUBPROCESS_TIMEOUT_S = 300
IN_PROCESS_RUNTIMES = ("ai-edge-litert", "tensorflow")


@dataclass(frozen=True)
class Reference:
    """What the runtimes must reproduce; saved as the fixture file."""

    arrays: Mapping[str, np.ndarray]

    def save(self, path: Path) -> None:
        np.savez(path, **dict(self.arrays))  # type: ignore[arg-type]


def sample_batch(
    input_shape: tuple[int, ...], input_dtype: str, label_shape: tuple[int, ...],
    label_dtype: str, *, num_classes: int | None, vocabulary: int | None, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if input_dtype == "int32":
        x = rng.integers(0, vocabulary or 2, size=(BATCH, *input_shape)).astype(np.int32)
    else:
        x = rng.standard_normal((BATCH, *input_shape)).astype(np.float32)
    if label_dtype == "int32":
        y = rng.integers(0, num_classes or 2, size=(BATCH, *label_shape)).astype(np.int32)
    elif num_classes is None:
        y = rng.standard_normal((BATCH, *label_shape)).astype(np.float32)
    else:
        y = rng.integers(0, 2, size=(BATCH, *label_shape)).astype(np.float32)
    return x, y


def reference_steps(
    model: Any,
    sources: Mapping[str, Any],
    *,
    trainable: Sequence[str],
    dropouts: Sequence[tuple[Any, int, float]],
    keras_loss: Any,
    optimizer: Any,
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    mu: float,
    fedprox: bool,
) -> Reference:
    """Run REFERENCE_STEPS Keras steps; the Keras weights are restored afterwards."""
    import tensorflow as tf

    from model_export.layers.structure import dropout_keep_mask_numpy

    names = list(sources)
    w0 = {n: np.array(sources[n].numpy(), dtype=np.float32) for n in names}
    arrays: dict[str, np.ndarray] = {f"w0/{n}": w0[n] for n in names}
    arrays["x"], arrays["y"] = x, y
    arrays["lr"], arrays["mu"] = np.asarray(lr, np.float32), np.asarray(mu, np.float32)
    arrays["output"] = np.asarray(model(x, training=False), np.float32)
    train_vars = [sources[n] for n in trainable]
    optimizer.build(train_vars)
    originals = {id(layer): layer.call for layer, _, _ in dropouts}
    losses = []
    try:
        for step in range(REFERENCE_STEPS):
            for layer, seed, rate in dropouts:
                shape = tuple(int(d) for d in layer.input.shape[1:])
                mask = dropout_keep_mask_numpy(step, seed, shape, x.shape[0], rate) / (1.0 - rate)
                layer.call = lambda inputs, training=None, _m=mask: inputs * _m

            # A tf.function so Keras sees the Softmax/Sigmoid op and uses the
            # logits, exactly as model.fit does.
            @tf.function  # type: ignore[untyped-decorator]
            def step_fn(xb: Any, yb: Any) -> Any:
                with tf.GradientTape() as tape:
                    out = model(xb, training=False)
                    loss = keras_loss(yb, out)
                    total = loss
                    if fedprox:
                        total = loss + 0.5 * mu * tf.add_n(
                            [tf.reduce_sum(tf.square(v - w0[n]))
                             for n, v in zip(trainable, train_vars, strict=True)]
                        )
                # Dense gradients: TensorFlow hands an Embedding's gradient over as
                # IndexedSlices, on which Keras's Adam/RMSprop square each slice
                # separately, so repeated ids would get Σg² instead of (Σg)². The
                # exported graph (like Keras on JAX or PyTorch) uses the dense sum.
                grads = [tf.convert_to_tensor(g) for g in tape.gradient(total, train_vars)]
                optimizer.apply_gradients(zip(grads, train_vars, strict=True))
                return loss

            losses.append(float(step_fn(tf.constant(x), tf.constant(y))))
            for n in names:
                arrays[f"step{step}/{n}"] = np.array(sources[n].numpy(), np.float32)
    finally:
        for layer, _, _ in dropouts:
            layer.call = originals[id(layer)]
        for n in names:
            sources[n].assign(w0[n])
    arrays["losses"] = np.asarray(losses, np.float32)
    return Reference(arrays)


def _from_result(result: Mapping[str, Any], interpreter: str) -> RuntimeCheck:
    errors = list(result.get("errors", []))
    checks = {str(k): bool(v) for k, v in result.get("checks", {}).items()}
    return RuntimeCheck(
        runtime=str(result.get("runtime", "?")),
        version=str(result.get("version", "?")),
        python=str(result.get("python", "?")),
        interpreter=interpreter,
        passed=bool(checks) and all(checks.values()),
        checks=checks,
        measurements={str(k): float(v) for k, v in result.get("measurements", {}).items()},
        error="; ".join(errors) if errors else None,
    )


def check_in_process(model_dir: Path, fixture: Path) -> list[RuntimeCheck]:
    """Check under each runtime importable in this process."""
    results = []
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for name in IN_PROCESS_RUNTIMES:
        module = "ai_edge_litert" if name == "ai-edge-litert" else "tensorflow"
        if importlib.util.find_spec(module) is None:
            continue
        try:
            result = runtime_check.check(model_dir, fixture, runtime=name)
        except Exception as exc:  # a runtime failure is a verification result, not a crash
            error = f"{type(exc).__name__}: {exc}"
            results.append(RuntimeCheck(name, "?", python, False, error=error))
            continue
        results.append(_from_result(result, "this process"))
    return results


def check_subprocess(python: Path, model_dir: Path, fixture: Path) -> RuntimeCheck:
    """Run :mod:`model_export.runtime_check` with another interpreter."""
    label = str(python)
    command = [str(python), "-m", "model_export.runtime_check", str(model_dir), str(fixture)]
    repo = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=SUBPROCESS_TIMEOUT_S, env=env)
    except FileNotFoundError:
        return RuntimeCheck("?", "?", "?", False, error=f"no such interpreter: {python}",
                            interpreter=label)
    except subprocess.TimeoutExpired:
        return RuntimeCheck("?", "?", "?", False, interpreter=label,
                            error=f"timed out after {SUBPROCESS_TIMEOUT_S} s")
    if done.returncode != 0:
        if done.returncode < 0:
            sig = signal.Signals(-done.returncode).name
            why = f"the runtime crashed the process ({sig})"
        else:
            tail = done.stderr.strip().splitlines()[-3:]
            why = f"exit code {done.returncode}: {' | '.join(tail)}"
        return RuntimeCheck(_runtime_of(python), "?", "?", False, error=why, interpreter=label)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        error = f"unreadable output: {done.stdout[-500:]}"
        return RuntimeCheck("?", "?", "?", False, error=error, interpreter=label)
    return _from_result(result, label)


def _runtime_of(python: Path) -> str:
    """Best-effort name of the runtime another interpreter would use (for messages)."""
    code = "from fedge.runtime import available_runtimes as a; print((a() or ['none'])[0])"
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                             timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"
