"""Convolutions (Conv1D, Conv2D, DepthwiseConv2D) and pooling as patch arithmetic.

1-D layers run as 2-D ones on ``[B, 1, L, C]``. A Conv is one matrix
product: the K patches are concatenated along channels (``[N, K·C]``) and
multiplied by the kernel reshaped to ``[K·C, filters]``; its weight gradient
is ``patchesᵀ·dy`` and its input gradient ``dy·kernelᵀ`` split back into K
patch gradients for :meth:`Geometry.col2im`.
"""

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
    static_shape,
)
from model_export.layers.windows import Geometry


def _to_2d(x: Tensor, rank: int) -> tuple[Tensor, tuple[int, int, int]]:
    shape = static_shape(x)
    if rank == 1:
        length, channels = shape
        return tf.reshape(x, [-1, 1, length, channels]), (1, length, channels)
    height, width, channels = shape
    return x, (height, width, channels)


def _from_2d(y: Tensor, rank: int, shape: tuple[int, ...]) -> Tensor:
    if rank == 1:
        return tf.reshape(y, [-1, shape[1], shape[2]])
    return y


@dataclass(frozen=True)
class Conv:
    """Conv1D (``rank=1``, kernel ``[k, cin, cout]``) or Conv2D (kernel ``[kh, kw, cin, cout]``)."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray | None
    strides: tuple[int, int]
    padding: str
    rank: int
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        return kernel_and_bias("kernel", self.kernel, self.bias, self.trainable)

    @property
    def window(self) -> tuple[int, int]:
        return (1, self.kernel.shape[0]) if self.rank == 1 else self.kernel.shape[:2]

    def geometry(self, height: int, width: int) -> Geometry:
        return Geometry.build(height, width, self.window, self.strides, self.padding)

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x, (h, w, c) = _to_2d(inputs[0], self.rank)
        geo = self.geometry(h, w)
        xp = geo.pad(x)
        filters = self.kernel.shape[-1]
        kh, kw = self.window
        # The builtin CONV_2D accepts a non-constant (variable) filter.
        kernel = tf.reshape(params[0], [kh, kw, c, filters])
        sh, sw = self.strides
        y = tf.nn.conv2d(xp, kernel, strides=[1, sh, sw, 1], padding="VALID")
        if self.bias is not None:
            y = tf.nn.bias_add(y, params[1])
        wo = geo.out[1]
        return _from_2d(y, self.rank, (1, wo, filters)), (xp, geo, c)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        xp, geo, c = cache
        k = len(geo.offsets)
        filters = self.kernel.shape[-1]
        ho, wo = geo.out
        dy2 = tf.reshape(dy, [-1, filters])
        dparams: list[Tensor | None] = [None] * len(self.params())
        if self.trainable:
            # dW[tap] = viewᵀ·dy for each of the K shifted views of the padded
            # input: one batched matmul over the views stacked on a leading axis
            # (whole-tensor copies; concatenating along thin channels is slow).
            views = tf.reshape(tf.stack(geo.patches(xp), axis=0), [k, -1, c])
            # [K, N, C] → [K·C, N]: a plain 2-D product runs as a GEMM, where a
            # batched product with an adjoint operand does not.
            rows = tf.reshape(tf.transpose(views, [0, 2, 1]), [k * c, -1])
            dparams[0] = tf.reshape(tf.matmul(rows, dy2), self.kernel.shape)
            if self.bias is not None:
                dparams[1] = tf.reduce_sum(dy2, axis=0)
        dx = None
        if need_dx:
            # The input gradient of a convolution is a transposed convolution
            # (builtin TRANSPOSE_CONV, which accepts the variable kernel) onto
            # the padded grid, cropped back to the input.
            kh, kw = self.window
            sh, sw = self.strides
            hp, wp = geo.padded_size
            kernel = tf.reshape(params[0], [kh, kw, c, filters])
            shape = tf.stack([tf.shape(dy2)[0] // (ho * wo), hp, wp, c])
            dxp = tf.nn.conv2d_transpose(
                tf.reshape(dy2, [-1, ho, wo, filters]), kernel, shape,
                strides=[1, sh, sw, 1], padding="VALID",
            )
            if geo.padded:
                top, _, left, _ = geo.pads
                dxp = tf.slice(dxp, [0, top, left, 0], [-1, geo.height, geo.width, c])
            dx = _from_2d(tf.reshape(dxp, [-1, geo.height, geo.width, c]), self.rank,
                          (1, geo.width, c))
        return Grads((dx,), tuple(dparams))


@dataclass(frozen=True)
class DepthwiseConv:
    """DepthwiseConv2D, kernel ``[kh, kw, C, multiplier]``; output channel ``c·m + q``."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray | None
    strides: tuple[int, int]
    padding: str
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        return kernel_and_bias("depthwise_kernel", self.kernel, self.bias, self.trainable)

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        h, w, c = static_shape(x)
        kh, kw, _, m = self.kernel.shape
        geo = Geometry.build(h, w, (kh, kw), self.strides, self.padding)
        cols = geo.patches(geo.pad(x))
        if m > 1:
            # Repeat each input channel m times so that channel c·m+q meets kernel[..., c, q].
            repeat = np.repeat(np.arange(c, dtype=np.int32), m)
            cols = [tf.gather(col, repeat, axis=3) for col in cols]
        kernels = tf.unstack(tf.reshape(params[0], [kh * kw, c * m]), axis=0)
        terms = [col * kern for col, kern in zip(cols, kernels, strict=True)]
        y = terms[0] if len(terms) == 1 else tf.add_n(terms)
        if self.bias is not None:
            y = tf.nn.bias_add(y, params[1])
        return y, (cols, kernels, geo, c)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        cols, kernels, geo, c = cache
        m = self.kernel.shape[3]
        dparams: list[Tensor | None] = [None] * len(self.params())
        if self.trainable:
            dk = [tf.reduce_sum(dy * col, axis=[0, 1, 2]) for col in cols]
            dparams[0] = tf.reshape(tf.stack(dk, axis=0), self.kernel.shape)
            if self.bias is not None:
                dparams[1] = tf.reduce_sum(dy, axis=[0, 1, 2])
        dx = None
        if need_dx:
            ho, wo = geo.out
            grads = []
            for kern in kernels:
                g = dy * kern
                if m > 1:
                    g = tf.reshape(
                        tf.reduce_sum(tf.reshape(g, [-1, c, m]), axis=2), [-1, ho, wo, c]
                    )
                grads.append(g)
            dx = geo.col2im(grads, c)
        return Grads((dx,), tuple(dparams))


@dataclass(frozen=True)
class Pool:
    """Max or average pooling, 1-D or 2-D, 'valid' or 'same'.

    Max pooling routes the gradient to the first maximum of each window in
    row-major order, as TensorFlow's MaxPoolGrad does; average pooling with
    'same' padding divides by the number of real cells, as Keras does.
    """

    name: str
    kind: str  # "max" | "avg"
    pool: tuple[int, int]
    strides: tuple[int, int]
    padding: str
    rank: int

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x, (h, w, c) = _to_2d(inputs[0], self.rank)
        geo = Geometry.build(h, w, self.pool, self.strides, self.padding)
        if self.kind == "max":
            cols = geo.patches(geo.pad(x, float(np.finfo(np.float32).min)))
            y = cols[0]
            for col in cols[1:]:
                y = tf.maximum(y, col)
            cache: Cache = (cols, y, geo, c)
        else:
            cols = geo.patches(geo.pad(x))
            total = cols[0] if len(cols) == 1 else tf.add_n(cols)
            scale = 1.0 / geo.window_counts() if geo.padded else 1.0 / len(cols)
            y = total * scale
            cache = (None, None, geo, c, scale)
        wo = geo.out[1]
        return _from_2d(y, self.rank, (1, wo, c)), cache

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        geo: Geometry = cache[2]
        c: int = cache[3]
        ho, wo = geo.out
        dy = tf.reshape(dy, [-1, ho, wo, c])
        if self.kind == "max":
            cols, y = cache[0], cache[1]
            grads = []
            taken = None
            for col in cols:
                hit = tf.cast(tf.equal(col, y), dy.dtype)
                if taken is None:
                    first, taken = hit, hit
                else:
                    first = hit * (1.0 - taken)
                    taken = taken + first
                grads.append(first * dy)
        else:
            share = dy * cache[4]
            grads = [share] * len(geo.offsets)
        return Grads((_from_2d(geo.col2im(grads, c), self.rank, (1, geo.width, c)),), ())
