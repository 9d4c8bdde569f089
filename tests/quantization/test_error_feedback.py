"""Error feedback: with top-k plus the residual, nothing is lost over rounds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import quantization as q

DIM = (40, 25)


def _rounds(
    spec: q.CodecSpec, seed: int, rounds: int
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Sum of true updates, sum of decoded (sent) updates, residual norms."""
    rng = np.random.default_rng(seed)
    drift = rng.normal(0, 1e-3, DIM).astype(np.float32)  # a consistent direction
    true_sum = np.zeros(DIM)
    sent_sum = np.zeros(DIM)
    residual: dict[str, np.ndarray] | None = None
    norms = []
    for r in range(rounds):
        g = (drift + rng.standard_t(3, DIM) * 1e-3).astype(np.float32)
        encoded = q.encode({"w": g}, spec, residual=residual, seed=seed + r)
        residual = encoded.residual or None
        true_sum += g
        sent_sum += q.decode(encoded.payload)["w"]
        norms.append(float(np.linalg.norm(encoded.residual["w"])) if encoded.residual else 0.0)
    return true_sum, sent_sum, norms


@settings(max_examples=4, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    # Random-k at 1 % needs ~100 rounds to visit every value once; keep it at 5 %.
    st.sampled_from([("topk", 0.01), ("topk", 0.05), ("randomk", 0.05)]),
    st.sampled_from([None, 2, 8]),
)
def test_sum_of_sent_updates_converges_to_sum_of_true_updates(
    seed: int, selection: tuple[str, float], bits: int | None
) -> None:
    sparsify, density = selection
    spec = q.CodecSpec.from_dict({"density": density, "bits": bits, "sparsify": sparsify})
    true_sum, sent_sum, norms = _rounds(spec, seed, rounds=300)
    # Telescoping: sum(sent) = sum(true) − final residual, so the gap is the residual...
    gap = np.linalg.norm(true_sum - sent_sum)
    assert abs(gap - norms[-1]) <= 1e-4 * np.linalg.norm(true_sum)
    # ...which stays bounded instead of growing with the rounds,
    assert max(norms[200:]) <= 2.0 * max(norms[50:150])
    # so the relative error of the running sum shrinks towards zero.
    assert gap / np.linalg.norm(true_sum) < 0.25


def test_without_error_feedback_top_k_loses_most_of_the_signal() -> None:
    spec = q.CodecSpec(density=0.01, bits=8, error_feedback=False)
    true_sum, sent_sum, norms = _rounds(spec, 7, rounds=100)
    assert norms == [0.0] * 100  # nothing is carried
    assert np.linalg.norm(true_sum - sent_sum) / np.linalg.norm(true_sum) > 0.5
