"""Stage 3: unbiased stochastic rounding to 1–8 bits with per-chunk scales.

Values are cut into chunks of ``chunk_size`` (the last may be shorter). Each
chunk has a scale ``s`` ≥ its largest magnitude, stored as float16 (rounded
up, so no value falls outside its grid) — or as float32 for a tensor where
some chunk exceeds float16's range (65504). The ``L + 1 = 2**bits`` levels
are ``-s + q · step`` with ``step = 2s / L``, ``q ∈ {0, …, L}``. A value ``v``
becomes ``q = floor((v + s) / step + u)`` with ``u ~ U[0, 1)``, so
``E[decoded] = v`` and ``|decoded − v| < step = 2s / (2**bits − 1)``.

Decoded values are linear in ``s`` for fixed codes, which is what lets the
encoder scale the scales to enforce a norm bound without re-rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantization import bitpack
from quantization.errors import CodecError

F32 = npt.NDArray[np.float32]
FLOAT16_MAX = float(np.finfo(np.float16).max)
SCALE_FLOAT16, SCALE_FLOAT32 = 1, 2
_SCALE_DTYPES: dict[int, np.dtype[Any]] = {
    SCALE_FLOAT16: np.dtype("<f2"),
    SCALE_FLOAT32: np.dtype("<f4"),
}


@dataclass(frozen=True)
class Quantized:
    scales: npt.NDArray[np.floating]  # float16 or float32, one per chunk
    codes: npt.NDArray[np.uint8]
    bits: int
    chunk_size: int

    @property
    def scale_dtype(self) -> int:
        return SCALE_FLOAT16 if self.scales.dtype == np.float16 else SCALE_FLOAT32


def scale_dtype(code: int) -> np.dtype[Any]:
    """The stored (little-endian) dtype of a scale dtype code."""
    if code not in _SCALE_DTYPES:
        raise CodecError(f"unknown scale dtype code {code}")
    return _SCALE_DTYPES[code]


def num_chunks(count: int, chunk_size: int) -> int:
    return (count + chunk_size - 1) // chunk_size


def _per_value(scales: F32, count: int, chunk_size: int) -> F32:
    # Index rather than np.repeat: repeat would allocate a whole last chunk.
    per_value: F32 = scales[np.arange(count, dtype=np.int64) // chunk_size]
    return per_value


def _chunk_max(values: F32, chunk_size: int) -> F32:
    chunks = num_chunks(values.size, chunk_size)
    padded = np.zeros(chunks * chunk_size, dtype=np.float32)
    np.abs(values, out=padded[: values.size])
    result: F32 = padded.reshape(chunks, chunk_size).max(axis=1)
    return result


def round_up_scales(maxima: F32) -> npt.NDArray[np.floating]:
    """Smallest float16 (else float32) scales ≥ each chunk's max magnitude."""
    if maxima.size and float(maxima.max()) > FLOAT16_MAX:
        return maxima.astype(np.float32)
    half = maxima.astype(np.float16)
    low = half.astype(np.float32) < maxima
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


def quantize(values: F32, bits: int, chunk_size: int, rng: np.random.Generator) -> Quantized:
    levels = (1 << bits) - 1
    scales = round_up_scales(_chunk_max(values, chunk_size))
    s = _per_value(scales.astype(np.float32), values.size, chunk_size)
    step = s * np.float32(2.0 / levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (values + s) / step
    t[step == 0] = 0.0  # an all-zero chunk: every code decodes to exactly 0
    t += rng.random(values.size, dtype=np.float32)
    np.floor(t, out=t)
    np.clip(t, 0, levels, out=t)
    return Quantized(scales, t.astype(np.uint8), bits, chunk_size)


def dequantize(q: Quantized) -> F32:
    levels = (1 << q.bits) - 1
    scales = q.scales.astype(np.float32)
    steps = scales * np.float32(2.0 / levels)
    count, chunk = q.codes.size, q.chunk_size
    # Whole chunks as rows scaled by a column of steps: no per-value scale
    # array. The same float32 operations as ``code * step - s`` value by value,
    # so the result is bit for bit what the encoder computed.
    full = count // chunk
    out: F32 = np.empty(count, dtype=np.float32)
    head = out[: full * chunk].reshape(full, chunk)
    np.multiply(q.codes[: full * chunk].reshape(full, chunk), steps[:full, None], out=head)
    head -= scales[:full, None]
    if full * chunk < count:
        tail = out[full * chunk :]
        np.multiply(q.codes[full * chunk :], steps[full], out=tail)
        tail -= scales[full]
    return out


def shrink(q: Quantized, factor: float) -> Quantized:
    """Scale every decoded value by at most ``factor`` (≤ 1) by shrinking the
    scales, rounding them toward zero so the bound holds after float16 storage."""
    wanted = q.scales.astype(np.float64) * factor
    scales = wanted.astype(q.scales.dtype)
    high = scales.astype(np.float64) > wanted
    scales[high] = np.nextafter(scales[high], scales.dtype.type(0))
    return Quantized(scales, q.codes, q.bits, q.chunk_size)


def section_size(count: int, bits: int, chunk_size: int, scale_dtype: int) -> int:
    itemsize = int(_SCALE_DTYPES[scale_dtype].itemsize)
    return num_chunks(count, chunk_size) * itemsize + bitpack.packed_size(count, bits)


def to_bytes(q: Quantized) -> bytes:
    """Scales (little-endian) followed by the packed codes."""
    scales = q.scales.astype(_SCALE_DTYPES[q.scale_dtype], copy=False)
    return bytes(scales.tobytes()) + bitpack.pack(q.codes, q.bits)


def from_bytes(
    data: bytes | memoryview, count: int, bits: int, chunk_size: int, scale_dtype: int
) -> Quantized:
    """Parse a section produced by :func:`to_bytes`; validates what it can."""
    if scale_dtype not in _SCALE_DTYPES:
        raise CodecError(f"unknown scale dtype code {scale_dtype}")
    dtype = _SCALE_DTYPES[scale_dtype]
    n_scales = num_chunks(count, chunk_size)
    if len(data) != section_size(count, bits, chunk_size, scale_dtype):
        raise CodecError(
            f"stochastic section is {len(data)} bytes; {count} values at {bits} bits in chunks "
            f"of {chunk_size} need {section_size(count, bits, chunk_size, scale_dtype)}"
        )
    scales = np.frombuffer(data, dtype=dtype, count=n_scales).astype(dtype.newbyteorder("="))
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise CodecError("stochastic section has a negative or non-finite scale")
    packed = memoryview(data)[n_scales * dtype.itemsize :]
    if not bitpack.padding_is_zero(packed, count, bits):
        raise CodecError("stochastic section has non-zero padding bits")
    return Quantized(scales, bitpack.unpack(packed, bits, count), bits, chunk_size)
