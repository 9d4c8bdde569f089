"""Stage 4: coding the sorted positions of the sent values, per tensor.

Four codings; the encoder picks the smallest (before zstd) for each tensor:

- ``DENSE`` (0): every position is sent; no index bytes at all.
- ``VARINT`` (1): deltas as unsigned LEB128 (7 bits per byte, high bit set on
  every byte but the last; canonical: no redundant trailing zero groups).
- ``BITMAP`` (2): one bit per position of the tensor, LSB-first bit stream.
- ``RICE`` (3): deltas as Golomb–Rice codes with parameter ``k``, stored as
  two streams so both encoding and decoding are vectorized: one byte ``k``,
  then the low ``k`` bits of every delta packed LSB-first (fixed width), then
  the quotients ``delta >> k`` in unary (``q`` zero bits then a one bit),
  LSB-first, zero-padded to a byte.

Deltas: the first is the first position, each next is the position minus the
previous one, so a valid delta after the first is ≥ 1 — a zero delta would be
a duplicate index and is rejected. Random positions at 1 % density have an
entropy of ≈ 8.1 bits per index; LEB128 spends ≈ 10.2 bits, Rice ≈ 8.2.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from quantization import bitpack
from quantization.errors import CodecError

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

DENSE, VARINT, BITMAP, RICE = 0, 1, 2, 3
NAMES = {DENSE: "dense", VARINT: "varint", BITMAP: "bitmap", RICE: "rice"}
CODES = {name: code for code, name in NAMES.items()}
MAX_VARINT_BYTES = 9  # 63 bits: more than any tensor a frame may describe
MAX_RICE_K = 40


def _deltas(indices: I64) -> U64:
    deltas = np.empty(indices.size, dtype=np.uint64)
    if indices.size:
        deltas[0] = indices[0]
        np.subtract(indices[1:], indices[:-1], out=deltas[1:], casting="unsafe")
    return deltas


def _positions(deltas: U64, n: int) -> I64:
    """Validate deltas and turn them back into positions."""
    if deltas.size == 0:
        return np.zeros(0, dtype=np.int64)
    if deltas.size > 1 and int(deltas[1:].min()) == 0:
        raise CodecError("index section repeats a position (duplicate index)")
    # Each delta < n keeps the running sum far from int64 overflow.
    if int(deltas.max()) >= n:
        raise CodecError(f"index section has a position outside the tensor of {n} values")
    positions = np.cumsum(deltas.astype(np.int64))
    if int(positions[-1]) >= n:
        raise CodecError(f"index section has a position outside the tensor of {n} values")
    return positions


# -- LEB128 ------------------------------------------------------------------


def _varint_lengths(values: U64) -> I64:
    lengths = np.ones(values.size, dtype=np.int64)
    for j in range(1, MAX_VARINT_BYTES + 1):
        lengths += values >= np.uint64(1 << (7 * j))
    return lengths


def varint_encode(values: U64) -> bytes:
    lengths = _varint_lengths(values)
    starts = np.cumsum(lengths) - lengths
    out = np.empty(int(lengths.sum()), dtype=np.uint8)
    for j in range(int(lengths.max(initial=0))):
        has = lengths > j
        group = (values[has] >> np.uint64(7 * j)) & np.uint64(0x7F)
        more = np.where(lengths[has] > j + 1, np.uint64(0x80), np.uint64(0))
        out[starts[has] + j] = (group | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(data: bytes | memoryview, count: int) -> U64:
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != count or (count and int(ends[-1]) != raw.size - 1) or (
        count == 0 and raw.size
    ):
        raise CodecError(f"varint section does not hold exactly {count} values")
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    lengths = ends - starts + 1
    if count and int(lengths.max()) > MAX_VARINT_BYTES:
        raise CodecError(f"varint section has a value longer than {MAX_VARINT_BYTES} bytes")
    if np.any((lengths > 1) & (raw[ends] == 0)):
        raise CodecError("varint section has a non-canonical (zero-padded) value")
    values = np.zeros(count, dtype=np.uint64)
    for j in range(int(lengths.max(initial=0))):
        has = lengths > j
        group = (raw[starts[has] + j] & 0x7F).astype(np.uint64)
        values[has] |= group << np.uint64(7 * j)
    return values


# -- Bitmap ------------------------------------------------------------------


def bitmap_encode(indices: I64, n: int) -> bytes:
    mask = np.zeros(n, dtype=np.uint8)
    mask[indices] = 1
    return np.packbits(mask, bitorder="little").tobytes()


def bitmap_decode(data: bytes | memoryview, n: int, count: int) -> I64:
    if len(data) != (n + 7) // 8:
        raise CodecError(f"bitmap section is {len(data)} bytes; {n} positions need {(n + 7) // 8}")
    raw = np.frombuffer(data, dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")
    if np.any(bits[n:]):
        raise CodecError("bitmap section has bits set past the end of the tensor")
    # Unpacked bits are 0 or 1: as booleans, nonzero() skips the comparisons.
    positions = np.flatnonzero(bits[:n].view(np.bool_)).astype(np.int64)
    if positions.size != count:
        raise CodecError(f"bitmap section marks {positions.size} positions; the table says {count}")
    return positions


# -- Rice --------------------------------------------------------------------


def _rice_size(values: U64, k: int) -> int:
    quotient_bits = int((values >> np.uint64(k)).sum()) + values.size
    return 1 + (values.size * k + 7) // 8 + (quotient_bits + 7) // 8


def rice_parameter(values: U64) -> int:
    """The k in a small window around log2(mean · ln 2) with the smallest output."""
    if values.size == 0:
        return 0
    mean = float(values.mean())
    guess = max(0, round(math.log2(mean * math.log(2)))) if mean > 1 else 0
    candidates = range(max(0, guess - 2), min(MAX_RICE_K, guess + 2) + 1)
    return min(candidates, key=lambda k: _rice_size(values, k))


def _pack_fixed(values: U64, width: int) -> bytes:
    """``width``-bit values into an LSB-first bit stream (encoder side, trusted sizes)."""
    if width == 0 or values.size == 0:
        return b""
    if width <= 8:
        return bitpack.pack(values, width)
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((values[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return bytes(np.packbits(bits.reshape(-1), bitorder="little").tobytes())


def _unpack_fixed(data: bytes | memoryview, width: int, count: int) -> U64:
    """Inverse of :func:`_pack_fixed` in O(count) memory: each value is read
    from the 8 bytes starting at its first byte (width ≤ 57 always fits)."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    raw = np.frombuffer(data, dtype=np.uint8)
    used = count * width
    if raw.size * 8 - used >= 8 or (used % 8 and int(raw[-1]) >> (used % 8)):
        raise CodecError("rice section has non-zero padding bits")
    if width <= 8:  # the common case (mean gaps up to ~350): the word trick
        return bitpack.unpack(raw, width, count).astype(np.uint64)
    padded = np.zeros(raw.size + 8, dtype=np.uint8)
    padded[: raw.size] = raw
    offsets = np.arange(count, dtype=np.uint64) * np.uint64(width)
    first = (offsets >> np.uint64(3)).astype(np.int64)
    words = np.zeros(count, dtype=np.uint64)
    for j in range(8):
        words |= padded[first + j].astype(np.uint64) << np.uint64(8 * j)
    words >>= offsets & np.uint64(7)
    out: U64 = words & np.uint64((1 << width) - 1)
    return out


def rice_encode(values: U64, k: int) -> bytes:
    quotients = (values >> np.uint64(k)).astype(np.int64)
    remainders = values & np.uint64((1 << k) - 1)
    stops = np.cumsum(quotients + 1) - 1
    unary = np.zeros(int(stops[-1]) + 1 if stops.size else 0, dtype=np.uint8)
    unary[stops] = 1
    return (
        bytes([k])
        + _pack_fixed(remainders, k)
        + np.packbits(unary, bitorder="little").tobytes()
    )


def rice_decode(data: bytes | memoryview, count: int) -> U64:
    if len(data) < 1:
        raise CodecError("rice section is empty; it needs at least its parameter byte")
    k = data[0]
    if k > MAX_RICE_K:
        raise CodecError(f"rice parameter {k} is above the maximum {MAX_RICE_K}")
    fixed = (count * k + 7) // 8
    if len(data) < 1 + fixed:
        raise CodecError(f"rice section is {len(data)} bytes, too short for {count} values")
    remainders = _unpack_fixed(memoryview(data)[1 : 1 + fixed], k, count)
    unary = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=1 + fixed), bitorder="little")
    stops = np.flatnonzero(unary.view(np.bool_))  # 0/1 bytes: see bitmap_decode
    if stops.size != count:
        raise CodecError(f"rice section holds {stops.size} values; the table says {count}")
    if (int(stops[-1]) + 8 if count else 0) // 8 != len(data) - 1 - fixed:
        raise CodecError("rice section has trailing bytes after its last value")
    quotients = np.empty(count, dtype=np.int64)
    if count:
        quotients[0] = stops[0]
        np.subtract(stops[1:], stops[:-1] + 1, out=quotients[1:])
    if count and int(quotients.max()) >= (1 << (63 - k)):
        raise CodecError("rice section has a value too large for 63 bits")
    return (quotients.astype(np.uint64) << np.uint64(k)) | remainders


# -- Choice --------------------------------------------------------------------


def encode(indices: I64 | None, n: int, force: str = "auto") -> tuple[int, bytes]:
    """The coding and section for sorted unique ``indices`` (None = all)."""
    if indices is None or indices.size == n:
        return DENSE, b""
    deltas = _deltas(indices)
    k = rice_parameter(deltas)
    sizes = {
        VARINT: int(_varint_lengths(deltas).sum()),
        BITMAP: (n + 7) // 8,
        RICE: _rice_size(deltas, k),
    }
    coding = min(sizes, key=lambda c: sizes[c]) if force == "auto" else CODES[force]
    if coding == VARINT:
        return VARINT, varint_encode(deltas)
    if coding == BITMAP:
        return BITMAP, bitmap_encode(indices, n)
    return RICE, rice_encode(deltas, k)


def decode(coding: int, data: bytes | memoryview, n: int, count: int) -> I64 | None:
    """Sorted unique positions in ``[0, n)``, or None for DENSE; raises CodecError."""
    if coding == DENSE:
        if count != n or len(data):
            raise CodecError(f"dense tensor of {n} values has {count} values and index bytes")
        return None
    if count > n:
        raise CodecError(f"{count} values do not fit a tensor of {n}")
    if coding == BITMAP:
        return bitmap_decode(data, n, count)
    if coding == VARINT:
        return _positions(varint_decode(data, count), n)
    if coding == RICE:
        return _positions(rice_decode(data, count), n)
    raise CodecError(f"unknown index coding {coding}")
