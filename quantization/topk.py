"""Stage 2: choose which values to send — top-k by magnitude, or random-k.

``k = round(density · n)``, at least 1 for a non-empty selection. With
``scope="global"`` one k is chosen over all tensors together (tensors with
large updates get more of the budget); with ``"per_tensor"`` each tensor keeps
its own fraction (every non-empty tensor sends at least one value).

Random-k sends the chosen values unscaled: with error feedback the rest is
carried to the next round, which is the variant that converges without the
variance blow-up of rescaling by n/k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from quantization.spec import Scope, Sparsify

I64 = npt.NDArray[np.int64]


def budget(n: int, density: float) -> int:
    """Number of values kept out of ``n``."""
    if n == 0:
        return 0
    return int(min(n, max(1, round(density * n))))


_SAMPLE = 1 << 14


def _largest(magnitudes: npt.NDArray[np.floating], k: int) -> I64:
    """Positions of the k largest magnitudes (ties broken arbitrarily), sorted."""
    n = magnitudes.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if n >= 8 * _SAMPLE and k <= n // 8:
        # Estimate a threshold from a strided sample, with a 2× margin, and
        # partition only the candidates above it: one comparison pass instead
        # of a full argpartition (~10× faster at 1 % of 1M). Exact: if at least
        # k values reach the threshold, the k largest are all among them.
        sample = np.sort(magnitudes[:: n // _SAMPLE])
        rank = max(0, sample.size - 1 - int(2 * k * sample.size / n) - 2)
        candidates = np.flatnonzero(magnitudes >= sample[rank])
        if k <= candidates.size <= 8 * k + _SAMPLE:
            keep = candidates.size - k
            picked = candidates[np.argpartition(magnitudes[candidates], keep)[keep:]]
            return np.sort(picked).astype(np.int64, copy=False)
    # argpartition is O(n); only the kept k are sorted afterwards.
    picked = np.argpartition(magnitudes, n - k)[n - k :]
    return np.sort(picked).astype(np.int64, copy=False)


def _random(n: int, k: int, rng: np.random.Generator) -> I64:
    if k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64, copy=False)


def select(
    flats: Sequence[npt.NDArray[np.float32]],
    density: float,
    method: Sparsify,
    scope: Scope,
    rng: np.random.Generator,
) -> list[I64 | None]:
    """Sorted, unique kept indices per tensor; ``None`` means "all of it"."""
    if density >= 1.0:
        return [None] * len(flats)
    if scope == "per_tensor":
        out: list[I64 | None] = []
        for flat in flats:
            k = budget(flat.size, density)
            if method == "topk":
                out.append(_largest(np.abs(flat), k))
            else:
                out.append(_random(flat.size, k, rng))
        return out
    sizes = [f.size for f in flats]
    total = sum(sizes)
    k = budget(total, density)
    if method == "topk":
        magnitudes = np.abs(np.concatenate(flats)) if flats else np.zeros(0, np.float32)
        chosen = _largest(magnitudes, k)
    else:
        chosen = _random(total, k, rng)
    bounds = np.cumsum([0, *sizes])
    cuts = np.searchsorted(chosen, bounds)
    return [
        (chosen[cuts[i] : cuts[i + 1]] - bounds[i]).astype(np.int64, copy=False)
        for i in range(len(flats))
    ]
