"""One adapter over the stock TFLite runtimes.

fedge models carry five signatures (``train``, ``evaluate``, ``infer``,
``get_weights``, ``set_weights``; see docs/manifest.md). This module runs them
under whichever runtime is installed — ai-edge-litert, else tflite-runtime,
else TensorFlow's own interpreter — so the exporter's verification, the
service's evaluation and the device agent all drive a model the same way.

Two ways to drive ai-edge-litert are offered (``api``): its ``Interpreter``
(the default, and the only one the other runtimes have) and LiteRT's newer
``CompiledModel`` (``ai_edge_litert.compiled_model``), which trains fedge
models as well; a changed batch size resizes its inputs with
``resize_input_tensor_by_name``. docs/model_export.md has the measured
comparison.

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
from typing import Any, Protocol

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
# "interpreter": the Interpreter's signature runners (every runtime);
# "compiled": ai-edge-litert's CompiledModel.
APIS = ("interpreter", "compiled")
API_ENV = "FEDGE_TFLITE_API"


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


class _Signatures(Protocol):
    """Runs one named signature on named NumPy inputs."""

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class _InterpreterSignatures:
    def __init__(self, interpreter: Any, signatures: tuple[str, ...]) -> None:
        self._interpreter = interpreter  # the runners need it alive
        self._runners = {name: interpreter.get_signature_runner(name) for name in signatures}

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs: dict[str, np.ndarray] = self._runners[signature](**inputs)
        return outputs


class _CompiledSignatures:
    """LiteRT's CompiledModel: TensorBuffers per signature, recreated (after
    ``resize_input_tensor_by_name``) whenever an input's shape changes."""

    def __init__(self, content: bytes, num_threads: int | None) -> None:
        from ai_edge_litert import compiled_model, options  # noqa: PLC0415

        opts = options.Options(cpu_options=options.CpuOptions(num_threads=num_threads or 0))
        self._model = compiled_model.CompiledModel.from_buffer(content, options=opts)
        self._names = self._model.get_signature_list()
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        self._buffers: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def _prepare(self, signature: str, shapes: dict[str, tuple[int, ...]]) -> None:
        details = self._model.get_input_tensor_details(signature)
        for name, shape in shapes.items():
            if tuple(details[name]["shape"]) != shape:
                self._model.resize_input_tensor_by_name(signature, name, list(shape))
        names = self._names[signature]
        self._buffers[signature] = (
            {n: self._model.create_input_buffer_by_name(signature, n) for n in names["inputs"]},
            {n: self._model.create_output_buffer_by_name(signature, n) for n in names["outputs"]},
        )
        self._shapes[signature] = shapes

    def run(self, signature: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {name: tuple(int(d) for d in a.shape) for name, a in inputs.items()}
        if self._shapes.get(signature) != shapes:
            self._prepare(signature, shapes)
        ins, outs = self._buffers[signature]
        for name, array in inputs.items():
            ins[name].write(np.ascontiguousarray(array).reshape(-1))
        self._model.run_by_name(signature, ins, outs)
        details = self._model.get_output_tensor_details(signature)
        result = {}
        for name, buffer in outs.items():
            shape = tuple(int(d) for d in details[name]["shape"])
            dtype = np.dtype(details[name]["dtype"])
            result[name] = buffer.read(max(int(np.prod(shape)), 1), dtype).reshape(shape)
        return result


class TrainableModel:
    """A fedge model loaded in a TFLite runtime.

    Weights are exchanged as ``{tensor name: array}`` in the manifest's order.
    ``api`` chooses how ai-edge-litert runs it: ``"interpreter"`` (default) or
    ``"compiled"`` (LiteRT's CompiledModel); ``FEDGE_TFLITE_API`` sets the
    default. Not thread-safe: one interpreter, one caller at a time.
    """

    def __init__(
        self,
        model: bytes | Path | str,
        manifest: Manifest,
        *,
        runtime: str | None = None,
        num_threads: int | None = 1,
        api: str | None = None,
    ) -> None:
        self.manifest = manifest
        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        manifest.check_model_bytes(content)
        self.api = api or os.environ.get(API_ENV) or "interpreter"
        if self.api not in APIS:
            raise RuntimeUnavailable(f"unknown runtime API {self.api!r}; expected one of: "
                                     f"{', '.join(APIS)}")
        interpreter_cls, self.runtime = _interpreter_class(runtime)
        if self.api == "compiled" and self.runtime.name != "ai-edge-litert":
            raise RuntimeUnavailable(
                f"the CompiledModel API is ai-edge-litert's; {self.runtime} has only the "
                "Interpreter (use api='interpreter')"
            )
        try:
            if self.api == "compiled":
                self._signatures: _Signatures = _CompiledSignatures(content, num_threads)
            else:
                with warnings.catch_warnings():
                    # TF's own interpreter warns that it is deprecated; fedge uses
                    # it only as the last fallback, and says which runtime it uses.
                    warnings.filterwarnings("ignore",
                                            message=".*tf.lite.Interpreter is deprecated")
                    interpreter = interpreter_cls(model_content=content,
                                                  num_threads=num_threads)
                self._signatures = _InterpreterSignatures(interpreter, manifest.signatures)
        except (ValueError, RuntimeError) as exc:
            raise ModelRuntimeError(
                f"{self.runtime} cannot load model {manifest.name!r}: {exc}"
            ) from exc

    def _call(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return self._signatures.run(signature, inputs)
        except (ValueError, RuntimeError) as exc:
            raise ModelRuntimeError(f"{signature} failed under {self.runtime}: {exc}") from exc

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
