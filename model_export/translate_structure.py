"""Keras structure layers and operations → :mod:`model_export.layers.reshaping`/``merge``.

ZeroPadding1D/2D, Cropping1D/2D, UpSampling1D/2D, Concatenate, Multiply,
Subtract, Average, Maximum, GlobalMaxPooling1D/2D, Rescaling, RepeatVector,
TimeDistributed(Dense), and the arithmetic a functional model records as
operations (``x + 3.0``, ``x * y`` — MobileNetV3's hard sigmoid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_export.builder import Builder, pair, to_numpy
from model_export.layers.dense import Dense
from model_export.layers.merge import Affine, Merge
from model_export.layers.reshaping import Crop, Pad, UpSample
from model_export.layers.structure import GlobalMaxPool, RepeatVector
from model_export.translate_common import Call, Handler


def _single(b: Builder, layer: Any, call: Call) -> int:
    if len(call.inputs) != 1:
        raise b.refuse(layer, f"expected one input, got {len(call.inputs)}",
                       "call it on one tensor")
    return call.inputs[0]


def _pairs(value: Any, rank: int) -> tuple[tuple[int, int], ...]:
    """Keras's padding/cropping argument → ((before, after), …) per spatial axis."""
    if rank == 1:
        if isinstance(value, int):
            return ((value, value),)
        a, c = (int(v) for v in value)
        return ((a, c),)
    if isinstance(value, int):
        return ((value, value), (value, value))
    out = []
    for v in value:
        out.append((int(v), int(v)) if isinstance(v, int) else pair(v))
    return (out[0], out[1])


def _pad(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    b.check_common(layer)
    rank = 1 if type(layer).__name__.endswith("1D") else 2
    return b.add(Pad(b.unique(layer.name), _pairs(layer.padding, rank)), (x,))


def _crop(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    b.check_common(layer)
    rank = 1 if type(layer).__name__.endswith("1D") else 2
    return b.add(Crop(b.unique(layer.name), _pairs(layer.cropping, rank)), (x,))


def _upsample(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    b.check_common(layer)
    if type(layer).__name__ == "UpSampling1D":
        sizes: tuple[int, ...] = (int(layer.size),)
    else:
        if getattr(layer, "interpolation", "nearest") != "nearest":
            raise b.refuse(layer, f"interpolation {layer.interpolation!r} is not supported",
                           "use interpolation='nearest'")
        sizes = pair(layer.size)
    return b.add(UpSample(b.unique(layer.name), sizes), (x,))


MERGE_MODE = {"Concatenate": "concat", "Multiply": "multiply", "Subtract": "subtract",
              "Average": "average", "Maximum": "maximum"}


def _merge(b: Builder, layer: Any, call: Call) -> int:
    mode = MERGE_MODE[type(layer).__name__]
    axis = int(getattr(layer, "axis", -1)) if mode == "concat" else -1
    if mode == "concat" and axis == 0:
        raise b.refuse(layer, "concatenating along the batch axis is not supported",
                       "concatenate along a feature axis")
    if len(call.inputs) < 2 or (mode == "subtract" and len(call.inputs) != 2):
        raise b.refuse(layer, f"got {len(call.inputs)} inputs", "merge two or more tensors")
    return b.add(Merge(b.unique(layer.name), mode, axis), tuple(call.inputs))


def _global_max(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    b.check_common(layer)
    return b.add(GlobalMaxPool(b.unique(layer.name), bool(layer.keepdims)), (x,))


def _rescaling(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    scale = np.asarray(layer.scale, np.float32)
    offset = np.asarray(layer.offset, np.float32)
    return b.add(Affine(b.unique(layer.name), scale, offset), (x,))


def _time_distributed(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    inner = layer.layer
    if type(inner).__name__ != "Dense":
        raise b.refuse(layer, f"wraps {type(inner).__name__}; only TimeDistributed(Dense) "
                              "is supported", "apply the layer without TimeDistributed")
    b.check_common(inner)
    bias = to_numpy(inner.bias) if inner.use_bias else None
    dense = Dense(b.unique(layer.name), to_numpy(inner.kernel), bias, bool(layer.trainable))
    out = b.add(dense, (x,), inner)
    return b.activation(inner, inner.activation, out)


def _repeat(b: Builder, layer: Any, call: Call) -> int:
    x = _single(b, layer, call)
    return b.add(RepeatVector(b.unique(layer.name), int(layer.n)), (x,))


def _constant(value: Any) -> np.ndarray | None:
    """A Python number or array argument of an operation (None for a tensor)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return np.asarray(value, np.float32)
    if isinstance(value, np.ndarray):
        return value.astype(np.float32)
    return None


OPERATIONS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply",
              "TrueDivide": "divide", "Divide": "divide"}


def operation(b: Builder, op: Any, call: Call) -> int:
    """``x ± c``, ``x · c``, ``x / c`` (constants) and ``x + y``, ``x − y``, ``x · y``."""
    cls = type(op).__name__
    kind = OPERATIONS.get(cls)
    name = getattr(op, "name", cls)
    if kind is None:
        raise b.refuse(op, f"the operation {cls} has no builtin-only implementation",
                       "use a Keras layer instead (or add, subtract, multiply, divide)")
    args = call.args()
    if len(call.inputs) == 2 and kind != "divide":
        mode = {"add": "add", "subtract": "subtract", "multiply": "multiply"}[kind]
        return b.add(Merge(b.unique(name), mode), tuple(call.inputs))
    consts = [_constant(a) for a in args]
    if len(call.inputs) != 1 or len(args) != 2 or sum(c is not None for c in consts) != 1:
        raise b.refuse(op, f"{cls} of these operands is not supported",
                       "use a tensor and a number, or two tensors")
    left_tensor = consts[0] is None
    c = consts[1] if left_tensor else consts[0]
    assert c is not None
    one, zero = np.ones_like(c), np.zeros_like(c)
    if kind == "add":
        scale, offset = one, c
    elif kind == "multiply":
        scale, offset = c, zero
    elif kind == "subtract":
        scale, offset = (one, -c) if left_tensor else (-one, c)
    elif left_tensor:
        scale, offset = 1.0 / c, zero
    else:
        raise b.refuse(op, "dividing a number by a tensor is not supported",
                       "multiply by a constant instead")
    return b.add(Affine(b.unique(name), scale, offset), (call.inputs[0],))


HANDLERS: dict[str, Handler] = {
    "ZeroPadding1D": _pad, "ZeroPadding2D": _pad, "Cropping1D": _crop, "Cropping2D": _crop,
    "UpSampling1D": _upsample, "UpSampling2D": _upsample,
    "Concatenate": _merge, "Multiply": _merge, "Subtract": _merge, "Average": _merge,
    "Maximum": _merge, "GlobalMaxPooling1D": _global_max, "GlobalMaxPooling2D": _global_max,
    "Rescaling": _rescaling, "TimeDistributed": _time_distributed, "RepeatVector": _repeat,
}
