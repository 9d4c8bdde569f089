"""Shared builders for the codec tests: realistic updates and hand-made frames."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from quantization import floats, frame
from quantization.spec import CodecSpec
from quantization.testing import reseal

__all__ = ["float_frame", "reseal", "shapes", "update"]


def update(seed: int = 0, sizes: tuple[int, ...] = (4000, 64, 1500)) -> dict[str, np.ndarray]:
    """A few tensors of heavy-tailed values ~1e-3, like a trained delta."""
    rng = np.random.default_rng(seed)
    shapes: list[tuple[int, ...]] = [(s // 8, 8) if s % 8 == 0 else (s,) for s in sizes]
    return {
        f"t{i}": (rng.standard_t(3, shape) * 1e-3).astype(np.float32)
        for i, shape in enumerate(shapes)
    }


def shapes(tensors: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def float_frame(
    name: str,
    shape: tuple[int, ...],
    index_coding: int,
    index_section: bytes,
    values: npt.NDArray[np.float32],
    *,
    kind: int = frame.UPDATE,
) -> bytes:
    """A frame with one float32 tensor, built field by field (nothing checked)."""
    value_section = floats.to_bytes(values, floats.FLOAT32)
    entry = frame.Entry(
        name, shape, 0, index_coding, frame.FLOAT32, 0, 0, 0, values.size,
        len(index_section), len(value_section),
    )
    return frame.build(kind, CodecSpec(), [entry], [index_section, value_section], 3)
