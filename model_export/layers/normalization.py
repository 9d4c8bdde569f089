"""BatchNormalization with frozen statistics, and Embedding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_export.layers.base import Cache, Context, Grads, Param, Tensor, static_shape


@dataclass(frozen=True)
class BatchNorm:
    """``y = γ·(x − μ)/√(σ² + ε) + β`` over the last axis, with μ, σ² the moving statistics.

    The statistics stay frozen during on-device training (Keras's inference
    behaviour): per-batch statistics on tiny, non-IID device batches would
    make every device's update depend on its batch composition, and updating
    moving averages on device would need them averaged like weights. γ and β
    train; μ and σ² are exported as non-trainable tensors.
    """

    name: str
    gamma: np.ndarray | None
    beta: np.ndarray | None
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    epsilon: float
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        out = []
        if self.gamma is not None:
            out.append(Param("gamma", self.gamma, self.trainable))
        if self.beta is not None:
            out.append(Param("beta", self.beta, self.trainable))
        out.append(Param("moving_mean", self.moving_mean, False))
        out.append(Param("moving_variance", self.moving_variance, False))
        return tuple(out)

    def _split(
        self, params: Sequence[Tensor]
    ) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
        values = list(params)
        gamma = values.pop(0) if self.gamma is not None else None
        beta = values.pop(0) if self.beta is not None else None
        return gamma, beta, values[0], values[1]

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        gamma, beta, mean, variance = self._split(params)
        inv = tf.math.rsqrt(variance + self.epsilon)
        normalized = (x - mean) * inv
        y = normalized * gamma if gamma is not None else normalized
        if beta is not None:
            y = y + beta
        return y, (normalized, inv, len(static_shape(x)))

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        normalized, inv, rank = cache
        gamma, _, _, _ = self._split(params)
        axes = list(range(rank))  # every axis but the last (channels)
        dparams: list[Tensor | None] = [None] * len(self.params())
        if self.trainable:
            index = 0
            if self.gamma is not None:
                dparams[index] = tf.reduce_sum(dy * normalized, axis=axes)
                index += 1
            if self.beta is not None:
                dparams[index] = tf.reduce_sum(dy, axis=axes)
        dx = None
        if need_dx:
            scale = inv * gamma if gamma is not None else inv
            dx = dy * scale
        return Grads((dx,), tuple(dparams))


@dataclass(frozen=True)
class Embedding:
    """Integer ids ``[B, T]`` → ``[B, T, D]``; the table's gradient is one-hotᵀ·dy."""

    name: str
    table: np.ndarray  # [vocabulary, D]
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        return (Param("embeddings", self.table, self.trainable),)

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        ids = tf.cast(inputs[0], tf.int32)
        return tf.gather(params[0], ids), (ids,)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not self.trainable:
            return Grads((None,), (None,))
        vocabulary, dim = self.table.shape
        # A one-hot product instead of a scatter (UNSORTED_SEGMENT_SUM is
        # missing from older runtimes); ids outside the table contribute 0.
        onehot = tf.one_hot(tf.reshape(cache[0], [-1]), vocabulary, dtype=tf.float32)
        dtable = tf.matmul(tf.transpose(onehot), tf.reshape(dy, [-1, dim]))
        return Grads((None,), (dtable,))


@dataclass(frozen=True)
class LayerNorm:
    """LayerNormalization over the last axis: ``y = γ·x̂ + β``, ``x̂ = (x − μ)/√(σ² + ε)``.

    Backward, with ``g = dy·γ``: ``dx = (g − mean(g) − x̂·mean(g·x̂)) / √(σ² + ε)``;
    ``dγ = Σ dy·x̂`` and ``dβ = Σ dy`` over every axis but the last.
    """

    name: str
    gamma: np.ndarray | None
    beta: np.ndarray | None
    epsilon: float
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        out = []
        if self.gamma is not None:
            out.append(Param("gamma", self.gamma, self.trainable))
        if self.beta is not None:
            out.append(Param("beta", self.beta, self.trainable))
        return tuple(out)

    def _split(self, params: Sequence[Tensor]) -> tuple[Tensor | None, Tensor | None]:
        values = list(params)
        gamma = values.pop(0) if self.gamma is not None else None
        beta = values.pop(0) if self.beta is not None else None
        return gamma, beta

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        gamma, beta = self._split(params)
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        centered = x - mean
        variance = tf.reduce_mean(centered * centered, axis=-1, keepdims=True)
        inv = tf.math.rsqrt(variance + self.epsilon)
        normalized = centered * inv
        y = normalized * gamma if gamma is not None else normalized
        if beta is not None:
            y = y + beta
        return y, (normalized, inv, len(static_shape(x)))

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        normalized, inv, rank = cache
        gamma, _ = self._split(params)
        axes = list(range(rank))
        dparams: list[Tensor | None] = [None] * len(self.params())
        if self.trainable:
            index = 0
            if self.gamma is not None:
                dparams[index] = tf.reduce_sum(dy * normalized, axis=axes)
                index += 1
            if self.beta is not None:
                dparams[index] = tf.reduce_sum(dy, axis=axes)
        dx = None
        if need_dx:
            g = dy * gamma if gamma is not None else dy
            mean_g = tf.reduce_mean(g, axis=-1, keepdims=True)
            mean_gx = tf.reduce_mean(g * normalized, axis=-1, keepdims=True)
            dx = (g - mean_g - normalized * mean_gx) * inv
        return Grads((dx,), tuple(dparams))
