"""Sliding-window geometry shared by convolutions and pooling.

A window layer reads K = kh·kw shifted, strided views of its (padded) input
("patches", one ``tf.slice``/``tf.strided_slice`` each) and its backward pass
scatters K gradients back onto the input grid ("col2im"): each is dilated by
the stride (``PACK`` with zeros + ``RESHAPE``), padded to its offset
(``PAD``) and the K results are summed (``ADD_N``). Every op involved is a
TFLite builtin; ``Conv2DBackpropInput``/``MaxPoolGrad`` never appear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_export.layers.base import Tensor


@dataclass(frozen=True)
class Geometry:
    height: int
    width: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    out: tuple[int, int]

    @classmethod
    def build(
        cls,
        height: int,
        width: int,
        kernel: tuple[int, int],
        strides: tuple[int, int],
        padding: str,
    ) -> Geometry:
        """Keras's output size and padding split for 'valid' and 'same'."""
        pads: list[int] = []
        out: list[int] = []
        for size, k, s in ((height, kernel[0], strides[0]), (width, kernel[1], strides[1])):
            if padding == "valid":
                if size < k:
                    raise ValueError(f"window {k} is larger than the input ({size})")
                out.append((size - k) // s + 1)
                pads += [0, 0]
            else:
                n = math.ceil(size / s)
                total = max((n - 1) * s + k - size, 0)
                out.append(n)
                pads += [total // 2, total - total // 2]
        return cls(height, width, kernel, strides, (pads[0], pads[1], pads[2], pads[3]),
                   (out[0], out[1]))

    @property
    def padded(self) -> bool:
        return any(self.pads)

    @property
    def padded_size(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        return self.height + top + bottom, self.width + left + right

    @property
    def offsets(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]

    def pad(self, x: Tensor, value: float = 0.0) -> Tensor:
        if not self.padded:
            return x
        top, bottom, left, right = self.pads
        return tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]], constant_values=value)

    def patches(self, xp: Tensor) -> list[Tensor]:
        """K views ``[B, out_h, out_w, C]`` of the padded input, in (row, column) order."""
        ho, wo = self.out
        sh, sw = self.strides
        views = []
        for i, j in self.offsets:
            if sh == 1 and sw == 1:
                views.append(tf.slice(xp, [0, i, j, 0], [-1, ho, wo, -1]))
            else:
                views.append(
                    tf.strided_slice(
                        xp,
                        [0, i, j, 0],
                        [0, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, 0],
                        [1, sh, sw, 1],
                        begin_mask=0b1001,
                        end_mask=0b1001,
                    )
                )
        return views

    def col2im(self, grads: list[Tensor], channels: int) -> Tensor:
        """Sum K patch gradients back onto the unpadded input ``[B, H, W, C]``."""
        if self.strides == self.kernel:
            return self._interleave(grads, channels)
        hp, wp = self.padded_size
        dh = (self.out[0] - 1) * self.strides[0] + 1
        dw = (self.out[1] - 1) * self.strides[1] + 1
        placed = []
        for (i, j), grad in zip(self.offsets, grads, strict=True):
            g = self._dilate(grad, channels)
            placed.append(tf.pad(g, [[0, 0], [i, hp - i - dh], [j, wp - j - dw], [0, 0]]))
        total = placed[0] if len(placed) == 1 else tf.add_n(placed)
        if not self.padded:
            return total
        top, _, left, _ = self.pads
        return tf.slice(total, [0, top, left, 0], [-1, self.height, self.width, -1])

    def _interleave(self, grads: list[Tensor], channels: int) -> Tensor:
        """Non-overlapping windows (stride = window, e.g. 2×2 pooling): every input
        cell belongs to one window, so the K gradients are interleaved (PACK +
        RESHAPE) instead of zero-dilated, padded and summed."""
        ho, wo = self.out
        kh, kw = self.kernel
        rows = []
        for i in range(kh):
            row = grads[i * kw:(i + 1) * kw]
            rows.append(row[0] if kw == 1 else tf.reshape(
                tf.stack(row, axis=3), [-1, ho, wo * kw, channels]))
        grid = rows[0] if kh == 1 else tf.reshape(
            tf.stack(rows, axis=2), [-1, ho * kh, wo * kw, channels])
        hp, wp = self.padded_size
        if (hp, wp) != (ho * kh, wo * kw):  # cells no window covers get zero gradient
            grid = tf.pad(grid, [[0, 0], [0, hp - ho * kh], [0, wp - wo * kw], [0, 0]])
        if not self.padded:
            return grid
        top, _, left, _ = self.pads
        return tf.slice(grid, [0, top, left, 0], [-1, self.height, self.width, -1])

    def _dilate(self, g: Tensor, channels: int) -> Tensor:
        """Insert stride−1 zeros between rows and between columns."""
        ho, wo = self.out
        sh, sw = self.strides
        if sh > 1:
            zero = tf.zeros_like(g)
            g = tf.reshape(tf.stack([g] + [zero] * (sh - 1), axis=2), [-1, ho * sh, wo, channels])
            g = tf.slice(g, [0, 0, 0, 0], [-1, (ho - 1) * sh + 1, wo, channels])
        if sw > 1:
            rows = (ho - 1) * sh + 1
            zero = tf.zeros_like(g)
            g = tf.reshape(tf.stack([g] + [zero] * (sw - 1), axis=3), [-1, rows, wo * sw, channels])
            g = tf.slice(g, [0, 0, 0, 0], [-1, rows, (wo - 1) * sw + 1, channels])
        return g

    def window_counts(self) -> np.ndarray:
        """How many real (unpadded) input cells each output window covers."""
        ones = np.pad(np.ones((self.height, self.width), np.float32),
                      [self.pads[:2], self.pads[2:]])
        ho, wo = self.out
        sh, sw = self.strides
        kh, kw = self.kernel
        counts = np.zeros((ho, wo), np.float32)
        for a in range(ho):
            for b in range(wo):
                counts[a, b] = ones[a * sh:a * sh + kh, b * sw:b * sw + kw].sum()
        return counts.reshape(1, ho, wo, 1)
