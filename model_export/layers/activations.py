"""Element-wise activations and softmax, each with its derivative in builtin ops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf

from model_export.layers.base import Cache, Context, Grads, Param, Tensor


@dataclass(frozen=True)
class Activation:
    """``kind`` is one of ACTIVATIONS; ``alpha`` is LeakyReLU's negative slope."""

    name: str
    kind: str
    alpha: float = 0.0

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        if self.kind == "relu":
            y = tf.nn.relu(x)
        elif self.kind == "relu6":
            y = tf.nn.relu6(x)
        elif self.kind == "leaky_relu":
            y = tf.nn.leaky_relu(x, alpha=self.alpha)
        elif self.kind == "tanh":
            y = tf.tanh(x)
        elif self.kind == "sigmoid":
            y = tf.sigmoid(x)
        elif self.kind == "softmax":
            y = tf.nn.softmax(x, axis=-1)
        elif self.kind == "silu":
            y = x * tf.sigmoid(x)
        elif self.kind == "hard_sigmoid":
            y = hard_sigmoid(x)
        elif self.kind == "hard_silu":
            y = x * hard_sigmoid(x)
        elif self.kind == "linear":
            y = x
        else:  # pragma: no cover - the translator only builds known kinds
            raise ValueError(self.kind)
        return y, (x, y)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        x, y = cache
        if not need_dx:
            return Grads((None,), ())
        # Masks are computed as float multiplications (GREATER + CAST + MUL),
        # which every TFLite runtime has; they match TF's gradients, including
        # ReLU's zero gradient at exactly 0 and ReLU6's at exactly 6.
        if self.kind == "relu":
            dx = dy * tf.cast(x > 0.0, dy.dtype)
        elif self.kind == "relu6":
            dx = dy * tf.cast(tf.logical_and(x > 0.0, x < 6.0), dy.dtype)
        elif self.kind == "leaky_relu":
            positive = tf.cast(x > 0.0, dy.dtype)
            dx = dy * (positive + (1.0 - positive) * self.alpha)
        elif self.kind == "tanh":
            dx = dy * (1.0 - y * y)
        elif self.kind == "sigmoid":
            dx = dy * y * (1.0 - y)
        elif self.kind == "softmax":
            dx = y * (dy - tf.reduce_sum(dy * y, axis=-1, keepdims=True))
        elif self.kind == "silu":
            s = tf.sigmoid(x)
            dx = dy * s * (1.0 + x * (1.0 - s))
        elif self.kind == "hard_sigmoid":
            dx = dy * hard_sigmoid_slope(x)
        elif self.kind == "hard_silu":
            dx = dy * (hard_sigmoid(x) + x * hard_sigmoid_slope(x))
        else:
            dx = dy
        return Grads((dx,), ())


def hard_sigmoid(x: Tensor) -> Tensor:
    """Keras 3's ``relu6(x + 3) / 6``."""
    return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def hard_sigmoid_slope(x: Tensor) -> Tensor:
    """Its derivative: 1/6 strictly inside (−3, 3), as TensorFlow's Relu6 gradient."""
    inside = tf.logical_and(x > -3.0, x < 3.0)
    return tf.cast(inside, tf.float32) * (1.0 / 6.0)


ACTIVATIONS = ("relu", "relu6", "leaky_relu", "tanh", "sigmoid", "softmax", "silu",
               "hard_sigmoid", "hard_silu", "linear")
