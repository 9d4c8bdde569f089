"""Stage 1: scale the whole update down to an L2 bound.

Clipping comes before any compression so that differential privacy (which
adds noise calibrated to the bound) sees the bound hold on what is sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]

# Squares are summed in float64 blocks: float32 accumulation over 10M values
# can be off by ~1e-4 relative, too loose for a norm bound a server enforces.
# einsum rather than np.dot: dot goes to BLAS, whose thread pool stalls badly
# when the cores are busy (a server decoding in several workers, a phone).
_BLOCK = 1 << 16


def sum_squares(values: npt.NDArray[np.floating]) -> float:
    flat = values.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, _BLOCK):
        block = flat[start : start + _BLOCK].astype(np.float64)
        total += float(np.einsum("i,i->", block, block))
    return total


def l2_norm(arrays: Iterable[npt.NDArray[np.floating]]) -> float:
    return math.sqrt(sum(sum_squares(a) for a in arrays))


@dataclass(frozen=True)
class Clipped:
    arrays: list[F32]
    factor: float  # 1.0 when the update was within the bound
    norm_before: float
    norm_after: float


def clip(arrays: Sequence[F32], clip_norm: float | None) -> Clipped:
    """Scale all arrays by one factor so their joint L2 norm is ≤ ``clip_norm``."""
    norm = l2_norm(arrays)
    if clip_norm is None or norm <= clip_norm:
        return Clipped(list(arrays), 1.0, norm, norm)
    factor = clip_norm / norm
    scaled = [(a * np.float32(factor)).astype(np.float32, copy=False) for a in arrays]
    after = l2_norm(scaled)
    # float32 rounding can leave the result a hair above the bound; shrink once more.
    if after > clip_norm:
        extra = np.float32(clip_norm / after * (1 - 1e-6))
        scaled = [a * extra for a in scaled]
        factor *= float(extra)
        after = l2_norm(scaled)
    return Clipped(scaled, factor, norm, after)
