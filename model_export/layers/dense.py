"""Dense: ``y = x·W + b`` over the last axis (inputs of rank > 2 are flattened)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_export.layers.base import (
    Cache,
    Context,
    Grads,
    Param,
    Tensor,
    kernel_and_bias,
    matmul_t,
    static_shape,
)


@dataclass(frozen=True)
class Dense:
    name: str
    kernel: np.ndarray  # [in, out]
    bias: np.ndarray | None
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        return kernel_and_bias("kernel", self.kernel, self.bias, self.trainable)

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        shape = static_shape(x)
        units_in, units_out = self.kernel.shape
        x2 = tf.reshape(x, [-1, units_in]) if len(shape) > 1 else x
        y = tf.matmul(x2, params[0])
        if self.bias is not None:
            y = tf.nn.bias_add(y, params[1])
        if len(shape) > 1:
            y = tf.reshape(y, [-1, *shape[:-1], units_out])
        return y, (x2, shape)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        x2, shape = cache
        units_out = self.kernel.shape[1]
        dy2 = tf.reshape(dy, [-1, units_out]) if len(shape) > 1 else dy
        dparams: list[Tensor | None] = [None] * len(self.params())
        if self.trainable:
            # xᵀ·dy as TRANSPOSE + a plain 2-D product (a GEMM in TFLite).
            dparams[0] = tf.matmul(tf.transpose(x2), dy2)
            if self.bias is not None:
                dparams[1] = tf.reduce_sum(dy2, axis=0)
        dx = None
        if need_dx:
            dx = matmul_t(dy2, params[0])
            if len(shape) > 1:
                dx = tf.reshape(dx, [-1, *shape])
        return Grads((dx,), tuple(dparams))
