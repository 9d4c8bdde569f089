"""Multi-head self-attention and a trainable position embedding.

Self-attention on ``[B, T, D]`` (Keras's MultiHeadAttention with query =
value = key, optionally causal): the Q, K and V projections are each one
matrix product on ``[B·T, D]``; the scores ``q·kᵀ/√d`` and the weighted
values are ``BATCH_MATMUL``s on ``[B, H, T, ·]`` (rank 4 — never rank 6,
which tflite-runtime 2.14 cannot broadcast). The causal mask is a constant
``[T, T]`` of 0 and −10⁹ added to the scores (Keras writes −10⁹ into the
masked scores; both give exactly zero weight after the softmax).

Backward: ``dV = Aᵀ·dC``, ``dA = dC·Vᵀ``, the softmax gradient
``dS = A ⊙ (dA − Σ dA ⊙ A)`` (masked entries have A = 0, so they get none),
``dQ = dS·K/√d``, ``dK = dSᵀ·Q/√d``, then the projections' ``xᵀ·d·``
products; the input gradient sums the three paths. The key projection's
bias has an identically zero gradient and is exported frozen.
"""

from __future__ import annotations

import math
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
    matmul_t,
    static_shape,
)

MASKED = -1e9  # Keras's _large_negative_number for float32


@dataclass(frozen=True)
class SelfAttention:
    """Keras MultiHeadAttention kernels: q/k/v ``[D, H, K]`` (+ bias ``[H, K]``),
    output ``[H, V, D]`` (+ bias ``[D]``)."""

    name: str
    query_kernel: np.ndarray
    key_kernel: np.ndarray
    value_kernel: np.ndarray
    output_kernel: np.ndarray
    query_bias: np.ndarray | None
    key_bias: np.ndarray | None
    value_bias: np.ndarray | None
    output_bias: np.ndarray | None
    causal: bool = False
    trainable: bool = True

    PARTS = ("query", "key", "value", "output")

    def params(self) -> tuple[Param, ...]:
        out = []
        for part in self.PARTS:
            out.append(Param(f"{part}_kernel", getattr(self, f"{part}_kernel"), self.trainable))
            bias = getattr(self, f"{part}_bias")
            if bias is not None:
                # The key bias adds the same q·b to every score of a query, which the
                # softmax cancels: its gradient is exactly zero, so it is exported
                # frozen (training it would only move it by rounding noise, which
                # Adam would amplify into full steps).
                out.append(Param(f"{part}_bias", bias, self.trainable and part != "key"))
        return tuple(out)

    def _named(self, params: Sequence[Tensor]) -> dict[str, Tensor]:
        return {p.name: v for p, v in zip(self.params(), params, strict=True)}

    @property
    def heads(self) -> int:
        return int(self.query_kernel.shape[1])

    @property
    def key_dim(self) -> int:
        return int(self.query_kernel.shape[2])

    @property
    def value_dim(self) -> int:
        return int(self.value_kernel.shape[2])

    def _project(self, w: dict[str, Tensor], part: str, x2: Tensor, steps: int) -> Tensor:
        """x·W + b → [B, H, T, d]."""
        kernel = getattr(self, f"{part}_kernel")
        dim_in, heads, dim = kernel.shape
        y = tf.matmul(x2, tf.reshape(w[f"{part}_kernel"], [dim_in, heads * dim]))
        if f"{part}_bias" in w:
            y = tf.nn.bias_add(y, tf.reshape(w[f"{part}_bias"], [heads * dim]))
        return tf.transpose(tf.reshape(y, [-1, steps, heads, dim]), [0, 2, 1, 3])

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        steps, dim_in = static_shape(x)
        w = self._named(params)
        x2 = tf.reshape(x, [-1, dim_in])
        q = self._project(w, "query", x2, steps) * (1.0 / math.sqrt(self.key_dim))
        k = self._project(w, "key", x2, steps)
        v = self._project(w, "value", x2, steps)
        scores = tf.matmul(q, k, transpose_b=True)  # [B, H, T, S]
        if self.causal:
            mask = np.triu(np.full((steps, steps), MASKED, np.float32), k=1)
            scores = scores + mask
        attn = tf.nn.softmax(scores, axis=-1)
        context = tf.matmul(attn, v)  # [B, H, T, V]
        heads, vdim = self.heads, self.value_dim
        ctx2 = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, heads * vdim])
        out_dim = int(self.output_kernel.shape[2])
        y = tf.matmul(ctx2, tf.reshape(w["output_kernel"], [heads * vdim, out_dim]))
        if "output_bias" in w:
            y = tf.nn.bias_add(y, w["output_bias"])
        return tf.reshape(y, [-1, steps, out_dim]), (x2, q, k, v, attn, ctx2, steps, dim_in)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        x2, q, k, v, attn, ctx2, steps, dim_in = cache
        w = self._named(params)
        heads, kdim, vdim = self.heads, self.key_dim, self.value_dim
        out_dim = int(self.output_kernel.shape[2])
        dy2 = tf.reshape(dy, [-1, out_dim])
        grads: dict[str, Tensor] = {}
        if self.trainable:
            grads["output_kernel"] = tf.reshape(
                tf.matmul(tf.transpose(ctx2), dy2), self.output_kernel.shape
            )
            if "output_bias" in w:
                grads["output_bias"] = tf.reduce_sum(dy2, axis=0)
        dctx2 = matmul_t(dy2, tf.reshape(w["output_kernel"], [heads * vdim, out_dim]))
        dcontext = tf.transpose(tf.reshape(dctx2, [-1, steps, heads, vdim]), [0, 2, 1, 3])
        dattn = tf.matmul(dcontext, v, transpose_b=True)  # [B, H, T, S]
        dv = tf.matmul(attn, dcontext, transpose_a=True)  # [B, H, S, V]
        dscores = attn * (dattn - tf.reduce_sum(dattn * attn, axis=-1, keepdims=True))
        scale = 1.0 / math.sqrt(kdim)
        dq = tf.matmul(dscores, k) * scale  # q was scaled after its projection
        dk = tf.matmul(dscores, q, transpose_a=True)  # q already carries the scale
        dx_terms = []
        for part, d, dim in (("query", dq, kdim), ("key", dk, kdim), ("value", dv, vdim)):
            d2 = tf.reshape(tf.transpose(d, [0, 2, 1, 3]), [-1, heads * dim])
            kernel = tf.reshape(w[f"{part}_kernel"], [dim_in, heads * dim])
            if self.trainable:
                grads[f"{part}_kernel"] = tf.reshape(
                    tf.matmul(tf.transpose(x2), d2), getattr(self, f"{part}_kernel").shape
                )
                if f"{part}_bias" in w and part != "key":
                    grads[f"{part}_bias"] = tf.reshape(tf.reduce_sum(d2, axis=0), [heads, dim])
            if need_dx:
                dx_terms.append(matmul_t(d2, kernel))
        dx = tf.reshape(tf.add_n(dx_terms), [-1, steps, dim_in]) if need_dx else None
        return Grads((dx,), tuple(grads.get(p.name) for p in self.params()))


@dataclass(frozen=True)
class PositionEmbedding:
    """``y = x + E[:T]`` with a trainable ``E`` of ``[sequence_length, D]``;
    ``dE = Σ_batch dy`` (zero beyond T), ``dx = dy``."""

    name: str
    embeddings: np.ndarray
    trainable: bool = True

    def params(self) -> tuple[Param, ...]:
        return (Param("embeddings", self.embeddings, self.trainable),)

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        steps, dim = static_shape(x)
        table = params[0]
        if steps != self.embeddings.shape[0]:
            table = tf.slice(table, [0, 0], [steps, dim])
        return x + table, (steps,)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        steps: int = cache[0]
        dtable = None
        if self.trainable:
            dtable = tf.reduce_sum(dy, axis=0)
            extra = int(self.embeddings.shape[0]) - steps
            if extra:
                dtable = tf.pad(dtable, [[0, extra], [0, 0]])
        return Grads((dy if need_dx else None,), (dtable,))
