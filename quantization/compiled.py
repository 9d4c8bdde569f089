"""``decode_into`` and ``decode_many_into`` over the compiled kernels.

The frame is parsed as always (:func:`quantization.frame.parse`: checksum,
table, bounds, zstd); then one kernel call decodes and checks every index
and value section of every frame of a batch, and one call per tensor adds
them into the accumulator, frames in order. The arithmetic is the numpy
reference's, operation for operation (see :mod:`quantization.kernels`), so
the sums are the same bits whichever path a process uses — what lets crash
replay (``decode_into`` frame by frame) rebuild a live batched sum exactly.

Rejections are the reference's too: when a kernel refuses a section, the
frame goes through the numpy ``decode_into``, which raises the exact
:class:`CodecError` (and, should the kernel ever be stricter than the
reference, accepts the frame as the reference does).

The L2 norm is summed in another order than numpy's (sequentially per
tensor rather than numpy's blocked ``einsum``), so it may differ in the last
bits. Whether a frame passes ``max_norm`` is still decided exactly as the
reference decides: a norm within 1e-7 (relative) of the bound — far wider
than any two summation orders of float32 squares can disagree, ≈ n·2⁻⁵³ —
is recomputed with the reference's own function.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import MutableMapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from quantization import api, batch, frame, indexcoding
from quantization import clip as clipping
from quantization import kernels as k
from quantization.api import DecodeStats, Shapes
from quantization.errors import CodecError
from quantization.spec import CodecSpec

_FACTORS = np.array(
    [0.0] + [2.0 / ((1 << bits) - 1) for bits in range(1, 9)], dtype=np.float32
)
# Relative distance to max_norm within which the reference's norm decides.
_NORM_TIE = 1e-7


# Scratch buffers above this many bytes are not kept between calls.
_KEEP_BYTES = 16 << 20


class _Scratch(threading.local):
    """This thread's reusable output and body buffers. Fresh large arrays
    come from mmap, and their first touch page-faults: in a batch of 16
    top-1 % frames that cost as much as decoding them."""

    def __init__(self) -> None:
        self.buffers: dict[str, npt.NDArray[Any]] = {}

    def take(self, name: str, size: int, dtype: type[np.generic]) -> npt.NDArray[Any]:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.size < size:
            buffer = np.empty(max(size, 2 * (0 if buffer is None else buffer.size)), dtype)
            if buffer.nbytes <= _KEEP_BYTES:
                self.buffers[name] = buffer
        return buffer[:size]


_scratch = _Scratch()


class _Refused(Exception):
    """This batch cannot be taken whole: sum it frame by frame instead."""


class _Decoded:
    """Every tensor of a batch of parsed frames, decoded and checked."""

    def __init__(self, frames: Sequence[frame.Frame], expected: Shapes) -> None:
        self.frames = frames
        self.names = list(expected)
        column = {name: t for t, name in enumerate(self.names)}
        # Output layout: tensor by tensor, and within a tensor every frame's
        # values back to back in frame order (so are its positions; a dense
        # tensor has none), which is the order its segments are added in.
        values_per_tensor = [0] * len(self.names)
        positions_per_tensor = [0] * len(self.names)
        for f in frames:
            for e in f.entries:
                values_per_tensor[column[e.name]] += e.nnz
                if e.index_coding != indexcoding.DENSE:
                    positions_per_tensor[column[e.name]] += e.nnz
        value_at = [0] * len(self.names)
        position_at = [0] * len(self.names)
        for t in range(1, len(self.names)):
            value_at[t] = value_at[t - 1] + values_per_tensor[t - 1]
            position_at[t] = position_at[t - 1] + positions_per_tensor[t - 1]
        self.values = _scratch.take("values", sum(values_per_tensor), np.float32)
        self.positions = _scratch.take("positions", sum(positions_per_tensor), np.int64)
        self.segments: list[list[list[int]]] = [[] for _ in self.names]
        rows: list[list[int]] = []
        body_at = 0
        for i, f in enumerate(frames):
            at = body_at
            for e in f.entries:
                t = column[e.name]
                sparse = e.index_coding != indexcoding.DENSE
                poff = position_at[t] if sparse else -1
                rows.append([
                    e.size, e.index_coding, e.value_coding, e.bits, e.scale_dtype,
                    e.chunk_size, e.nnz, at, e.index_len, at + e.index_len, e.value_len,
                    poff, value_at[t],
                ])
                self.segments[t].append([value_at[t], poff, e.nnz, i])
                value_at[t] += e.nnz
                if sparse:
                    position_at[t] += e.nnz
                at += e.index_len + e.value_len
            body_at += len(f.body)
        self.meta = np.array(rows, dtype=np.int64).reshape(-1, k.COLUMNS)
        self.sumsq = np.zeros(len(rows), dtype=np.float64)
        # One writeable buffer, even for one frame: one kernel specialisation.
        body = _scratch.take("body", body_at, np.uint8)
        at = 0
        for f in frames:
            body[at : at + len(f.body)] = np.frombuffer(f.body, dtype=np.uint8)
            at += len(f.body)
        self.failed = int(
            k.decode_rows(body, self.meta, self.positions, self.values, self.sumsq, _FACTORS)
        )

    def norm(self, i: int, row_start: int) -> float:
        """Frame i's L2 norm from its rows' sums of squares, in table order."""
        count = len(self.frames[i].entries)
        return math.sqrt(sum(float(s) for s in self.sumsq[row_start : row_start + count]))

    def frame_values(self, i: int) -> list[npt.NDArray[np.float32]]:
        """Frame i's decoded values per tensor, in its table order (views)."""
        out = []
        for e in self.frames[i].entries:
            segment = self.segments[self.names.index(e.name)]
            value_at, _, count, _ = next(s for s in segment if s[3] == i)
            out.append(self.values[value_at : value_at + count])
        return out

    def within(self, max_norm: float) -> list[float]:
        """Every frame's norm; raises _Refused if one is above ``max_norm``
        as the reference computes it."""
        norms = []
        row = 0
        for i, f in enumerate(self.frames):
            norm = self.norm(i, row)
            row += len(f.entries)
            if abs(norm - max_norm) <= _NORM_TIE * max_norm:
                norm = clipping.l2_norm(self.frame_values(i))
            if norm > max_norm:
                raise _Refused
            norms.append(norm)
        return norms

    def add_into(
        self,
        kernels: ModuleType,
        accumulator: MutableMapping[str, npt.NDArray[np.floating]],
        weights: Sequence[float],
    ) -> None:
        for t, name in enumerate(self.names):
            acc = accumulator[name]
            # The reference's ``weight`` in the accumulator's precision.
            scale = np.array(weights, dtype=acc.dtype)
            segments = np.array(self.segments[t], dtype=np.int64).reshape(-1, 4)
            if not kernels.scatter(acc.reshape(-1), self.positions, self.values, segments, scale):
                # Unreachable for parsed frames (checked against the same
                # shapes); refusing keeps a bad offset from writing anywhere.
                raise CodecError(f"tensor {name!r}: decoded positions do not fit the accumulator")


def _check_weight(weight: object) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating)):
        raise CodecError(f"weight must be a number, got {weight!r}")
    if not math.isfinite(weight):
        raise CodecError(f"weight must be finite, got {weight}")


def decode_into(
    payload: bytes | bytearray | memoryview,
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weight: float,
    *,
    expected: Shapes,
    max_norm: float | None = None,
) -> DecodeStats:
    """:func:`quantization.api.decode_into_numpy`, compiled: same contract, same sums."""
    started = time.perf_counter()
    _check_weight(weight)
    if max_norm is not None and not (max_norm >= 0):
        raise CodecError(f"max_norm must be a non-negative number, got {max_norm}")
    api._check_accumulator(accumulator, expected)
    parsed = frame.parse(payload, expected=expected, max_decoded_bytes=None)
    if parsed.kind != frame.UPDATE:
        return api.decode_into_numpy(
            payload, accumulator, weight, expected=expected, max_norm=max_norm
        )
    decoded = _Decoded([parsed], expected)
    try:
        if decoded.failed:
            raise _Refused
        norm = decoded.norm(0, 0)
        if max_norm is not None:
            (norm,) = decoded.within(max_norm)
    except _Refused:
        # The reference raises the exact error (or agrees to add the frame).
        return api.decode_into_numpy(
            payload, accumulator, weight, expected=expected, max_norm=max_norm
        )
    decoded.add_into(k, accumulator, [weight])
    return DecodeStats(
        l2_norm=norm,
        nnz=sum(e.nnz for e in parsed.entries),
        parameters=sum(e.size for e in parsed.entries),
        payload_bytes=parsed.payload_bytes,
        tensors={e.name: e.nnz for e in parsed.entries},
        seconds=time.perf_counter() - started,
    )


def decode_many_into(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    *,
    expected: Shapes,
    max_norm: float | None = None,
    limit: int | None = None,
) -> list[CodecError | None]:
    """:func:`quantization.batch.decode_many_into_numpy`, compiled: same
    sub-batches, same outcomes, same sums."""
    return batch.run_batches(
        payloads, accumulator, weights, expected=expected, max_norm=max_norm, limit=limit,
        whole=whole, single=decode_into,
    )


def whole(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    expected: Shapes,
    max_norm: float | None,
) -> bool:
    """Add the whole sub-batch, or nothing and False (go frame by frame)."""
    try:
        for w in weights:
            _check_weight(w)
        if max_norm is not None and not (max_norm >= 0):
            return False
        api._check_accumulator(accumulator, expected)
        parsed = [frame.parse(p, expected=expected, max_decoded_bytes=None) for p in payloads]
    except CodecError:
        return False
    if any(f.kind != frame.UPDATE for f in parsed):
        return False
    decoded = _Decoded(parsed, expected)
    if decoded.failed:
        return False
    if max_norm is not None:
        try:
            decoded.within(max_norm)
        except _Refused:
            return False
    decoded.add_into(k, accumulator, weights)
    return True


def warm_up() -> None:
    """Compile (or load from the cache) every kernel specialisation the
    decoders use: float32 and float64 accumulators, every coding."""
    rng = np.random.default_rng(0)
    update = {"a": (rng.standard_normal(600) * 1e-3).astype(np.float32),
              "b": (rng.standard_normal(40) * 1e-3).astype(np.float32)}
    specs = [
        CodecSpec(density=0.05, bits=8, index_coding="rice"),
        CodecSpec(density=0.05, bits=3, index_coding="varint"),
        CodecSpec(density=0.5, values="float16", index_coding="bitmap"),
        CodecSpec(),
    ]
    frames = [api.encode(update, spec, seed=0).payload for spec in specs]
    shapes = {name: value.shape for name, value in update.items()}
    for dtype in (np.float32, np.float64):
        acc: dict[str, Any] = {name: np.zeros(s, dtype) for name, s in shapes.items()}
        for payload in frames:
            decode_into(payload, acc, 1.0, expected=shapes, max_norm=1.0)
        decode_many_into(frames, acc, [0.5] * len(frames), expected=shapes, max_norm=1.0)
