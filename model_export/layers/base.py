"""The layer interface: a forward pass that keeps what its backward pass needs.

Every layer's backward pass is written by hand with TFLite builtin ops, so the
exported ``train`` signature contains no TensorFlow gradient op at all (no
``ReluGrad``, ``Conv2DBackpropFilter``, ``BroadcastGradientArgs`` …) and
converts with ``TFLITE_BUILTINS`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Tensor = Any  # tf.Tensor; TensorFlow ships no type information
Cache = tuple[Any, ...]


@dataclass(frozen=True)
class Param:
    """One weight of a layer, with its initial value (copied from Keras)."""

    name: str
    value: np.ndarray
    trainable: bool


def kernel_and_bias(
    kernel_name: str, kernel: np.ndarray, bias: np.ndarray | None, trainable: bool
) -> tuple[Param, ...]:
    """The parameter list of a layer with a kernel and an optional bias."""
    params = [Param(kernel_name, kernel, trainable)]
    if bias is not None:
        params.append(Param("bias", bias, trainable))
    return tuple(params)


@dataclass(frozen=True)
class Context:
    """Per-call information: training mode, and the step counter dropout hashes."""

    training: bool
    step: Tensor | None = None


@dataclass(frozen=True)
class Grads:
    """A backward pass's result: one entry per input and per parameter (None = not needed)."""

    inputs: tuple[Tensor | None, ...]
    params: tuple[Tensor | None, ...]


class Layer(Protocol):
    """A layer of an exported graph.

    ``forward`` returns the output and a cache; ``backward`` receives the
    output gradient ``dy`` and returns the input and parameter gradients.
    ``need_dx`` is False when nothing upstream trains, so the layer may skip
    computing its input gradient (the first conv's is the most expensive).
    """

    @property
    def name(self) -> str: ...

    def params(self) -> tuple[Param, ...]: ...

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]: ...

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads: ...


def static_shape(x: Tensor) -> tuple[int, ...]:
    """The shape without its batch dimension; every other dimension is static."""
    dims = tuple(x.shape)[1:]
    if any(d is None for d in dims):
        raise ValueError(f"a non-batch dimension is dynamic: {x.shape}")
    return tuple(int(d) for d in dims)


def matmul_t(a: Tensor, b: Tensor) -> Tensor:
    """``a·bᵀ`` for 2-D ``a`` ``[M, K]`` and a weight-like ``b`` ``[N, K]``.

    Written as a rank-3 ``BATCH_MATMUL`` with ``adj_y``: as a 2-D product the
    converter turns it into ``FULLY_CONNECTED`` with ``b`` as non-constant
    weights, which TFLite runs 2–3× slower than ``BATCH_MATMUL`` (measured
    here on [32, 256]·[256, 1024]: 1.1 vs 0.43 ms).
    """
    import tensorflow as tf  # noqa: PLC0415

    k = int(b.shape[-1])
    n = int(b.shape[0])
    product = tf.matmul(tf.reshape(a, [1, -1, k]), tf.reshape(b, [1, n, k]), transpose_b=True)
    return tf.reshape(product, [-1, n])
