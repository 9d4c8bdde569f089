"""Compiled (numba) loops of the update decoder, and of the encoder's packing.

Imported only through :mod:`quantization.accel`, which decides whether numba
is used at all; nothing here is public API. Every kernel works on plain
arrays with every offset and count passed in, and returns an error code
instead of raising: decoding untrusted frames must raise nothing but
``CodecError``, and that translation is the caller's.

What these loops must keep, and how:

- **The same bits as the numpy reference.** Values are the same float32
  operations on the same operands (``float32(code) × (scale × float32(2/L))
  − scale``); float16 and float32 bit patterns are converted exactly (by
  integer arithmetic and ``ldexp``); the scatter-add is
  ``acc[p] = acc[p] + value × weight`` in the accumulator's precision, frames
  in order. ``fastmath`` stays off, so LLVM neither reassociates nor fuses a
  multiply and an add into an FMA.
- **The same accepted frames.** A section passes here only if the numpy
  decoder accepts it (tests check both ways on random sections). Where the
  rules are sequential (varint, Rice), the checks are done as the stream is
  read; for a rejected frame the caller re-runs the numpy reference, which
  raises the exact message.
- **Bounds before any access.** numba does not check indices, so every read
  is guarded by an explicit comparison with the section's end, and every
  write by the output's length (``tests/quantization/test_compiled.py`` also
  runs the fuzzer with ``NUMBA_BOUNDSCHECK=1``). The accumulator is written
  only by :func:`scatter`, after every frame of a batch has been validated.
"""

# Kernels take flat positional arguments: arrays and offsets, as numba likes.
# ruff: noqa: PLR0917

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np

from quantization import accel
from quantization.frame import FLOAT16, FLOAT32, STOCHASTIC
from quantization.indexcoding import BITMAP, DENSE, MAX_RICE_K, MAX_VARINT_BYTES, RICE, VARINT
from quantization.spec import MAX_CHUNK_SIZE
from quantization.stochastic import SCALE_FLOAT16, SCALE_FLOAT32

# Before the first decorator: where compiled code is kept.
accel.point_numba_cache()

_F = TypeVar("_F", bound=Callable[..., Any])


def _jit(fn: _F) -> _F:
    # cache=True: compiled code is kept on disk (see accel for where), so a
    # restart loads it in milliseconds instead of compiling for seconds.
    # nogil: the service's decode thread runs beside the event loop.
    return cast(_F, numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)(fn))


# Columns of a row of the ``meta`` table: one row per (frame, tensor).
SIZE, ICODE, VCODE, BITS, SDTYPE, CHUNK, NNZ, IOFF, ILEN, VOFF, VLEN, POFF, OFF = range(13)
COLUMNS = 13

# The codes of the frame format, from the modules that define them (numba
# takes module-level integers as compile-time constants).
_DENSE, _VARINT, _BITMAP, _RICE = DENSE, VARINT, BITMAP, RICE
_FLOAT32, _FLOAT16, _STOCHASTIC = FLOAT32, FLOAT16, STOCHASTIC
_SCALE_F16, _SCALE_F32 = SCALE_FLOAT16, SCALE_FLOAT32
_MAX_RICE_K = MAX_RICE_K
_MAX_VARINT_BYTES = MAX_VARINT_BYTES
_MAX_CHUNK = MAX_CHUNK_SIZE


@_jit
def _half(bits: int) -> float:
    """A float16 bit pattern as a float (exact); NaN for Inf/NaN patterns."""
    exponent = (bits >> 10) & 31
    mantissa = bits & 1023
    if exponent == 31:
        return math.nan
    if exponent == 0:
        value = math.ldexp(float(mantissa), -24)
    else:
        value = math.ldexp(float(mantissa + 1024), exponent - 25)
    return -value if bits & 0x8000 else value


@_jit
def _single(bits: int) -> float:
    """A float32 bit pattern as a float (exact); NaN for Inf/NaN patterns."""
    exponent = (bits >> 23) & 255
    mantissa = bits & 0x7FFFFF
    if exponent == 255:
        return math.nan
    if exponent == 0:
        value = math.ldexp(float(mantissa), -149)
    else:
        value = math.ldexp(float(mantissa + 0x800000), exponent - 150)
    return -value if bits & 0x80000000 else value


# Trailing zero bits of a 64-bit word's lowest set bit, by de Bruijn
# multiplication (numba exposes no count-trailing-zeros).
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_TABLE = np.zeros(64, dtype=np.int64)
for _i in range(64):
    _DEBRUIJN_TABLE[((int(_DEBRUIJN) << _i) & (2**64 - 1)) >> 58] = _i
_SHIFT58 = np.uint64(58)
_ONE = np.uint64(1)


@_jit
def _remainders(
    body: Any, start: int, end: int, k: int, count: int, out: Any, poff: int
) -> None:
    """The fixed-width low k bits of every delta, into ``out`` (the caller
    checked the stream holds count·k bits)."""
    if k == 0:
        for i in range(count):
            out[poff + i] = 0
        return
    mask = np.uint64((1 << k) - 1)
    groups = count // 8
    if k <= 8:
        # Eight k-bit codes are exactly k bytes: one 64-bit word per group.
        uk = np.uint64(k)
        for g in range(groups):
            at = start + g * k
            word = np.uint64(0)
            for b in range(k):
                word |= np.uint64(body[at + b]) << np.uint64(8 * b)
            for i in range(8):
                out[poff + 8 * g + i] = np.int64((word >> (uk * np.uint64(i))) & mask)
        done = 8 * groups
    else:
        done = 0
    # The rest bit by bit from a buffer (at most k + 7 ≤ 47 bits held).
    buf = 0
    held = 0
    at = start + (done * k) // 8
    for i in range(done, count):
        while held < k:
            if at < end:
                buf |= int(body[at]) << held
            at += 1
            held += 8
        out[poff + i] = buf & int(mask)
        buf >>= k
        held -= k


@_jit
def _rice(body: Any, start: int, end: int, n: int, count: int, out: Any, poff: int) -> bool:
    if end - start < 1:
        return False
    k = int(body[start])
    if k > _MAX_RICE_K:
        return False
    fixed = (count * k + 7) // 8
    if end - start < 1 + fixed:
        return False
    rem_start = start + 1
    rem_end = rem_start + fixed
    used = count * k
    if used % 8 and (int(body[rem_end - 1]) >> (used % 8)) != 0:
        return False
    _remainders(body, rem_start, rem_end, k, count, out, poff)
    # A quotient above max_q makes the delta reach n (and could overflow).
    max_q = (n - 1) >> k if n > 0 else -1
    # Quotients: the unary stream 64 bits at a time; each set bit is a stop.
    found = 0
    position = -1
    next_q_start = 0  # stream bit where the next quotient's zeros begin
    last_stop = -1
    unary_start = rem_end
    for word_at in range(unary_start, end, 8):
        word = np.uint64(0)
        for b in range(min(8, end - word_at)):
            word |= np.uint64(body[word_at + b]) << np.uint64(8 * b)
        base = (word_at - unary_start) * 8
        while word:
            low = word & (~word + _ONE)  # the lowest set bit
            word &= word - _ONE
            stop = base + _DEBRUIJN_TABLE[(low * _DEBRUIJN) >> _SHIFT58]
            q = stop - next_q_start
            if found >= count or q > max_q:
                return False
            delta = (q << k) | out[poff + found]
            if found and delta == 0:
                return False  # a duplicate position
            position += delta if found else delta + 1
            if position >= n:
                return False
            out[poff + found] = position
            found += 1
            next_q_start = stop + 1
            last_stop = stop
    if found != count:
        return False
    if count == 0:
        return unary_start == end
    # Nothing may follow the byte holding the last stop bit.
    return unary_start + (last_stop >> 3) == end - 1


@_jit
def _varint(body: Any, start: int, end: int, n: int, count: int, out: Any, poff: int) -> bool:
    at = start
    position = -1
    for i in range(count):
        value = 0
        length = 0
        while True:
            if at >= end or length >= _MAX_VARINT_BYTES:
                return False
            byte = int(body[at])
            at += 1
            value |= (byte & 0x7F) << (7 * length)
            length += 1
            if byte < 0x80:
                if length > 1 and byte == 0:
                    return False  # non-canonical
                break
        if i and value == 0:
            return False
        if value >= n:
            return False
        position += value if i else value + 1
        if position >= n:
            return False
        out[poff + i] = position
    return at == end


@_jit
def _bitmap(body: Any, start: int, end: int, n: int, count: int, out: Any, poff: int) -> bool:
    if end - start != (n + 7) // 8:
        return False
    found = 0
    for byte_at in range(start, end):
        byte = int(body[byte_at])
        if byte == 0:
            continue
        base = (byte_at - start) * 8
        for bit in range(8):
            if (byte >> bit) & 1:
                p = base + bit
                if p >= n or found >= count:
                    return False
                out[poff + found] = p
                found += 1
    return found == count


@_jit
def _floats(body: Any, start: int, end: int, count: int, width: int, values: Any, off: int) -> bool:
    """Byte-planed float32 (width 4) or float16 (width 2) values."""
    if end - start != count * width:
        return False
    for j in range(count):
        bits = 0
        for plane in range(width):
            bits |= int(body[start + plane * count + j]) << (8 * plane)
        v = _single(bits) if width == 4 else _half(bits)
        if math.isnan(v):
            return False
        values[off + j] = v
    return True


@_jit
def _stochastic(
    body: Any, start: int, end: int, count: int, bits: int, sdtype: int, chunk: int,
    factors: Any, values: Any, off: int,
) -> bool:
    if bits < 1 or bits > 8 or chunk < 1 or chunk > _MAX_CHUNK:
        return False
    if sdtype == _SCALE_F16:
        itemsize = 2
    elif sdtype == _SCALE_F32:
        itemsize = 4
    else:
        return False
    n_scales = (count + chunk - 1) // chunk
    packed = (count * bits + 7) // 8
    if end - start != n_scales * itemsize + packed:
        return False
    codes_at = start + n_scales * itemsize
    used = count * bits
    if used % 8 and (int(body[codes_at + packed - 1]) >> (used % 8)) != 0:
        return False
    # Every scale is checked before any value is produced (as from_bytes does).
    for c in range(n_scales):
        at = start + c * itemsize
        if itemsize == 2:
            s = _half(int(body[at]) | (int(body[at + 1]) << 8))
        else:
            s = _single(
                int(body[at]) | (int(body[at + 1]) << 8) | (int(body[at + 2]) << 16)
                | (int(body[at + 3]) << 24)
            )
        if math.isnan(s) or s < 0:
            return False
    factor = factors[bits]
    mask = (1 << bits) - 1
    codes_end = codes_at + packed
    j = 0
    for c in range(n_scales):
        at = start + c * itemsize
        if itemsize == 2:
            s32 = np.float32(_half(int(body[at]) | (int(body[at + 1]) << 8)))
        else:
            s32 = np.float32(_single(
                int(body[at]) | (int(body[at + 1]) << 8) | (int(body[at + 2]) << 16)
                | (int(body[at + 3]) << 24)
            ))
        step = s32 * factor  # float32 × float32: as stochastic.dequantize
        last = min(count, j + chunk)
        while j < last:
            if bits == 8:
                code = int(body[codes_at + j])
            else:
                bit = j * bits
                byte_at = codes_at + (bit >> 3)
                word = int(body[byte_at])
                if byte_at + 1 < codes_end:
                    word |= int(body[byte_at + 1]) << 8
                code = (word >> (bit & 7)) & mask
            v = np.float32(code) * step - s32
            if not math.isfinite(v):
                return False  # a forged scale that overflows
            values[off + j] = v
            j += 1
    return True


@_jit
def _sum_squares(values: Any, off: int, count: int) -> float:
    """Σ v² in float64 (exact squares of float32 values), four running sums
    so the additions do not wait on each other. Its own order, not numpy's:
    see compiled.py for how max_norm is still decided as numpy decides."""
    a = b = c = d = 0.0
    j = off
    end = off + count
    while j + 4 <= end:
        v0 = np.float64(values[j])
        v1 = np.float64(values[j + 1])
        v2 = np.float64(values[j + 2])
        v3 = np.float64(values[j + 3])
        a += v0 * v0
        b += v1 * v1
        c += v2 * v2
        d += v3 * v3
        j += 4
    while j < end:
        v = np.float64(values[j])
        a += v * v
        j += 1
    return (a + b) + (c + d)


@_jit
def decode_rows(
    body: Any, meta: Any, positions: Any, values: Any, sumsq: Any, factors: Any
) -> int:
    """Decode every row of ``meta`` (index section → ``positions``, value
    section → ``values``, Σ v² in float64 → ``sumsq``). Returns 0, or the
    1-based row of the first section the numpy decoder would refuse."""
    for r in range(meta.shape[0]):
        n = meta[r, SIZE]
        count = meta[r, NNZ]
        ioff, ilen = meta[r, IOFF], meta[r, ILEN]
        voff, vlen = meta[r, VOFF], meta[r, VLEN]
        poff, off = meta[r, POFF], meta[r, OFF]
        if (
            count < 0 or count > n or ioff < 0 or ilen < 0 or voff < 0 or vlen < 0
            or ioff + ilen > body.size or voff + vlen > body.size
            or off < 0 or off + count > values.size
        ):
            return r + 1
        icode = meta[r, ICODE]
        if icode == _DENSE:
            if count != n or ilen != 0:
                return r + 1
        else:
            if poff < 0 or poff + count > positions.size:
                return r + 1
            if icode == _RICE:
                ok = _rice(body, ioff, ioff + ilen, n, count, positions, poff)
            elif icode == _VARINT:
                ok = _varint(body, ioff, ioff + ilen, n, count, positions, poff)
            elif icode == _BITMAP:
                ok = _bitmap(body, ioff, ioff + ilen, n, count, positions, poff)
            else:
                ok = False
            if not ok:
                return r + 1
        vcode = meta[r, VCODE]
        if vcode == _STOCHASTIC:
            ok = _stochastic(
                body, voff, voff + vlen, count, meta[r, BITS], meta[r, SDTYPE], meta[r, CHUNK],
                factors, values, off,
            )
        elif vcode == _FLOAT32:
            ok = _floats(body, voff, voff + vlen, count, 4, values, off)
        elif vcode == _FLOAT16:
            ok = _floats(body, voff, voff + vlen, count, 2, values, off)
        else:
            ok = False
        if not ok:
            return r + 1
        sumsq[r] = _sum_squares(values, off, count)
    return 0


@_jit
def scatter(acc: Any, positions: Any, values: Any, segments: Any, weights: Any) -> bool:
    """``acc[p] += value × weight`` segment by segment, in order. A segment
    is (value offset, position offset or −1 for dense, count, weight index);
    a sparse segment's positions increase (the decoder checked it).
    Everything is checked before the first write; False: nothing was written.

    (Walking the accumulator tile by tile, all segments per tile, was tried:
    no faster here. A 1M-parameter float64 sum is 8 MB and top-1 % positions
    touch most of its cache lines, so the loop waits on memory either way.)"""
    size = acc.size
    for s in range(segments.shape[0]):
        off, poff, count, w = segments[s, 0], segments[s, 1], segments[s, 2], segments[s, 3]
        if off < 0 or count < 0 or off + count > values.size or w < 0 or w >= weights.size:
            return False
        if poff < 0:
            if count != size:
                return False
        else:
            if poff + count > positions.size:
                return False
            previous = -1
            for j in range(poff, poff + count):
                p = positions[j]
                if p <= previous or p >= size:
                    return False
                previous = p
    for s in range(segments.shape[0]):
        off, poff, count = segments[s, 0], segments[s, 1], segments[s, 2]
        weight = weights[segments[s, 3]]
        if poff < 0:
            for j in range(count):
                acc[j] += values[off + j] * weight
        else:
            for j in range(count):
                acc[positions[poff + j]] += values[off + j] * weight
    return True
