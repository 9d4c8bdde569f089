"""What the Keras translators share: the graph under construction and its refusals.

Every refusal is one line naming the layer, its class, where it sits (the
enclosing sub-models, and whether they are frozen — a frozen base needs
only a forward pass) and what to do.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_export.errors import UnsupportedLayerError
from model_export.graph import Node
from model_export.layers.activations import Activation
from model_export.layers.base import Layer

SUPPORTED_ACTIVATIONS = (
    "linear", "relu", "relu6", "leaky_relu", "tanh", "sigmoid", "softmax", "silu",
    "hard_sigmoid", "hard_silu",
)
# Filled by model_export.translate from its handler tables (for messages only).
SUPPORTED_LAYERS: list[str] = []


def supported_text() -> str:
    return (f"supported layers: {', '.join(SUPPORTED_LAYERS)}; "
            f"activations: {', '.join(SUPPORTED_ACTIVATIONS)}")


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def to_numpy(var: Any) -> np.ndarray:
    return np.asarray(var.numpy(), dtype=np.float32)


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


@dataclass(frozen=True)
class Scope:
    """A sub-model the translation is inside of."""

    name: str
    trainable: bool


@dataclass
class Builder:
    nodes: list[Node] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    next_tensor: int = 1
    sources: dict[str, Any] = field(default_factory=dict)  # tensor name → Keras variable
    dropouts: list[tuple[Any, int, float]] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)

    def unique(self, name: str) -> str:
        base = safe_name(name) or "layer"
        candidate, k = base, 1
        while candidate in self.names:
            k += 1
            candidate = f"{base}_{k}"
        self.names.add(candidate)
        return candidate

    def add(self, layer: Layer, inputs: tuple[int, ...], source: Any = None,
            variables: Mapping[str, Any] | None = None) -> int:
        """Append a node; its parameters' Keras variables come from ``variables``
        (by parameter name) or, failing that, the attribute of ``source`` with the
        parameter's name."""
        for param in layer.params():
            if variables is not None and param.name in variables:
                var = variables[param.name]
            else:
                attr = "kernel" if param.name == "depthwise_kernel" else param.name
                var = getattr(source, attr)
            self.sources[f"{layer.name}_{param.name}"] = var
        out = self.next_tensor
        self.next_tensor += 1
        self.nodes.append(Node(layer, inputs, out))
        return out

    def where(self) -> str:
        if not self.scopes:
            return ""
        frozen = any(not s.trainable for s in self.scopes)
        path = " › ".join(repr(s.name) for s in self.scopes)
        if frozen:
            return f" inside the frozen sub-model {path} (only its forward pass is needed)"
        return f" inside the sub-model {path}"

    def refuse(self, layer: Any, why: str, fix: str | None = None) -> UnsupportedLayerError:
        """One line: which layer, where, what is wrong, what to do."""
        cls = type(layer).__name__
        name = getattr(layer, "name", cls)
        todo = fix or "change that setting"
        return UnsupportedLayerError(
            f"layer {name!r} ({cls}){self.where()}: {why}; {todo} ({supported_text()})"
        )

    def activation_kind(self, layer: Any, fn: Any) -> str:
        import keras

        name = keras.activations.serialize(fn) if fn is not None else "linear"
        if isinstance(name, dict):
            name = name.get("config", {}).get("name", name.get("class_name"))
        name = {"swish": "silu", "hard_swish": "hard_silu"}.get(str(name), name)
        if name not in SUPPORTED_ACTIVATIONS:
            raise self.refuse(layer, f"activation {name!r} is not supported",
                              "use one of the supported activations")
        return str(name)

    def activation(self, layer: Any, fn: Any, tensor: int) -> int:
        kind = self.activation_kind(layer, fn)
        if kind == "linear":
            return tensor
        alpha = 0.2 if kind == "leaky_relu" else 0.0  # keras.activations.leaky_relu's default
        return self.add(Activation(self.unique(f"{layer.name}_{kind}"), kind, alpha), (tensor,))

    def check_common(self, layer: Any) -> None:
        if getattr(layer, "data_format", "channels_last") not in (None, "channels_last"):
            raise self.refuse(layer, "only data_format='channels_last' is supported",
                              "build the model channels-last")
        for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                     "kernel_constraint", "bias_constraint", "recurrent_regularizer",
                     "recurrent_constraint", "gamma_regularizer", "beta_regularizer",
                     "embeddings_regularizer"):
            if getattr(layer, attr, None) is not None:
                raise self.refuse(
                    layer, f"{attr} is not supported (the on-device loss is the data loss)",
                    f"remove the {attr.split('_')[-1]}",
                )
        if getattr(layer, "quantization_mode", None):
            raise self.refuse(layer, "quantized Keras layers are not supported",
                              "export the float model")
        if getattr(layer, "lora_enabled", False):
            raise self.refuse(layer, "LoRA layers are not supported", "merge the LoRA weights")

    def window_padding(self, layer: Any) -> str:
        padding = str(layer.padding).lower()
        if padding not in ("valid", "same"):
            raise self.refuse(layer, f"padding {padding!r} is not supported",
                              "use padding 'valid' or 'same'")
        return padding
