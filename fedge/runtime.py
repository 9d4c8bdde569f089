"""One adapter over the stock TFLite runtimes.

fedge models carry five signatures (``train``, ``evaluate``, ``infer``,
``get_weights``, ``set_weights``; see docs/manifest.md). This module runs them
under whichever runtime is installed — ai-edge-litert, else tflite-runtime,
else TensorFlow's own interpreter — so the exporter's verification, the
service's evaluation and the device agent all drive a model the same way.

Nothing here imports TensorFlow unless it is the only runtime present.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.errors import FedgeError
from fedge.manifest import Manifest

# Preference order: the current edge runtime, the legacy wheel, then TensorFlow.
RUNTIMES: tuple[tuple[str, str, str], ...] = (
    # (name, module holding Interpreter, distribution for the version)
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow.lite", "tensorflow"),
)
RUNTIME_ENV = "FEDGE_TFLITE_RUNTIME"


class RuntimeUnavailable(FedgeError):
    """No TFLite runtime (or not the one asked for) is installed."""


class ModelRuntimeError(FedgeError):
    """The runtime could not load or run the model."""


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _version(distribution: str) -> str:
    # Imported here: importlib.metadata costs a device several MB of RSS, and
    # the version is only read once per model load.
    import importlib.metadata  # noqa: PLC0415

    for dist in (distribution, f"{distribution}-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def available_runtimes() -> list[str]:
    """Names of the runtimes importable here, in preference order."""
    return [name for name, module, _ in RUNTIMES if importlib.util.find_spec(module.split(".")[0])]


def _interpreter_class(preferred: str | None) -> tuple[Any, RuntimeInfo]:
    wanted = preferred or os.environ.get(RUNTIME_ENV) or None
    candidates = [r for r in RUNTIMES if wanted is None or r[0] == wanted]
    if not candidates:
        names = ", ".join(r[0] for r in RUNTIMES)
        raise RuntimeUnavailable(f"unknown TFLite runtime {wanted!r}; expected one of: {names}")
    errors = []
    for name, module, dist in candidates:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        interpreter = getattr(mod, "Interpreter", None)
        if interpreter is None:
            # `tensorflow.lite` the module is not `tf.lite` the API namespace:
            # the Interpreter is exported only through the latter.
            interpreter = importlib.import_module(module.split(".")[0]).lite.Interpreter
        return interpreter, RuntimeInfo(name, _version(dist))
    raise RuntimeUnavailable(
        "no TFLite runtime is installed (pip install ai-edge-litert, or tflite-runtime "
        "on Python ≤ 3.11 with numpy<2): " + "; ".join(errors)
    )


class TrainableModel:
    """A fedge model loaded in a TFLite interpreter.

    Weights are exchanged as ``{tensor name: array}`` in the manifest's order.
    Not thread-safe: one interpreter, one caller at a time.
    """

    def __init__(
        self,
        model: bytes | Path | str,
        manifest: Manifest,
        *,
        runtime: str | None = None,
        num_threads: int | None = 1,
    ) -> None:
        self.manifest = manifest
        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        manifest.check_model_bytes(content)
        interpreter_cls, self.runtime = _interpreter_class(runtime)
        try:
            with warnings.catch_warnings():
                # TF's own interpreter warns that it is deprecated; fedge uses
                # it only as the last fallback, and says which runtime it uses.
                warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
                self._interpreter = interpreter_cls(model_content=content, num_threads=num_threads)
            self._runners = {
                name: self._interpreter.get_signature_runner(name)
                for name in manifest.signatures
            }
        except (ValueError, RuntimeError) as exc:
            raise ModelRuntimeError(
                f"{self.runtime} cannot load model {manifest.name!r}: {exc}"
            ) from exc

    def _call(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outputs: dict[str, np.ndarray] = self._runners[signature](**inputs)
        except (ValueError, RuntimeError) as exc:
            raise ModelRuntimeError(f"{signature} failed under {self.runtime}: {exc}") from exc
        return outputs

    def _x(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=self.manifest.input.dtype)

    def _y(self, y: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(y, dtype=self.manifest.label.dtype)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, mu: float | None = None) -> float:
        """One optimizer step on a batch; returns the batch loss before the step."""
        inputs = {"x": self._x(x), "y": self._y(y), "lr": np.asarray(lr, dtype=np.float32)}
        if self.manifest.fedprox:
            inputs["mu"] = np.asarray(mu or 0.0, dtype=np.float32)
        return float(self._call("train", **inputs)["loss"])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        out = self._call("evaluate", x=self._x(x), y=self._y(y))
        return {k: float(v) for k, v in out.items()}

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._call("infer", x=self._x(x))["output"]

    def get_weights(self) -> dict[str, np.ndarray]:
        out = self._call("get_weights")
        return {t.name: np.array(out[t.name], copy=True) for t in self.manifest.tensors}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load every tensor of the manifest (this also resets the FedProx anchor)."""
        inputs = {}
        for spec in self.manifest.tensors:
            if spec.name not in weights:
                raise ModelRuntimeError(f"set_weights: missing tensor {spec.name!r}")
            value = np.ascontiguousarray(weights[spec.name], dtype=spec.dtype)
            if value.shape != spec.shape:
                raise ModelRuntimeError(
                    f"set_weights: {spec.name} has shape {value.shape}, expected {spec.shape}"
                )
            inputs[spec.name] = value
        self._call("set_weights", **inputs)
