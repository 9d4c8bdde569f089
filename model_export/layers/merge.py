"""Merging layers (Concatenate, Multiply, Subtract, Average, Maximum) and affine constants.

Element-wise merges broadcast like Keras (a squeeze-and-excite block
multiplies ``[B, H, W, C]`` by ``[B, 1, 1, C]``); because the shapes are
static, the gradient of a broadcast input is a ``SUM`` over the broadcast
axes decided at export time — no ``BroadcastGradientArgs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_export.layers.base import Cache, Context, Grads, Param, Tensor, static_shape

MERGES = ("concat", "multiply", "subtract", "average", "maximum", "add")


def _unbroadcast(g: Tensor, out_shape: tuple[int, ...], shape: tuple[int, ...]) -> Tensor:
    """Sum ``g`` (of ``[B, *out_shape]``) down to ``[B, *shape]``."""
    if shape == out_shape:
        return g
    lead = len(out_shape) - len(shape)
    padded = (1,) * lead + shape
    axes = [i + 1 for i, (o, s) in enumerate(zip(out_shape, padded, strict=True))
            if s == 1 and o != 1]
    if axes:
        g = tf.reduce_sum(g, axis=axes, keepdims=True)
    return tf.reshape(g, [-1, *shape]) if lead else g


@dataclass(frozen=True)
class Merge:
    """``mode`` is one of MERGES; ``axis`` is Concatenate's (negative or ≥ 1)."""

    name: str
    mode: str
    axis: int = -1

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        xs = list(inputs)
        shapes = [static_shape(x) for x in xs]
        if self.mode == "concat":
            return tf.concat(xs, axis=self.axis), (shapes,)
        if self.mode == "subtract":
            y = xs[0] - xs[1]
        elif self.mode == "multiply":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
        elif self.mode == "maximum":
            # Keras: max(max(x0, x1), x2) …; each partial result is kept for the
            # gradient, which (as TensorFlow's) goes to the left operand on ties.
            partial = [xs[0]]
            for x in xs[1:]:
                partial.append(tf.maximum(partial[-1], x))
            return partial[-1], (shapes, xs, partial)
        else:  # add, average
            y = tf.add_n(xs) if len(xs) > 1 else xs[0]
            if self.mode == "average":
                y = y * (1.0 / len(xs))
        return y, (shapes, xs)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        shapes: list[tuple[int, ...]] = cache[0]
        n = len(shapes)
        if not need_dx:
            return Grads((None,) * n, ())
        if self.mode == "concat":
            axis = self.axis if self.axis < 0 else self.axis - 1
            sizes = [s[axis] for s in shapes]
            return Grads(tuple(tf.split(dy, sizes, axis=self.axis)), ())
        out_shape = static_shape(dy)
        xs = cache[1]
        grads: list[Tensor] = []
        if self.mode == "subtract":
            grads = [dy, -dy]
        elif self.mode == "multiply":
            for i in range(n):
                g = dy
                for j, x in enumerate(xs):
                    if j != i:
                        g = g * x
                grads.append(g)
        elif self.mode == "maximum":
            partial = cache[2]
            g = dy
            rev: list[Tensor] = []
            for k in range(n - 1, 0, -1):
                left = tf.cast(partial[k - 1] >= xs[k], dy.dtype)
                rev.append(g * (1.0 - left))
                g = g * left
            rev.append(g)
            grads = rev[::-1]
        elif self.mode == "average":
            grads = [dy * (1.0 / n)] * n
        else:
            grads = [dy] * n
        return Grads(tuple(_unbroadcast(g, out_shape, s)
                           for g, s in zip(grads, shapes, strict=True)), ())


@dataclass(frozen=True)
class Affine:
    """``y = x·scale + offset`` with constants (Rescaling, ``x + 3.0``, ``x * (1/6)``)."""

    name: str
    scale: np.ndarray
    offset: np.ndarray

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        y = inputs[0]
        if not np.all(self.scale == 1.0):
            y = y * self.scale
        if np.any(self.offset != 0.0):
            y = y + self.offset
        return y, ()

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        return Grads((dy if np.all(self.scale == 1.0) else dy * self.scale,), ())
