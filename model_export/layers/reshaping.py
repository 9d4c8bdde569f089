"""Zero padding, cropping and nearest-neighbour up-sampling over the spatial axes.

Each works on the static non-batch shape; 1-D layers act on axis 1 of
``[B, T, C]``, 2-D layers on axes 1 and 2 of ``[B, H, W, C]``. Up-sampling
repeats with ``PACK`` + ``RESHAPE`` (never a rank-6 tensor: tflite-runtime
2.14 aborts on rank-6 broadcasts) and its gradient sums the copies back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf

from model_export.layers.base import Cache, Context, Grads, Param, Tensor, static_shape


@dataclass(frozen=True)
class Pad:
    """ZeroPadding1D/2D: ``pads`` is ((before, after), …) per spatial axis."""

    name: str
    pads: tuple[tuple[int, int], ...]

    def params(self) -> tuple[Param, ...]:
        return ()

    def _paddings(self) -> list[list[int]]:
        return [[0, 0], *[[a, b] for a, b in self.pads], [0, 0]]

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        return tf.pad(x, self._paddings()), (static_shape(x),)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        shape: tuple[int, ...] = cache[0]
        begin = [0, *[a for a, _ in self.pads], 0]
        return Grads((tf.slice(dy, begin, [-1, *shape]),), ())


@dataclass(frozen=True)
class Crop:
    """Cropping1D/2D: ``crops`` is ((before, after), …) per spatial axis."""

    name: str
    crops: tuple[tuple[int, int], ...]

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        shape = static_shape(x)
        size = [d - a - b for d, (a, b) in zip(shape, self.crops, strict=False)]
        begin = [0, *[a for a, _ in self.crops], 0]
        return tf.slice(x, begin, [-1, *size, shape[-1]]), ()

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        return Grads((tf.pad(dy, [[0, 0], *[[a, b] for a, b in self.crops], [0, 0]]),), ())


@dataclass(frozen=True)
class UpSample:
    """UpSampling1D (``sizes=(s,)``) or UpSampling2D (``sizes=(sh, sw)``), nearest."""

    name: str
    sizes: tuple[int, ...]

    def params(self) -> tuple[Param, ...]:
        return ()

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        shape = list(static_shape(x))
        y = x
        # Innermost spatial axis first: repeat each cell s times along it.
        for axis in range(len(self.sizes), 0, -1):
            s = self.sizes[axis - 1]
            if s == 1:
                continue
            y = tf.stack([y] * s, axis=axis + 1)
            shape[axis - 1] *= s
            y = tf.reshape(y, [-1, *shape])
        return y, (static_shape(x),)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        if not need_dx:
            return Grads((None,), ())
        shape = list(cache[0])
        out = [d * s for d, s in zip(shape, self.sizes, strict=False)] + shape[len(self.sizes):]
        g = dy
        for axis in range(1, len(self.sizes) + 1):
            s = self.sizes[axis - 1]
            if s == 1:
                continue
            split = [*out[:axis - 1], shape[axis - 1], s, *out[axis:]]
            g = tf.reduce_sum(tf.reshape(g, [-1, *split]), axis=axis + 1)
            out[axis - 1] = shape[axis - 1]
        return Grads((g,), ())
