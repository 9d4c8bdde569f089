"""Stochastic rounding: unbiased, bounded error, robust scales, norm bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quantization as q
from quantization import stochastic
from tests.quantization.helpers import update


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 8), st.sampled_from([1, 7, 16, 64]), st.integers(0, 2**32 - 1))
def test_quantization_is_unbiased(bits: int, chunk_size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = {"x": (rng.standard_t(3, 48) * 1e-2).astype(np.float32)}
    spec = q.CodecSpec(bits=bits, chunk_size=chunk_size, error_feedback=False)
    trials = 600
    total = np.zeros(48)
    for trial in range(trials):
        total += q.decode(q.encode(x, spec, seed=seed + trial).payload)["x"]
    mean = total / trials
    # Per element the decoded value has std ≤ step / 2; five standard errors.
    steps = _steps(x["x"], bits, chunk_size)
    assert np.all(np.abs(mean - x["x"]) <= 5 * steps / 2 / np.sqrt(trials) + 1e-9)


def _steps(values: np.ndarray, bits: int, chunk_size: int) -> np.ndarray:
    chunks = np.array_split(np.abs(values), range(chunk_size, values.size, chunk_size))
    maxima = np.repeat([c.max() for c in chunks], [c.size for c in chunks])
    scales = stochastic.round_up_scales(maxima.astype(np.float32)).astype(np.float64)
    return 2 * scales / ((1 << bits) - 1)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 8), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_error_is_within_one_step_of_the_chunk_scale(
    bits: int, chunk_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(2, 1000) * 10.0 ** rng.integers(-6, 3)).astype(np.float32)
    encoded = q.encode({"x": x}, q.CodecSpec(bits=bits, chunk_size=chunk_size), seed=seed)
    decoded = q.decode(encoded.payload)["x"]
    # |error| < step = 2·scale / (2**bits − 1), scale = the chunk's max |v| rounded up to float16
    steps = _steps(x, bits, chunk_size)
    assert np.all(np.abs(decoded - x) <= steps * (1 + 1e-5))
    # ...and each decoded value stays inside its chunk's [-scale, scale].
    assert np.all(np.abs(decoded) <= steps * ((1 << bits) - 1) / 2 * (1 + 1e-6))


def test_scales_round_up_so_no_value_leaves_its_grid() -> None:
    maxima = np.array([0.1, 1e-9, 3.14159, 65504.0, 0.0], dtype=np.float32)
    scales = stochastic.round_up_scales(maxima)
    assert scales.dtype == np.float16
    assert np.all(scales.astype(np.float32) >= maxima)


def test_a_single_huge_value_spoils_only_its_own_chunk() -> None:
    x = np.full(1024, 1e-3, dtype=np.float32)
    x[5] = 1e6  # beyond float16: the tensor's scales switch to float32
    encoded = q.encode({"x": x}, q.CodecSpec(bits=4, chunk_size=64), seed=0)
    decoded = q.decode(encoded.payload)["x"]
    info = q.inspect(encoded.payload).tensors[0]
    assert info.value_bytes == 16 * 4 + 1024 // 2  # 16 float32 scales + 4-bit codes
    # Chunks 1..15 keep a fine grid: error < 2·1e-3/15.
    assert np.all(np.abs(decoded[64:] - x[64:]) < 2 * 1e-3 / 15 * 1.01)
    assert abs(decoded[5] - 1e6) <= 2 * 1e6 / 15


def test_all_zero_chunks_decode_to_exact_zeros() -> None:
    x = np.zeros(300, dtype=np.float32)
    x[290:] = 1.0
    decoded = q.decode(q.encode({"x": x}, q.CodecSpec(bits=1, chunk_size=100), seed=3).payload)
    assert np.all(decoded["x"][:200] == 0)


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from([None, 1, 2, 8]),
    st.sampled_from(["float16", "float32"]),
    st.sampled_from([1.0, 0.05]),
    st.floats(1e-4, 10.0),
    st.integers(0, 2**32 - 1),
)
def test_sent_norm_never_exceeds_clip_norm(
    bits: int | None, values: str, density: float, clip_norm: float, seed: int
) -> None:
    upd = update(seed % 100)
    spec = q.CodecSpec.from_dict(
        {"bits": bits, "density": density, "clip_norm": clip_norm}
        | ({} if bits else {"values": values})
    )
    residual = {k: v * 3 for k, v in update(seed % 100 + 1).items()}  # carried mass
    encoded = q.encode(upd, spec, residual=residual, seed=seed)
    assert encoded.stats.sent_norm <= clip_norm
    acc = {k: np.zeros(v.shape, np.float32) for k, v in upd.items()}
    # A server decoding with max_norm = clip_norm accepts it.
    stats = q.decode_into(
        encoded.payload, acc, 1.0, expected={k: v.shape for k, v in upd.items()},
        max_norm=clip_norm,
    )
    assert stats.l2_norm <= clip_norm


def test_clipping_reports_its_factor_and_norms() -> None:
    x = {"x": np.array([3.0, 4.0], dtype=np.float32)}
    stats = q.encode(x, q.CodecSpec(clip_norm=1.0)).stats
    assert stats.norm_before_clip == pytest.approx(5.0)
    assert stats.norm_after_clip == pytest.approx(1.0, rel=1e-5)
    assert stats.clip_factor == pytest.approx(0.2, rel=1e-5)
    unclipped = q.encode(x, q.CodecSpec(clip_norm=10.0)).stats
    assert unclipped.clip_factor == 1.0
