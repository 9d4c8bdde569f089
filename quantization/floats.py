"""Stage 3 (plain): float32 / float16 values, and XOR-ed float32 bit patterns.

Values are stored as byte planes: all values' byte 0, then all byte 1, and so
on (little-endian byte order within a value). Float sign/exponent bytes vary
little between neighbouring weights, and an XOR of two close float32 bit
patterns is zero in its high bytes; grouping equal-significance bytes lets
zstd find those runs. The transform is free to undo and exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from quantization.errors import CodecError

FLOAT32, FLOAT16, XOR32 = 0, 1, 3
DTYPES: dict[int, np.dtype[Any]] = {
    FLOAT32: np.dtype("<f4"),
    FLOAT16: np.dtype("<f2"),
    XOR32: np.dtype("<u4"),
}


def itemsize(coding: int) -> int:
    return int(DTYPES[coding].itemsize)


def to_bytes(values: npt.NDArray[Any], coding: int) -> bytes:
    """``values`` are float32 (cast to float16 first for FLOAT16) or uint32 for XOR32."""
    dtype = DTYPES[coding]
    words = np.ascontiguousarray(values, dtype=dtype)
    planes = words.view(np.uint8).reshape(-1, dtype.itemsize).T
    return bytes(planes.tobytes())


def from_bytes(data: bytes | memoryview, count: int, coding: int) -> npt.NDArray[Any]:
    """Float32 for FLOAT32/FLOAT16, uint32 for XOR32. Finiteness is not checked here."""
    if coding not in DTYPES:
        raise CodecError(f"unknown float value coding {coding}")
    dtype = DTYPES[coding]
    if len(data) != count * dtype.itemsize:
        raise CodecError(
            f"value section is {len(data)} bytes; {count} values of {dtype.itemsize} bytes "
            f"need {count * dtype.itemsize}"
        )
    planes = np.frombuffer(data, dtype=np.uint8).reshape(dtype.itemsize, count)
    # One strided copy per plane: ~5× faster than a transposing ascontiguousarray.
    interleaved = np.empty((count, dtype.itemsize), dtype=np.uint8)
    for j in range(dtype.itemsize):
        interleaved[:, j] = planes[j]
    words = interleaved.view(dtype).reshape(count)
    # Little-endian words are already native on every platform fedge targets:
    # then this is a view, not a copy.
    out: npt.NDArray[Any] = words.astype(
        np.uint32 if coding == XOR32 else np.float32, copy=False
    )
    return out
