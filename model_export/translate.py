"""Keras model → :class:`Graph` of fedge layers, with the Keras weights copied.

Sequential and functional models are supported, including nested models
(a frozen backbone used as a layer). Every Keras layer maps to one fedge
layer plus, where it has ``activation=``, an activation node.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_export.errors import UnsupportedLayerError, UnsupportedModelError
from model_export.graph import INPUT, Graph, Node
from model_export.layers.activations import Activation
from model_export.layers.base import Layer
from model_export.layers.conv import Conv, DepthwiseConv, Pool
from model_export.layers.dense import Dense
from model_export.layers.normalization import BatchNorm, Embedding
from model_export.layers.structure import Add, Dropout, GlobalAveragePool, Reshape

SUPPORTED_LAYERS = (
    "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "AveragePooling1D", "AveragePooling2D",
    "MaxPooling1D", "MaxPooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "Flatten", "Reshape", "ReLU", "LeakyReLU", "Activation", "Softmax", "Dropout",
    "BatchNormalization", "Embedding", "Add", "InputLayer",
)
SUPPORTED_ACTIVATIONS = ("linear", "relu", "relu6", "leaky_relu", "tanh", "sigmoid", "softmax")


def _supported_text() -> str:
    return (f"supported layers: {', '.join(SUPPORTED_LAYERS)}; "
            f"activations: {', '.join(SUPPORTED_ACTIVATIONS)}")


def _unsupported(layer: Any, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"layer {layer.name!r} ({type(layer).__name__}): {why}; {_supported_text()}"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _np(var: Any) -> np.ndarray:
    return np.asarray(var.numpy(), dtype=np.float32)


def _activation_name(layer: Any, fn: Any) -> str:
    import keras

    name = keras.activations.serialize(fn) if fn is not None else "linear"
    if isinstance(name, dict):
        name = name.get("config", {}).get("name", name.get("class_name"))
    if name not in SUPPORTED_ACTIVATIONS:
        raise _unsupported(layer, f"activation {name!r} is not supported")
    return str(name)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _check_common(layer: Any) -> None:
    if getattr(layer, "data_format", "channels_last") not in (None, "channels_last"):
        raise _unsupported(layer, "only data_format='channels_last' is supported")
    for attr in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                 "kernel_constraint", "bias_constraint"):
        if getattr(layer, attr, None) is not None:
            raise _unsupported(
                layer, f"{attr} is not supported (the on-device loss is the data loss)"
            )
    if getattr(layer, "quantization_mode", None):
        raise _unsupported(layer, "quantized Keras layers are not supported")
    if getattr(layer, "lora_enabled", False):
        raise _unsupported(layer, "LoRA layers are not supported")


def _window_padding(layer: Any) -> str:
    padding = str(layer.padding).lower()
    if padding not in ("valid", "same"):
        raise _unsupported(layer, f"padding {padding!r} is not supported (use 'valid' or 'same')")
    return padding


@dataclass
class _Builder:
    nodes: list[Node] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    next_tensor: int = 1
    sources: dict[str, Any] = field(default_factory=dict)  # tensor name → Keras variable
    dropouts: list[tuple[Any, int, float]] = field(default_factory=list)

    def unique(self, name: str) -> str:
        base = _safe(name) or "layer"
        candidate, k = base, 1
        while candidate in self.names:
            k += 1
            candidate = f"{base}_{k}"
        self.names.add(candidate)
        return candidate

    def add(self, layer: Layer, inputs: tuple[int, ...], source: Any = None) -> int:
        for param in layer.params():
            attr = "kernel" if param.name == "depthwise_kernel" else param.name
            self.sources[f"{layer.name}_{param.name}"] = getattr(source, attr)
        out = self.next_tensor
        self.next_tensor += 1
        self.nodes.append(Node(layer, inputs, out))
        return out

    def activation(self, layer: Any, fn: Any, tensor: int) -> int:
        kind = _activation_name(layer, fn)
        if kind == "linear":
            return tensor
        alpha = 0.2 if kind == "leaky_relu" else 0.0  # keras.activations.leaky_relu's default
        return self.add(Activation(self.unique(f"{layer.name}_{kind}"), kind, alpha), (tensor,))


def _dense(b: _Builder, layer: Any, x: int) -> int:
    _check_common(layer)
    bias = _np(layer.bias) if layer.use_bias else None
    out = b.add(Dense(b.unique(layer.name), _np(layer.kernel), bias, layer.trainable), (x,),
                layer)
    return b.activation(layer, layer.activation, out)


def _conv(b: _Builder, layer: Any, x: int) -> int:
    _check_common(layer)
    rank = 1 if type(layer).__name__ == "Conv1D" else 2
    if any(int(d) != 1 for d in np.atleast_1d(layer.dilation_rate)):
        raise _unsupported(layer, "dilation_rate must be 1")
    if getattr(layer, "groups", 1) != 1:
        raise _unsupported(layer, "groups must be 1")
    strides = (1, _pair(layer.strides)[0]) if rank == 1 else _pair(layer.strides)
    bias = _np(layer.bias) if layer.use_bias else None
    conv = Conv(b.unique(layer.name), _np(layer.kernel), bias, strides, _window_padding(layer),
                rank, layer.trainable)
    return b.activation(layer, layer.activation, b.add(conv, (x,), layer))


def _depthwise(b: _Builder, layer: Any, x: int) -> int:
    _check_common(layer)
    if any(int(d) != 1 for d in np.atleast_1d(layer.dilation_rate)):
        raise _unsupported(layer, "dilation_rate must be 1")
    bias = _np(layer.bias) if layer.use_bias else None
    conv = DepthwiseConv(b.unique(layer.name), _np(layer.kernel), bias, _pair(layer.strides),
                         _window_padding(layer), layer.trainable)
    return b.activation(layer, layer.activation, b.add(conv, (x,), layer))


def _pool(b: _Builder, layer: Any, x: int) -> int:
    _check_common(layer)
    cls = type(layer).__name__
    rank = 1 if cls.endswith("1D") else 2
    kind = "max" if cls.startswith("Max") else "avg"
    pool = _pair(layer.pool_size)
    strides = _pair(layer.strides if layer.strides is not None else layer.pool_size)
    if rank == 1:
        pool, strides = (1, pool[0]), (1, strides[0])
    node = Pool(b.unique(layer.name), kind, pool, strides, _window_padding(layer), rank)
    return b.add(node, (x,))


def _global_pool(b: _Builder, layer: Any, x: int) -> int:
    _check_common(layer)
    return b.add(GlobalAveragePool(b.unique(layer.name), bool(layer.keepdims)), (x,))


def _flatten(b: _Builder, layer: Any, x: int) -> int:
    _check_common(layer)
    return b.add(Reshape(b.unique(layer.name)), (x,))


def _reshape(b: _Builder, layer: Any, x: int) -> int:
    return b.add(Reshape(b.unique(layer.name), tuple(int(d) for d in layer.target_shape)), (x,))


def _relu(b: _Builder, layer: Any, x: int) -> int:
    max_value = None if layer.max_value is None else float(layer.max_value)
    slope = float(layer.negative_slope)
    threshold = float(layer.threshold)
    if threshold != 0.0 or max_value not in (None, 6.0) or (max_value == 6.0 and slope != 0.0):
        raise _unsupported(layer, "ReLU supports max_value None or 6, threshold 0, and a "
                                  "negative_slope only without max_value")
    if max_value == 6.0:
        node = Activation(b.unique(layer.name), "relu6")
    elif slope != 0.0:
        node = Activation(b.unique(layer.name), "leaky_relu", slope)
    else:
        node = Activation(b.unique(layer.name), "relu")
    return b.add(node, (x,))


def _leaky(b: _Builder, layer: Any, x: int) -> int:
    slope = float(getattr(layer, "negative_slope", getattr(layer, "alpha", 0.3)))
    return b.add(Activation(b.unique(layer.name), "leaky_relu", slope), (x,))


def _activation_layer(b: _Builder, layer: Any, x: int) -> int:
    kind = _activation_name(layer, layer.activation)
    if kind == "linear":
        return x
    return b.add(Activation(b.unique(layer.name), kind, 0.2 if kind == "leaky_relu" else 0.0),
                 (x,))


def _softmax(b: _Builder, layer: Any, x: int) -> int:
    if layer.axis not in (-1, [-1], (-1,)):
        raise _unsupported(layer, "softmax must be over the last axis")
    return b.add(Activation(b.unique(layer.name), "softmax"), (x,))


def _dropout(b: _Builder, layer: Any, x: int) -> int:
    if getattr(layer, "noise_shape", None) is not None:
        raise _unsupported(layer, "noise_shape is not supported")
    rate = float(layer.rate)
    seed = 1009 * (len(b.nodes) + 1)
    b.dropouts.append((layer, seed, rate))
    return b.add(Dropout(b.unique(layer.name), rate, seed), (x,))


def _batch_norm(b: _Builder, layer: Any, x: int) -> int:
    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    rank = len(layer.input.shape) if hasattr(layer, "input") else None
    if axis not in (-1, [-1]) and not (rank is not None and axis in (rank - 1, [rank - 1])):
        raise _unsupported(layer, "only axis=-1 (channels last) is supported")
    if getattr(layer, "renorm", False):
        raise _unsupported(layer, "batch renormalization is not supported")
    node = BatchNorm(
        b.unique(layer.name),
        _np(layer.gamma) if layer.scale else None,
        _np(layer.beta) if layer.center else None,
        _np(layer.moving_mean),
        _np(layer.moving_variance),
        float(layer.epsilon),
        layer.trainable,
    )
    return b.add(node, (x,), layer)


def _embedding(b: _Builder, layer: Any, x: int) -> int:
    if x != INPUT:
        raise _unsupported(layer, "Embedding must read the model input (integer ids)")
    if getattr(layer, "mask_zero", False):
        raise _unsupported(layer, "mask_zero is not supported")
    node = Embedding(b.unique(layer.name), _np(layer.embeddings), layer.trainable)
    return b.add(node, (x,), layer)


SINGLE_INPUT: dict[str, Callable[[_Builder, Any, int], int]] = {
    "Dense": _dense, "Conv1D": _conv, "Conv2D": _conv, "DepthwiseConv2D": _depthwise,
    "AveragePooling1D": _pool, "AveragePooling2D": _pool, "MaxPooling1D": _pool,
    "MaxPooling2D": _pool, "GlobalAveragePooling1D": _global_pool,
    "GlobalAveragePooling2D": _global_pool, "Flatten": _flatten, "Reshape": _reshape,
    "ReLU": _relu, "LeakyReLU": _leaky, "Activation": _activation_layer, "Softmax": _softmax,
    "Dropout": _dropout, "BatchNormalization": _batch_norm, "Embedding": _embedding,
}


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _translate_layer(b: _Builder, layer: Any, inputs: list[int]) -> int:
    cls = type(layer).__name__
    if _is_model(layer):
        if len(inputs) != 1:
            raise _unsupported(layer, "nested models must take one input")
        return _translate_model(b, layer, inputs[0])
    if cls == "InputLayer":
        return inputs[0]
    if cls == "Add":
        return b.add(Add(b.unique(layer.name)), tuple(inputs))
    handler = SINGLE_INPUT.get(cls)
    if handler is None:
        raise _unsupported(layer, "this layer type has no builtin-only implementation")
    if len(inputs) != 1:
        raise _unsupported(layer, "expected one input")
    return handler(b, layer, inputs[0])


def _translate_model(b: _Builder, model: Any, x: int) -> int:
    import keras

    if isinstance(model, keras.Sequential):
        for layer in model.layers:
            x = _translate_layer(b, layer, [x])
        return x
    inputs = list(model.inputs)
    outputs = list(model.outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(
            f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "fedge exports models with one input and one output"
        )
    done: dict[int, int] = {id(inputs[0]): x}

    def visit(kt: Any) -> int:
        key = id(kt)
        if key in done:
            return done[key]
        op, node_index, _ = kt._keras_history
        node = op._inbound_nodes[node_index]
        args = [visit(t) for t in node.arguments.keras_tensors]
        if len(node.outputs) != 1:
            raise _unsupported(op, "layers with several outputs are not supported")
        out = _translate_layer(b, op, args)
        done[key] = out
        return out

    return visit(outputs[0])


@dataclass(frozen=True)
class Translated:
    graph: Graph
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    final_activation: str | None
    sources: dict[str, Any]
    dropouts: list[tuple[Any, int, float]]


def translate(model: Any) -> Translated:
    """Translate a built Keras model; raise UnsupportedLayerError/UnsupportedModelError."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError) as exc:
        raise UnsupportedModelError(
            f"model {getattr(model, 'name', model)!r} has no defined input: build it with "
            "keras.Input(shape=…) or input_shape"
        ) from exc
    if len(inputs) != 1:
        raise UnsupportedModelError(f"model {model.name!r} must have exactly one input")
    shape = tuple(inputs[0].shape)[1:]
    if any(d is None for d in shape):
        raise UnsupportedModelError(
            f"model {model.name!r}: input shape {tuple(inputs[0].shape)} must be static "
            "except for the batch dimension"
        )
    b = _Builder()
    out = _translate_model(b, model, INPUT)
    if not b.nodes or out == INPUT:
        raise UnsupportedModelError(f"model {model.name!r} has no layers to train")
    graph = Graph(tuple(b.nodes), out)
    first = [n for n in graph.nodes if INPUT in n.inputs]
    integer = any(isinstance(n.layer, Embedding) for n in first)
    dtype = str(inputs[0].dtype)
    if integer:
        if any(not isinstance(n.layer, Embedding) for n in first):
            raise UnsupportedModelError("integer ids may feed Embedding layers only")
        if not dtype.startswith("int"):
            raise UnsupportedModelError(
                f"model {model.name!r}: Embedding input must be an integer dtype, got {dtype}"
            )
        dtype = "int32"
    elif dtype != "float32":
        raise UnsupportedModelError(
            f"model {model.name!r}: input dtype {dtype} is not supported; fedge models take "
            "float32 inputs (or int32 ids into an Embedding)"
        )
    last = graph.nodes[-1]
    final = last.layer.kind if isinstance(last.layer, Activation) and last.output == out else None
    output_shape = tuple(int(d) for d in model.outputs[0].shape[1:])
    return Translated(graph, tuple(int(d) for d in shape), dtype, output_shape, final,
                      b.sources, b.dropouts)
