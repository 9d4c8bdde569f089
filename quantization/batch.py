"""Summing many update frames at once: :func:`decode_many_into`.

A server folds updates into its running sum in batches (every upload that
arrived while the previous batch was being summed). :func:`decode_into` per
frame costs about a hundred small numpy calls whatever the frame's size (two
tensors × index decoding, dequantization, checks, scatter), which is most of
its time for a top-1 % update of a 1M-parameter model. Here each step runs
once per tensor over the values of every frame in the batch.

Exactly the same result as ``decode_into`` frame by frame, bit for bit:

- positions are integer arithmetic; values are the same float32 operations
  on the same operands (``code × step − scale``), element by element;
- ``np.add.at`` applies its additions in index-array order, and the batch's
  arrays are the frames' arrays concatenated in frame order, so every
  position of the accumulator receives the same additions in the same order.

All or nothing, like ``decode_into``: every frame of the batch is validated
before anything is added. If any check fails — or a frame uses a coding this
path does not batch — the batch is summed frame by frame with
``decode_into`` instead, which also gives each bad frame its exact error; a
stream of bad frames therefore costs at most one wasted batched attempt each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from quantization import accel, bitpack, frame, indexcoding, stochastic
from quantization import clip as clipping
from quantization.api import (
    DecodeStats,
    Shapes,
    _check_accumulator,
    _values,
    decode_into_numpy,
)
from quantization.errors import CodecError

# Rice parameters up to 8: a remainder then spans at most two bytes.
_MAX_BATCH_K = 8
# Frames summed together at most (unless one frame is larger): about 25 top-1 %
# updates of a 1M-parameter model at 8 bits; larger batches gain nothing more.
_BATCH_BYTES = 512 << 10


class _Unbatched(Exception):
    """A frame this path does not take (or a check failed): go frame by frame."""


Whole = Callable[
    [
        Sequence[bytes | bytearray | memoryview],
        MutableMapping[str, npt.NDArray[np.floating]],
        Sequence[float],
        Shapes,
        float | None,
    ],
    bool,
]
Single = Callable[..., object]


def decode_many_into(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    *,
    expected: Shapes,
    max_norm: float | None = None,
    limit: int | None = None,
) -> list[CodecError | None]:
    """Add ``weights[i] × update i`` into ``accumulator`` for each frame in
    order, as ``decode_into`` would one after the other: a frame that fails
    validation is skipped (its entry is its :class:`CodecError`) and changes
    nothing; after ``limit`` frames have been added the rest are left
    unprocessed. Returns one entry per processed frame: None (added) or the
    error.

    Runs the compiled kernels where :mod:`quantization.accel` chose them,
    else :func:`decode_many_into_numpy`; both give the same bits."""
    return run_batches(
        payloads, accumulator, weights, expected=expected, max_norm=max_norm, limit=limit,
        whole=_whole, single=_fallback,
    )


def _whole(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    expected: Shapes,
    max_norm: float | None,
) -> bool:
    """One sub-batch taken whole on this process's path (False: it was not)."""
    fast = accel.compiled()
    if fast is None:
        return _whole_numpy(payloads, accumulator, weights, expected, max_norm)
    taken: bool = fast.whole(payloads, accumulator, weights, expected, max_norm)
    return taken


def decode_into(
    payload: bytes | bytearray | memoryview,
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weight: float,
    *,
    expected: Shapes,
    max_norm: float | None = None,
) -> DecodeStats:
    """A frame of a batch that could not be taken whole, summed alone on
    this process's path (compiled or numpy)."""
    fast = accel.compiled()
    if fast is None:
        return decode_into_numpy(
            payload, accumulator, weight, expected=expected, max_norm=max_norm
        )
    stats: DecodeStats = fast.decode_into(
        payload, accumulator, weight, expected=expected, max_norm=max_norm
    )
    return stats


def _fallback(*args: Any, **kwargs: Any) -> object:
    # Looked up when called, so a test can replace ``decode_into`` to check
    # that a batch was taken whole.
    return decode_into(*args, **kwargs)


def decode_many_into_numpy(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    *,
    expected: Shapes,
    max_norm: float | None = None,
    limit: int | None = None,
) -> list[CodecError | None]:
    """:func:`decode_many_into` in numpy: the reference."""
    return run_batches(
        payloads, accumulator, weights, expected=expected, max_norm=max_norm, limit=limit,
        whole=_whole_numpy, single=decode_into_numpy,
    )


def run_batches(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    *,
    expected: Shapes,
    max_norm: float | None,
    limit: int | None,
    whole: Whole,
    single: Single,
) -> list[CodecError | None]:
    """Cut the frames into sub-batches; add each with ``whole`` (all or
    nothing, False when it did nothing), else frame by frame with ``single``
    (a ``decode_into``)."""
    if len(weights) != len(payloads):
        raise ValueError(f"{len(payloads)} frames but {len(weights)} weights")
    outcomes: list[CodecError | None] = []
    added = 0
    start = 0
    while start < len(payloads) and (limit is None or added < limit):
        # Sub-batches of at most _BATCH_BYTES of frames (or one frame): the
        # temporaries stay a few times the values being summed, never a
        # multiple of the model however many dense frames are queued.
        end, size = start, 0
        while end < len(payloads) and (end == start or size + len(payloads[end]) <= _BATCH_BYTES):
            if limit is not None and end - start >= limit - added:
                break
            size += len(payloads[end])
            end += 1
        part_payloads, part_weights = payloads[start:end], weights[start:end]
        if whole(part_payloads, accumulator, part_weights, expected, max_norm):
            part: list[CodecError | None] = [None] * len(part_payloads)
        else:
            part = _one_by_one(
                part_payloads, accumulator, part_weights, expected=expected, max_norm=max_norm,
                limit=None if limit is None else limit - added, single=single,
            )
        outcomes += part
        added += part.count(None)
        start += len(part)
    return outcomes


def _whole_numpy(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    expected: Shapes,
    max_norm: float | None,
) -> bool:
    try:
        plan = _plan(payloads, accumulator, weights, expected, max_norm)
    except (_Unbatched, CodecError):
        return False
    for name, indices, scaled in plan:
        np.add.at(accumulator[name].reshape(-1), indices, scaled)
    return True


def _one_by_one(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    *,
    expected: Shapes,
    max_norm: float | None,
    limit: int | None,
    single: Single,
) -> list[CodecError | None]:
    outcomes: list[CodecError | None] = []
    added = 0
    for payload, weight in zip(payloads, weights, strict=True):
        if limit is not None and added >= limit:
            break
        try:
            single(payload, accumulator, weight, expected=expected, max_norm=max_norm)
        except CodecError as exc:
            outcomes.append(exc)
            continue
        outcomes.append(None)
        added += 1
    return outcomes


def _plan(
    payloads: Sequence[bytes | bytearray | memoryview],
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weights: Sequence[float],
    expected: Shapes,
    max_norm: float | None,
) -> list[tuple[str, npt.NDArray[np.int64], npt.NDArray[Any]]]:
    """Validate every frame; per tensor, the positions and scaled values to add."""
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float, np.floating)):
            raise _Unbatched
        if not math.isfinite(w):
            raise _Unbatched
    if max_norm is not None and not (max_norm >= 0):
        raise _Unbatched
    _check_accumulator(accumulator, expected)
    parsed = [frame.parse(p, expected=expected, max_decoded_bytes=None) for p in payloads]
    sections: list[dict[str, tuple[frame.Entry, memoryview, memoryview]]] = []
    for f in parsed:
        if f.kind != frame.UPDATE:
            raise _Unbatched
        sections.append({e.name: (e, ix, vs) for e, ix, vs in f.sections()})
    plan = []
    values_by_frame: list[dict[str, npt.NDArray[np.float32]]] = [{} for _ in parsed]
    for name in expected:
        rows = [s[name] for s in sections]
        if any(e.value_coding == frame.XOR32 for e, _, _ in rows):
            raise _Unbatched
        counts = np.array([e.nnz for e, _, _ in rows], dtype=np.int64)
        indices = _positions(rows, counts)
        values = _dequantized(rows, counts)
        if not np.all(np.isfinite(values)):
            raise _Unbatched
        if max_norm is not None:
            for i, end in enumerate(np.cumsum(counts).tolist()):
                values_by_frame[i][name] = values[end - int(counts[i]) : end]
        acc = accumulator[name]
        scale = np.repeat(np.array(weights, dtype=acc.dtype), counts)
        # The same product as decode_into's ``values.astype(acc.dtype) × weight``.
        scaled = values.astype(acc.dtype, copy=False) * scale
        plan.append((name, indices, scaled))
    if max_norm is not None:
        for f, by_name in zip(parsed, values_by_frame, strict=True):
            # The frame's own tensor order: the norm is the same float sum.
            norm = clipping.l2_norm(by_name[e.name] for e in f.entries)
            if norm > max_norm:
                raise _Unbatched
    return plan


def _positions(
    rows: list[tuple[frame.Entry, memoryview, memoryview]], counts: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Every frame's positions for one tensor, concatenated in frame order."""
    rice = [
        e.index_coding == indexcoding.RICE and len(ix) >= 1 and ix[0] <= _MAX_BATCH_K
        for e, ix, _ in rows
    ]
    if all(rice):
        return _rice_positions(rows, counts)
    # The Rice frames together; other codings (a small tensor's varint, a
    # bitmap, dense) frame by frame, with their exact checks; frame order kept.
    picked = [i for i, r in enumerate(rice) if r]
    together: dict[int, npt.NDArray[np.int64]] = {}
    if picked:
        positions = _rice_positions([rows[i] for i in picked], counts[picked])
        pieces = np.split(positions, np.cumsum(counts[picked])[:-1])
        together = dict(zip(picked, pieces, strict=True))
    parts = []
    for i, (e, ix, _) in enumerate(rows):
        if i in together:
            parts.append(together[i])
            continue
        decoded = indexcoding.decode(e.index_coding, ix, e.size, e.nnz)
        parts.append(np.arange(e.size, dtype=np.int64) if decoded is None else decoded)
    return np.concatenate(parts)


def _rice_positions(
    rows: list[tuple[frame.Entry, memoryview, memoryview]], counts: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """``indexcoding.rice_decode`` + ``_positions`` for all frames in one pass;
    raises _Unbatched where either would raise CodecError."""
    size = rows[0][0].size  # every frame has the expected shape
    ks = np.array([ix[0] for _, ix, _ in rows], dtype=np.int64)
    fixed = (counts * ks + 7) // 8
    lengths = np.array([len(ix) for _, ix, _ in rows], dtype=np.int64)
    if np.any(lengths < 1 + fixed):
        raise _Unbatched
    has = counts > 0
    starts = (np.cumsum(counts) - counts)[has]  # first value of each non-empty frame
    ends = starts + counts[has]
    remainders = _remainders(rows, counts, ks, fixed)
    # Quotients: the unary streams back to back; each frame's stops must lie
    # in its own stream, and nothing may follow its last stop bit.
    unary_bytes = b"".join(bytes(row[1][1 + int(n) :]) for row, n in zip(rows, fixed, strict=True))
    unary_len = lengths - 1 - fixed
    unary_base = (np.cumsum(unary_len) - unary_len) * 8
    bits = np.unpackbits(np.frombuffer(unary_bytes, dtype=np.uint8), bitorder="little")
    stops = np.flatnonzero(bits.view(np.bool_))
    found = np.searchsorted(stops, unary_base + unary_len * 8) - np.searchsorted(stops, unary_base)
    if not np.array_equal(found, counts):
        raise _Unbatched
    last_stop = np.zeros(len(rows), dtype=np.int64)
    last_stop[has] = stops[ends - 1] - unary_base[has]
    if np.any(np.where(has, (last_stop + 8) // 8, 0) != unary_len):
        raise _Unbatched
    quotients = np.empty(stops.size, dtype=np.int64)
    if stops.size:
        quotients[0] = 0
        np.subtract(stops[1:], stops[:-1] + 1, out=quotients[1:])
        quotients[starts] = stops[starts] - unary_base[has]
    # Quotients are below the stream's bit count and k ≤ 8: no 63-bit overflow.
    deltas = (quotients << np.repeat(ks, counts)) | remainders
    if stops.size:
        if int(deltas.max()) >= size:
            raise _Unbatched
        firsts = deltas[starts]
        deltas[starts] = 1  # only a frame's first delta may be 0
        if int(deltas.min()) == 0:
            raise _Unbatched
        # One running sum for all frames, less what came before each frame.
        deltas[starts] = firsts
        running = np.cumsum(deltas)
        positions: npt.NDArray[np.int64] = running - np.repeat(
            running[starts] - firsts, counts[has]
        )
        if np.any(positions[ends - 1] >= size):
            raise _Unbatched
        return positions
    return np.zeros(0, dtype=np.int64)


def _remainders(
    rows: list[tuple[frame.Entry, memoryview, memoryview]],
    counts: npt.NDArray[np.int64],
    ks: npt.NDArray[np.int64],
    fixed: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """The fixed-width low bits of every frame's deltas (``_unpack_fixed``)."""
    used = counts * ks
    tail = used % 8
    partial = np.flatnonzero(tail)
    for i in partial.tolist():  # the unused high bits of a stream's last byte must be 0
        ix = rows[i][1]
        if ix[int(fixed[i])] >> int(tail[i]):
            raise _Unbatched
    k = int(ks[0])
    if k == 0 or not np.all(ks == k):
        return _remainders_mixed(rows, counts, ks, fixed)
    # One width: pad each frame's stream to whole groups of eight codes (k
    # bytes each), unpack everything with one word-trick call, drop the padding.
    groups = (counts + 7) // 8
    padded = b"".join(
        bytes(row[1][1 : 1 + int(n)]) + bytes(int(g) * k - int(n))
        for row, n, g in zip(rows, fixed, groups, strict=True)
    )
    codes = bitpack.unpack(padded, k, int(groups.sum()) * 8)
    shift = np.repeat((np.cumsum(groups) - groups) * 8 - (np.cumsum(counts) - counts), counts)
    shift += np.arange(int(counts.sum()), dtype=np.int64)
    out: npt.NDArray[np.int64] = codes[shift].astype(np.int64)
    return out


def _remainders_mixed(
    rows: list[tuple[frame.Entry, memoryview, memoryview]],
    counts: npt.NDArray[np.int64],
    ks: npt.NDArray[np.int64],
    fixed: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Frames with different Rice parameters: each value read from the two
    bytes its bits start in."""
    rem = np.frombuffer(
        b"".join(bytes(row[1][1 : 1 + int(n)]) for row, n in zip(rows, fixed, strict=True))
        + b"\0\0",  # a two-byte read past the last stream stays in bounds (masked off)
        dtype=np.uint8,
    )
    starts = np.cumsum(counts) - counts
    local = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    k = np.repeat(ks, counts)
    bit = np.repeat((np.cumsum(fixed) - fixed) * 8, counts) + local * k
    byte = bit >> 3
    word = rem[byte].astype(np.int64) | (rem[byte + 1].astype(np.int64) << 8)
    out: npt.NDArray[np.int64] = (word >> (bit & 7)) & ((np.int64(1) << k) - 1)
    return out


def _dequantized(
    rows: list[tuple[frame.Entry, memoryview, memoryview]], counts: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Every frame's float32 values for one tensor, concatenated in frame order."""
    if not all(e.value_coding == frame.STOCHASTIC for e, _, _ in rows):
        return np.concatenate([_values(e, vs) for e, _, vs in rows]).astype(np.float32)
    all_scales, all_codes = _scales_and_codes(rows)
    factors, lengths, n_chunks = [], [], []
    for e, _, _ in rows:
        n = stochastic.num_chunks(e.nnz, e.chunk_size)
        factors.append(np.float32(2.0 / ((1 << e.bits) - 1)))
        chunk_lengths = np.full(n, e.chunk_size, dtype=np.int64)
        if n:
            chunk_lengths[-1] = e.nnz - (n - 1) * e.chunk_size
        lengths.append(chunk_lengths)
        n_chunks.append(n)
    per_chunk = np.concatenate(lengths)
    # stochastic.dequantize: step = scale × float32(2 / levels), value = code × step − scale.
    steps = all_scales * np.repeat(np.array(factors, dtype=np.float32), n_chunks)
    with np.errstate(over="ignore", invalid="ignore"):  # a forged scale: caught by the caller
        out: npt.NDArray[np.float32] = np.multiply(all_codes, np.repeat(steps, per_chunk))
        out -= np.repeat(all_scales, per_chunk)
    return out


def _scales_and_codes(
    rows: list[tuple[frame.Entry, memoryview, memoryview]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Every frame's scales (as float32) and codes, concatenated, with the
    checks of ``stochastic.from_bytes``."""
    first = rows[0][0]
    if not all(e.bits == 8 and e.scale_dtype == first.scale_dtype for e, _, _ in rows):
        parts = [
            stochastic.from_bytes(vs, e.nnz, e.bits, e.chunk_size, e.scale_dtype)
            for e, _, vs in rows
        ]
        return (
            np.concatenate([q.scales.astype(np.float32) for q in parts]),
            np.concatenate([q.codes for q in parts]),
        )
    # 8-bit codes are the bytes themselves: both parts of every frame in one go.
    dtype = stochastic.scale_dtype(first.scale_dtype)
    scale_bytes, code_bytes = [], []
    for e, _, vs in rows:
        if len(vs) != stochastic.section_size(e.nnz, 8, e.chunk_size, e.scale_dtype):
            raise _Unbatched
        cut = stochastic.num_chunks(e.nnz, e.chunk_size) * dtype.itemsize
        scale_bytes.append(vs[:cut])
        code_bytes.append(vs[cut:])
    scales = np.frombuffer(b"".join(scale_bytes), dtype=dtype).astype(np.float32)
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise _Unbatched
    return scales, np.frombuffer(b"".join(code_bytes), dtype=np.uint8)
