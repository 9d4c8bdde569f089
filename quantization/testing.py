"""Test seams: build frames the encoder would refuse, to test decoders.

The encoder never writes a NaN, a duplicate index or an out-of-range
position, so a service's tests cannot get such frames from ``encode``. These
helpers write them field by field (the frame is well formed; only the content
is wrong), and :func:`reseal` fixes the checksum after a deliberate edit.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from quantization import floats, frame, indexcoding
from quantization.spec import CodecSpec

KINDS = {name: code for code, name in frame.KIND_NAMES.items()}


def reseal(payload: bytes | bytearray) -> bytes:
    """Recompute the trailing CRC-32, as a forger (or a buggy encoder) would."""
    body = bytes(payload[:-4])
    return body + struct.pack("<I", zlib.crc32(body))


def raw_frame(
    values: Mapping[str, npt.ArrayLike],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    indices: Mapping[str, npt.ArrayLike] | None = None,
    kind: str = "update",
) -> bytes:
    """A frame carrying ``values`` (float32, unchecked: NaN/Inf welcome).

    Without ``indices`` a tensor is dense and its shape is its values' shape.
    With ``indices[name]`` (any integers: duplicates, out of range, unsorted)
    the positions are written as LEB128 deltas — a position below its
    predecessor as a step of 2**62 — and ``shapes[name]`` gives the shape.
    """
    entries: list[frame.Entry] = []
    sections: list[bytes] = []
    for name, raw in values.items():
        vals = np.asarray(raw, dtype=np.float32)
        value_section = floats.to_bytes(vals.reshape(-1), floats.FLOAT32)
        if indices is not None and name in indices:
            positions = np.asarray(indices[name], dtype=np.int64).reshape(-1)
            shape = tuple((shapes or {})[name])
            steps = np.diff(positions, prepend=0)
            # Delta coding cannot go backwards: a decrease becomes a huge step.
            deltas = np.where(steps < 0, 1 << 62, steps).astype(np.uint64)
            index_section = indexcoding.varint_encode(deltas)
            coding = indexcoding.VARINT
        else:
            shape = tuple(vals.shape)
            index_section, coding = b"", indexcoding.DENSE
        entries.append(
            frame.Entry(
                name, shape, frame.SOURCE_CODES["float32"], coding, frame.FLOAT32, 0, 0, 0,
                vals.size, len(index_section), len(value_section),
            )
        )
        sections += [index_section, value_section]
    return frame.build(KINDS[kind], CodecSpec(), entries, sections, 3)
