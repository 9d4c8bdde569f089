"""Shape layers (Flatten, Reshape), global average pooling, Add and Dropout."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_export.layers.base import Cache, Context, Grads, Param, Tensor, static_shape


@dataclass(frozen=True)
class Reshape:
    """Flatten (``target=None``) or Reshape to ``target`` (batch dimension excluded)."""

    name: str
    target: tuple[int, ...] | None = None

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        shape = static_shape(x)
        target = self.target if self.target is not None else (math.prod(shape),)
        if -1 in target:
            known = math.prod(d for d in target if d != -1)
            target = tuple(math.prod(shape) // known if d == -1 else d for d in target)
        return tf.reshape(x, [-1, *target]), (shape,)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        return Grads((tf.reshape(dy, [-1, *cache[0]]) if need_dx else None,), ())


@dataclass(frozen=True)
class GlobalAveragePool:
    """Mean over the spatial axes (1 for 1-D, 2 for 2-D inputs)."""

    name: str
    keepdims: bool = False

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        shape = static_shape(x)
        axes = list(range(1, len(shape)))
        return tf.reduce_mean(x, axis=axes, keepdims=self.keepdims), (shape,)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        shape: tuple[int, ...] = cache[0]
        spatial = shape[:-1]
        channels = shape[-1]
        # A broadcast MUL against a constant spreads dy evenly over the window.
        spread = np.full((1, *spatial, channels), 1.0 / math.prod(spatial), np.float32)
        dy = tf.reshape(dy, [-1, *([1] * len(spatial)), channels])
        return Grads((dy * spread,), ())


@dataclass(frozen=True)
class Add:
    """Element-wise sum of same-shaped inputs (residual connections)."""

    name: str

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        return tf.add_n(list(inputs)), (len(inputs),)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        return Grads(tuple(dy if need_dx else None for _ in range(cache[0])), ())


# Dropout masks come from a counter-based hash in exact int32 arithmetic:
# every runtime (TensorFlow, ai-edge-litert, tflite-runtime 2.14) computes the
# same mask bit for bit from (step, element index, layer seed), so the export
# verification can replay a dropout step exactly. x ↦ x² + c (mod p) with
# p = 46337 keeps every intermediate below 2³¹.
HASH_PRIME = 46337
HASH_ROUNDS = (12345, 23456, 34567)


def dropout_keep_mask(
    step: Tensor, seed: int, shape: tuple[int, ...], batch: Tensor, rate: float
) -> Tensor:
    """A {0, 1} float mask of ``[batch, *shape]`` keeping each element with probability 1−rate."""
    features = math.prod(shape)
    rows = tf.reshape(tf.range(batch, dtype=tf.int32) * features, [-1, 1])
    index = rows + tf.reshape(tf.range(features, dtype=tf.int32), [1, -1])
    p = HASH_PRIME
    mixed = tf.math.floormod(step, p) * 7919 + seed % p
    h = tf.math.floormod(tf.math.floormod(index, p) + mixed, p)
    high = tf.math.floordiv(index, p)
    for c in HASH_ROUNDS:
        h = tf.math.floormod(h * h + c, p)
        h = tf.math.floormod(h + high, p)
    uniform = tf.cast(h, tf.float32) * (1.0 / p)
    keep = tf.cast(uniform >= rate, tf.float32)
    return tf.reshape(keep, [-1, *shape])


def dropout_keep_mask_numpy(
    step: int, seed: int, shape: tuple[int, ...], batch: int, rate: float
) -> np.ndarray:
    """The same mask in NumPy (int64), for replaying a training step."""
    features = math.prod(shape)
    index = np.arange(batch * features, dtype=np.int64).reshape(batch, features)
    p = HASH_PRIME
    h = (index % p + (step % p) * 7919 + seed % p) % p
    high = index // p
    for c in HASH_ROUNDS:
        h = (h * h + c) % p
        h = (h + high) % p
    keep = (h.astype(np.float32) * np.float32(1.0 / p) >= rate).astype(np.float32)
    return keep.reshape(batch, *shape)


@dataclass(frozen=True)
class Dropout:
    """Inverted dropout, active in ``train`` only (see :func:`dropout_keep_mask`)."""

    name: str
    rate: float
    seed: int

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        if not ctx.training or self.rate == 0.0 or ctx.step is None:
            return x, (None,)
        batch = tf.shape(x)[0]
        scale = tf.constant(1.0 / (1.0 - self.rate), tf.float32)
        mask = dropout_keep_mask(ctx.step, self.seed, static_shape(x), batch, self.rate) * scale
        return x * mask, (mask,)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        mask = cache[0]
        return Grads((dy if mask is None else dy * mask,), ())


@dataclass(frozen=True)
class GlobalMaxPool:
    """Max over the spatial axes; the gradient is shared among tied maxima, as
    TensorFlow's ``Max`` gradient does (``mask / count``)."""

    name: str
    keepdims: bool = False

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        shape = static_shape(x)
        axes = list(range(1, len(shape)))
        y = tf.reduce_max(x, axis=axes, keepdims=True)
        out = y if self.keepdims else tf.reshape(y, [-1, shape[-1]])
        return out, (x, y, shape)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        x, y, shape = cache
        axes = list(range(1, len(shape)))
        hit = tf.cast(tf.equal(x, y), tf.float32)
        count = tf.reduce_sum(hit, axis=axes, keepdims=True)
        dy = tf.reshape(dy, [-1, *([1] * (len(shape) - 1)), shape[-1]])
        return Grads((hit * (dy / count),), ())


@dataclass(frozen=True)
class RepeatVector:
    """``[B, F]`` → ``[B, n, F]`` (``PACK``); the gradient sums the n copies."""

    name: str
    n: int

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        return tf.stack([inputs[0]] * self.n, axis=1), ()

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        return Grads((tf.reduce_sum(dy, axis=1) if need_dx else None,), ())
