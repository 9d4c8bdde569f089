"""Keras model → :class:`Graph` of fedge layers, with the Keras weights copied.

Sequential and functional models are supported, including nested models
(a frozen backbone used as a layer). Every Keras layer maps to one fedge
layer plus, where it has ``activation=``, an activation node.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_export import builder
from model_export.builder import Builder, Scope, pair, to_numpy
from model_export.errors import UnsupportedModelError
from model_export.graph import INPUT, Graph
from model_export.layers.activations import Activation
from model_export.layers.conv import Conv, DepthwiseConv, Pool
from model_export.layers.dense import Dense
from model_export.layers.normalization import BatchNorm, Embedding
from model_export.layers.structure import Add, Dropout, GlobalAveragePool, Reshape
from model_export.translate_common import Call, Handler


def _dense(b: Builder, layer: Any, x: int) -> int:
    b.check_common(layer)
    bias = to_numpy(layer.bias) if layer.use_bias else None
    out = b.add(Dense(b.unique(layer.name), to_numpy(layer.kernel), bias, layer.trainable), (x,),
                layer)
    return b.activation(layer, layer.activation, out)


def _conv(b: Builder, layer: Any, x: int) -> int:
    b.check_common(layer)
    rank = 1 if type(layer).__name__ == "Conv1D" else 2
    if any(int(d) != 1 for d in np.atleast_1d(layer.dilation_rate)):
        raise b.refuse(layer, "dilation_rate must be 1", "use dilation_rate=1")
    if getattr(layer, "groups", 1) != 1:
        raise b.refuse(layer, "groups must be 1", "use groups=1")
    strides = (1, pair(layer.strides)[0]) if rank == 1 else pair(layer.strides)
    bias = to_numpy(layer.bias) if layer.use_bias else None
    conv = Conv(b.unique(layer.name), to_numpy(layer.kernel), bias, strides,
                b.window_padding(layer), rank, layer.trainable)
    return b.activation(layer, layer.activation, b.add(conv, (x,), layer))


def _depthwise(b: Builder, layer: Any, x: int) -> int:
    b.check_common(layer)
    if any(int(d) != 1 for d in np.atleast_1d(layer.dilation_rate)):
        raise b.refuse(layer, "dilation_rate must be 1", "use dilation_rate=1")
    bias = to_numpy(layer.bias) if layer.use_bias else None
    conv = DepthwiseConv(b.unique(layer.name), to_numpy(layer.kernel), bias, pair(layer.strides),
                         b.window_padding(layer), layer.trainable)
    return b.activation(layer, layer.activation, b.add(conv, (x,), layer))


def _pool(b: Builder, layer: Any, x: int) -> int:
    b.check_common(layer)
    cls = type(layer).__name__
    rank = 1 if cls.endswith("1D") else 2
    kind = "max" if cls.startswith("Max") else "avg"
    pool = pair(layer.pool_size)
    strides = pair(layer.strides if layer.strides is not None else layer.pool_size)
    if rank == 1:
        pool, strides = (1, pool[0]), (1, strides[0])
    node = Pool(b.unique(layer.name), kind, pool, strides, b.window_padding(layer), rank)
    return b.add(node, (x,))


def _global_pool(b: Builder, layer: Any, x: int) -> int:
    b.check_common(layer)
    return b.add(GlobalAveragePool(b.unique(layer.name), bool(layer.keepdims)), (x,))


def _flatten(b: Builder, layer: Any, x: int) -> int:
    b.check_common(layer)
    return b.add(Reshape(b.unique(layer.name)), (x,))


def _reshape(b: Builder, layer: Any, x: int) -> int:
    return b.add(Reshape(b.unique(layer.name), tuple(int(d) for d in layer.target_shape)), (x,))


def _relu(b: Builder, layer: Any, x: int) -> int:
    max_value = None if layer.max_value is None else float(layer.max_value)
    slope = float(layer.negative_slope)
    threshold = float(layer.threshold)
    if threshold != 0.0 or max_value not in (None, 6.0) or (max_value == 6.0 and slope != 0.0):
        raise b.refuse(layer, "ReLU supports max_value None or 6, threshold 0, and a "
                              "negative_slope only without max_value", "use ReLU() or ReLU(6.0)")
    if max_value == 6.0:
        node = Activation(b.unique(layer.name), "relu6")
    elif slope != 0.0:
        node = Activation(b.unique(layer.name), "leaky_relu", slope)
    else:
        node = Activation(b.unique(layer.name), "relu")
    return b.add(node, (x,))


def _leaky(b: Builder, layer: Any, x: int) -> int:
    slope = float(getattr(layer, "negative_slope", getattr(layer, "alpha", 0.3)))
    return b.add(Activation(b.unique(layer.name), "leaky_relu", slope), (x,))


def _activation_layer(b: Builder, layer: Any, x: int) -> int:
    kind = b.activation_kind(layer, layer.activation)
    if kind == "linear":
        return x
    return b.add(Activation(b.unique(layer.name), kind, 0.2 if kind == "leaky_relu" else 0.0),
                 (x,))


def _softmax(b: Builder, layer: Any, x: int) -> int:
    if layer.axis not in (-1, [-1], (-1,)):
        raise b.refuse(layer, "softmax must be over the last axis", "use axis=-1")
    return b.add(Activation(b.unique(layer.name), "softmax"), (x,))


def _dropout(b: Builder, layer: Any, x: int) -> int:
    if getattr(layer, "noise_shape", None) is not None:
        raise b.refuse(layer, "noise_shape is not supported", "use noise_shape=None")
    rate = float(layer.rate)
    seed = 1009 * (len(b.nodes) + 1)
    b.dropouts.append((layer, seed, rate))
    return b.add(Dropout(b.unique(layer.name), rate, seed), (x,))


def _batch_norm(b: Builder, layer: Any, x: int) -> int:
    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    rank = len(layer.input.shape) if hasattr(layer, "input") else None
    if axis not in (-1, [-1]) and not (rank is not None and axis in (rank - 1, [rank - 1])):
        raise b.refuse(layer, "only axis=-1 (channels last) is supported", "use axis=-1")
    if getattr(layer, "renorm", False):
        raise b.refuse(layer, "batch renormalization is not supported", "use renorm=False")
    node = BatchNorm(
        b.unique(layer.name),
        to_numpy(layer.gamma) if layer.scale else None,
        to_numpy(layer.beta) if layer.center else None,
        to_numpy(layer.moving_mean),
        to_numpy(layer.moving_variance),
        float(layer.epsilon),
        layer.trainable,
    )
    return b.add(node, (x,), layer)


def _embedding(b: Builder, layer: Any, x: int) -> int:
    if x != INPUT:
        raise b.refuse(layer, "Embedding must read the model input (integer ids)",
                       "make it the first layer")
    if getattr(layer, "mask_zero", False):
        raise b.refuse(layer, "mask_zero is not supported (sequences have a fixed length)",
                       "use mask_zero=False")
    node = Embedding(b.unique(layer.name), to_numpy(layer.embeddings), layer.trainable)
    return b.add(node, (x,), layer)


SINGLE_INPUT: dict[str, Callable[[Builder, Any, int], int]] = {
    "Dense": _dense, "Conv1D": _conv, "Conv2D": _conv, "DepthwiseConv2D": _depthwise,
    "AveragePooling1D": _pool, "AveragePooling2D": _pool, "MaxPooling1D": _pool,
    "MaxPooling2D": _pool, "GlobalAveragePooling1D": _global_pool,
    "GlobalAveragePooling2D": _global_pool, "Flatten": _flatten, "Reshape": _reshape,
    "ReLU": _relu, "LeakyReLU": _leaky, "Activation": _activation_layer, "Softmax": _softmax,
    "Dropout": _dropout, "BatchNormalization": _batch_norm, "Embedding": _embedding,
}


def _add(b: Builder, layer: Any, call: Call) -> int:
    return b.add(Add(b.unique(layer.name)), tuple(call.inputs))


def _handlers() -> dict[str, Handler]:
    from model_export import translate_attention, translate_recurrent, translate_structure

    def single(fn: Callable[[Builder, Any, int], int]) -> Handler:
        def handler(b: Builder, layer: Any, call: Call) -> int:
            if len(call.inputs) != 1:
                raise b.refuse(layer, f"expected one input, got {len(call.inputs)}",
                               "call it on one tensor")
            return fn(b, layer, call.inputs[0])
        return handler

    table: dict[str, Handler] = {name: single(fn) for name, fn in SINGLE_INPUT.items()}
    table["Add"] = _add
    for module in (translate_recurrent, translate_structure, translate_attention):
        table.update(module.HANDLERS)
    return table


HANDLERS = _handlers()
builder.SUPPORTED_LAYERS[:] = [*HANDLERS, "InputLayer"]
OP_NAMES = ("add", "subtract", "multiply", "divide (by a constant)")


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _is_layer(op: Any) -> bool:
    import keras

    return isinstance(op, keras.layers.Layer)


def _translate_layer(b: Builder, layer: Any, call: Call) -> int:
    cls = type(layer).__name__
    if _is_model(layer):
        if len(call.inputs) != 1:
            raise b.refuse(layer, "nested models must take one input",
                           "give the sub-model a single input")
        b.scopes.append(Scope(str(layer.name), bool(layer.trainable)))
        try:
            return _translate_model(b, layer, call.inputs[0])
        finally:
            b.scopes.pop()
    if not _is_layer(layer):
        # A Keras operation in a functional model (`x + 3.0`, `x * y`): an op node.
        from model_export import translate_structure

        return translate_structure.operation(b, layer, call)
    if cls == "InputLayer":
        return call.inputs[0]
    handler = HANDLERS.get(cls)
    if handler is None:
        raise b.refuse(layer, "this layer type has no builtin-only implementation",
                       "replace it with a supported layer")
    return handler(b, layer, call)


def _translate_model(b: Builder, model: Any, x: int) -> int:
    import keras

    if isinstance(model, keras.Sequential):
        for layer in model.layers:
            x = _translate_layer(b, layer, Call([x], None))
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
        tensors = list(node.arguments.keras_tensors)
        args = [visit(t) for t in tensors]
        if len(node.outputs) != 1:
            raise b.refuse(op, "layers with several outputs are not supported",
                           "return a single tensor (e.g. no return_state)")
        out = _translate_layer(b, op, Call(args, node))
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
    b = Builder()
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
