"""SimpleRNN, GRU and LSTM, forward and backward through time, unrolled.

The model's sequence length is static, so the recurrence is unrolled into
one step per time index (docs/model_export.md explains why this and not a
``WHILE`` loop). Only the recurrent part is sequential:

- the input projection ``x·W + b`` of every time step is one matrix
  product on ``[B·T, F]`` before the loop;
- the backward pass walks the steps in reverse carrying ``dh`` (and the
  LSTM's ``dc``) through ``dz·Uᵀ``, keeping each step's gate gradient;
- then ``dW = Xᵀ·dZ``, ``dU = Hₜ₋₁ᵀ·dZ``, ``db = Σ dZ`` and ``dX = dZ·Wᵀ``
  are each one matrix product over all steps (the step at t = 0 starts
  from a zero state, so it has no recurrent product and adds nothing to dU).

Keras's numerics are kept: gate order (LSTM i, f, c, o; GRU z, r, h),
``activation``/``recurrent_activation``, GRU ``reset_after`` with its
separate input and recurrent biases, and ``go_backwards`` returning the
sequence in processing (reversed) order, as Keras does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

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

RECURRENT_ACTIVATIONS = ("tanh", "sigmoid", "hard_sigmoid", "relu", "linear")
CELLS = ("simple_rnn", "gru", "lstm")


def activate(kind: str, x: Tensor) -> Tensor:
    if kind == "tanh":
        return tf.tanh(x)
    if kind == "sigmoid":
        return tf.sigmoid(x)
    if kind == "hard_sigmoid":
        # Keras 3: relu6(x + 3) / 6.
        return tf.nn.relu6(x + 3.0) * (1.0 / 6.0)
    if kind == "relu":
        return tf.nn.relu(x)
    if kind == "linear":
        return x
    raise ValueError(kind)  # pragma: no cover - the translator checks the kind


def activation_grad(kind: str, y: Tensor, dy: Tensor) -> Tensor:
    """``dy · f'(x)`` written from the activation's output ``y = f(x)``."""
    if kind == "tanh":
        return dy * (1.0 - y * y)
    if kind == "sigmoid":
        return dy * y * (1.0 - y)
    if kind == "hard_sigmoid":
        inside = tf.cast(tf.logical_and(y > 0.0, y < 1.0), dy.dtype)
        return dy * inside * (1.0 / 6.0)
    if kind == "relu":
        return dy * tf.cast(y > 0.0, dy.dtype)
    return dy


def _rows_t_dot(lhs: list[Tensor], rhs: list[Tensor]) -> Tensor:
    """Σₜ lhsₜᵀ·rhsₜ as one GEMM over the stacked steps."""
    a = lhs[0] if len(lhs) == 1 else tf.concat(lhs, axis=0)
    b = rhs[0] if len(rhs) == 1 else tf.concat(rhs, axis=0)
    return tf.matmul(tf.transpose(a), b)


@dataclass
class _Accumulated:
    """Per-step terms of the recurrent weights' gradients, summed after the loop:
    dU = Σ lhsᵀ·grad per recurrent-kernel block, and the GRU's recurrent bias."""

    lhs: list[list[Tensor]] = field(default_factory=lambda: [[], []])
    grad: list[list[Tensor]] = field(default_factory=lambda: [[], []])
    recurrent_bias: list[Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Recurrent:
    """One direction of a recurrent layer over ``[B, T, F]``.

    ``cell`` is simple_rnn, gru or lstm; ``kernel`` is ``[F, g·U]``,
    ``recurrent_kernel`` ``[U, g·U]`` (g = 1, 3, 4 gates) and ``bias``
    ``[g·U]`` — or ``[2, 3U]`` (input and recurrent biases) for a GRU with
    ``reset_after``.
    """

    name: str
    cell: str
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray | None
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    reset_after: bool = True
    return_sequences: bool = False
    go_backwards: bool = False
    trainable: bool = True
    prefix: str = ""  # parameter-name prefix (a Bidirectional's "forward_"/"backward_")

    @property
    def units(self) -> int:
        return int(self.recurrent_kernel.shape[0])

    def params(self) -> tuple[Param, ...]:
        out = [Param(f"{self.prefix}kernel", self.kernel, self.trainable),
               Param(f"{self.prefix}recurrent_kernel", self.recurrent_kernel, self.trainable)]
        if self.bias is not None:
            out.append(Param(f"{self.prefix}bias", self.bias, self.trainable))
        return tuple(out)

    # --- forward -------------------------------------------------------------------------

    def _split_bias(self, params: Sequence[Tensor]) -> tuple[Tensor | None, Tensor | None]:
        if self.bias is None:
            return None, None
        bias = params[2]
        if self.cell == "gru" and self.reset_after:
            pair = tf.unstack(bias, axis=0)
            return pair[0], pair[1]
        return bias, None

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        x = inputs[0]
        steps, features = static_shape(x)
        kernel, recurrent = params[0], params[1]
        input_bias, recurrent_bias = self._split_bias(params)
        # All input projections at once: [B·T, F]·[F, g·U].
        x2 = tf.reshape(x, [-1, features])
        xw = tf.matmul(x2, kernel)
        if input_bias is not None:
            xw = tf.nn.bias_add(xw, input_bias)
        xw = tf.reshape(xw, [-1, steps, int(self.kernel.shape[1])])
        per_step = tf.unstack(xw, axis=1)
        if self.go_backwards:
            per_step = per_step[::-1]
        # Every step's h·U is a BATCH_MATMUL on the [U, g·U] kernel (TFLite's fast path
        # for a non-constant right-hand side; see matmul_t for the transposed product).
        blocks = self._blocks(recurrent)
        state: tuple[Tensor | None, Tensor | None] = (None, None)
        hs: list[Tensor] = []
        caches: list[Cache] = []
        for xw_t in per_step:
            h, c, cache = self._step(xw_t, state[0], state[1], blocks, recurrent_bias)
            state = (h, c)
            hs.append(h)
            caches.append(cache)
        y = tf.stack(hs, axis=1) if self.return_sequences else hs[-1]
        return y, (x2, caches, steps, features)

    def _blocks(self, recurrent: Tensor) -> list[Tensor]:
        """The recurrent kernel, split for a GRU without reset_after into U_zr and U_h."""
        if self.cell == "gru" and not self.reset_after:
            units = self.units
            return list(tf.split(recurrent, [2 * units, units], axis=1))
        return [recurrent]

    def _step(
        self, xw: Tensor, h: Tensor | None, c: Tensor | None, blocks: list[Tensor],
        recurrent_bias: Tensor | None,
    ) -> tuple[Tensor, Tensor | None, Cache]:
        units = self.units
        recurrent = blocks[0]
        act, rec = self.activation, self.recurrent_activation
        if self.cell == "simple_rnn":
            z = xw if h is None else xw + tf.matmul(h, recurrent)
            h_new = activate(act, z)
            return h_new, None, (h, h_new)
        if self.cell == "lstm":
            z = xw if h is None else xw + tf.matmul(h, recurrent)
            zi, zf, zc, zo = tf.split(z, 4, axis=1)
            i, f, g, o = activate(rec, zi), activate(rec, zf), activate(act, zc), activate(rec, zo)
            c_new = i * g if c is None else f * c + i * g
            ac = activate(act, c_new)
            return o * ac, c_new, (h, c, i, f, g, o, ac)
        # GRU
        xw_zr, xw_h = tf.split(xw, [2 * units, units], axis=1)
        if self.reset_after:
            if h is None:
                inner = recurrent_bias  # 0·U + b_rec
            else:
                inner = tf.matmul(h, recurrent)
                if recurrent_bias is not None:
                    inner = tf.nn.bias_add(inner, recurrent_bias)
            if inner is None:
                zr = activate(rec, xw_zr)
                z, r = tf.split(zr, 2, axis=1)
                ih = None
                hh = activate(act, xw_h)
            else:
                if h is None:  # the recurrent bias alone: a [3U] vector
                    inner_zr, ih = tf.split(tf.reshape(inner, [1, 3 * units]),
                                            [2 * units, units], axis=1)
                else:
                    inner_zr, ih = tf.split(inner, [2 * units, units], axis=1)
                zr = activate(rec, xw_zr + inner_zr)
                z, r = tf.split(zr, 2, axis=1)
                hh = activate(act, xw_h + r * ih)
            rh = None
        else:
            if h is None:
                zr = activate(rec, xw_zr)
                z, r = tf.split(zr, 2, axis=1)
                rh = None
                hh = activate(act, xw_h)
            else:
                zr = activate(rec, xw_zr + tf.matmul(h, blocks[0]))
                z, r = tf.split(zr, 2, axis=1)
                rh = r * h
                hh = activate(act, xw_h + tf.matmul(rh, blocks[1]))
            ih = None
        h_new = (1.0 - z) * hh if h is None else z * h + (1.0 - z) * hh
        return h_new, None, (h, z, r, hh, ih, rh)

    # --- backward ------------------------------------------------------------------------

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        x2, caches, steps, features = cache
        kernel, recurrent = params[0], params[1]
        blocks = self._blocks(recurrent)
        if self.return_sequences:
            douts: list[Tensor | None] = list(tf.unstack(dy, axis=1))
        else:
            douts = [None] * (steps - 1) + [dy]
        dxw: list[Tensor] = [None] * steps
        acc = _Accumulated()
        dh: Tensor | None = None
        dc: Tensor | None = None
        for t in range(steps - 1, -1, -1):
            incoming = douts[t]
            if dh is None:
                dh = incoming
            elif incoming is not None:
                dh = dh + incoming
            assert dh is not None  # the last step always has an output gradient
            dxw[t], dh, dc = self._step_backward(caches[t], dh, dc, blocks, acc)
        if self.go_backwards:
            dxw = dxw[::-1]  # processing order → time order, as x's rows
        dparams: list[Tensor | None] = [None] * len(self.params())
        dxw_rows = tf.reshape(tf.stack(dxw, axis=1), [-1, int(self.kernel.shape[1])])
        if self.trainable:
            dparams[0] = tf.matmul(tf.transpose(x2), dxw_rows)
            dparams[1] = self._recurrent_grad(acc)
            if self.bias is not None:
                dbias_in = tf.reduce_sum(dxw_rows, axis=0)
                if self.cell == "gru" and self.reset_after:
                    dbias_rec = tf.reduce_sum(tf.concat(acc.recurrent_bias, axis=0), axis=0)
                    dparams[2] = tf.stack([dbias_in, dbias_rec], axis=0)
                else:
                    dparams[2] = dbias_in
        dx = None
        if need_dx:
            dx = tf.reshape(matmul_t(dxw_rows, kernel), [-1, steps, features])
        return Grads((dx,), tuple(dparams))

    def _recurrent_grad(self, acc: _Accumulated) -> Tensor:
        shape = self.recurrent_kernel.shape
        if not acc.lhs[0]:  # one time step: the state was always zero
            return tf.zeros(shape, tf.float32)
        first = _rows_t_dot(acc.lhs[0], acc.grad[0])
        if not acc.grad[1]:
            return first
        return tf.concat([first, _rows_t_dot(acc.lhs[1], acc.grad[1])], axis=1)

    def _step_backward(
        self, cache: Cache, dh: Tensor, dc: Tensor | None, blocks: list[Tensor],
        acc: _Accumulated,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(gradient of this step's x·W + b, dh and dc for the step before)."""
        act, rec = self.activation, self.recurrent_activation
        recurrent = blocks[0]
        if self.cell == "simple_rnn":
            h_prev, h = cache
            dz = activation_grad(act, h, dh)
            if h_prev is None:
                return dz, None, None
            acc.lhs[0].append(h_prev)
            acc.grad[0].append(dz)
            return dz, matmul_t(dz, recurrent), None
        if self.cell == "lstm":
            h_prev, c_prev, i, f, g, o, ac = cache
            dcell = activation_grad(act, ac, dh * o)
            if dc is not None:
                dcell = dcell + dc
            dzo = activation_grad(rec, o, dh * ac)
            dzi = activation_grad(rec, i, dcell * g)
            dzc = activation_grad(act, g, dcell * i)
            # A zero initial cell state: the forget gate has nothing to forget.
            dzf = (tf.zeros_like(dzi) if c_prev is None
                   else activation_grad(rec, f, dcell * c_prev))
            dz = tf.concat([dzi, dzf, dzc, dzo], axis=1)
            if h_prev is None:
                return dz, None, None
            acc.lhs[0].append(h_prev)
            acc.grad[0].append(dz)
            return dz, matmul_t(dz, recurrent), dcell * f
        # GRU
        h_prev, z, r, hh, ih, rh = cache
        dzh = activation_grad(act, hh, dh * (1.0 - z))
        dz_gate = dh * (-hh if h_prev is None else h_prev - hh)
        dzz = activation_grad(rec, z, dz_gate)
        if self.reset_after:
            if ih is None:  # no recurrent bias and a zero state: r does not matter
                dzr = tf.zeros_like(dzz)
                dxw = tf.concat([dzz, dzr, dzh], axis=1)
                return dxw, None, None
            dzr = activation_grad(rec, r, dzh * ih)
            dxw = tf.concat([dzz, dzr, dzh], axis=1)
            dinner = tf.concat([dzz, dzr, dzh * r], axis=1)
            acc.recurrent_bias.append(dinner)
            if h_prev is None:
                return dxw, None, None
            acc.lhs[0].append(h_prev)
            acc.grad[0].append(dinner)
            dh_prev = dh * z + matmul_t(dinner, recurrent)
            return dxw, dh_prev, None
        if h_prev is None:
            dzr = tf.zeros_like(dzz)
            return tf.concat([dzz, dzr, dzh], axis=1), None, None
        recurrent_zr, recurrent_h = blocks
        drh = matmul_t(dzh, recurrent_h)
        dzr = activation_grad(rec, r, drh * h_prev)
        dzzr = tf.concat([dzz, dzr], axis=1)
        acc.lhs[0].append(h_prev)
        acc.grad[0].append(dzzr)
        acc.lhs[1].append(rh)
        acc.grad[1].append(dzh)
        dh_prev = dh * z + drh * r + matmul_t(dzzr, recurrent_zr)
        return tf.concat([dzzr, dzh], axis=1), dh_prev, None


MERGE_MODES = ("concat", "sum", "ave", "mul")


@dataclass(frozen=True)
class Bidirectional:
    """Keras's Bidirectional: a forward and a ``go_backwards`` layer, merged.

    With ``return_sequences`` the backward layer's output is flipped back to
    time order before merging, as Keras does.
    """

    name: str
    forward_layer: Recurrent
    backward_layer: Recurrent
    merge_mode: str = "concat"

    def params(self) -> tuple[Param, ...]:
        return self.forward_layer.params() + self.backward_layer.params()

    def _halves(self, params: Sequence[Tensor]) -> tuple[Sequence[Tensor], Sequence[Tensor]]:
        n = len(self.forward_layer.params())
        return params[:n], params[n:]

    def forward(
        self, params: Sequence[Tensor], inputs: Sequence[Tensor], ctx: Context
    ) -> tuple[Tensor, Cache]:
        fwd_params, bwd_params = self._halves(params)
        y, fwd_cache = self.forward_layer.forward(fwd_params, inputs, ctx)
        y_rev, bwd_cache = self.backward_layer.forward(bwd_params, inputs, ctx)
        if self.backward_layer.return_sequences:
            y_rev = tf.reverse(y_rev, axis=[1])
        if self.merge_mode == "concat":
            out = tf.concat([y, y_rev], axis=-1)
        elif self.merge_mode == "sum":
            out = y + y_rev
        elif self.merge_mode == "ave":
            out = (y + y_rev) * 0.5
        else:
            out = y * y_rev
        return out, (fwd_cache, bwd_cache, y, y_rev)

    def backward(
        self, params: Sequence[Tensor], cache: Cache, dy: Tensor, need_dx: bool
    ) -> Grads:
        fwd_params, bwd_params = self._halves(params)
        fwd_cache, bwd_cache, y, y_rev = cache
        if self.merge_mode == "concat":
            dy_f, dy_b = tf.split(
                dy, [self.forward_layer.units, self.backward_layer.units], axis=-1
            )
        elif self.merge_mode == "sum":
            dy_f = dy_b = dy
        elif self.merge_mode == "ave":
            dy_f = dy_b = dy * 0.5
        else:
            dy_f, dy_b = dy * y_rev, dy * y
        if self.backward_layer.return_sequences:
            dy_b = tf.reverse(dy_b, axis=[1])
        fwd = self.forward_layer.backward(fwd_params, fwd_cache, dy_f, need_dx)
        bwd = self.backward_layer.backward(bwd_params, bwd_cache, dy_b, need_dx)
        dx: Tensor | None = None
        if need_dx:
            dx = tf.add(fwd.inputs[0], bwd.inputs[0])
        return Grads((dx,), fwd.params + bwd.params)

