"""Round trips: lossless modes are exact, lossy modes decode what they say
they sent, and decode_into agrees with decode."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import quantization as q
from quantization import bitpack, indexcoding
from tests.quantization.helpers import shapes, update

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
tensor_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12)
tensors = st.dictionaries(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8),
    tensor_shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=finite32)),
    min_size=1,
    max_size=4,
)


def bits_of(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: np.ascontiguousarray(v, dtype=np.float32).tobytes() for k, v in arrays.items()}


@FAST
@given(tensors)
def test_lossless_update_is_exact(update_: dict[str, np.ndarray]) -> None:
    encoded = q.encode(update_, q.CodecSpec.lossless())
    decoded = q.decode(encoded.payload, expected=shapes(update_))
    assert list(decoded) == list(update_)  # tensor order = mapping order
    assert bits_of(decoded) == bits_of(update_)  # bit-exact, -0.0 included
    assert encoded.residual == {}


@FAST
@given(tensors)
def test_weights_frame_is_exact(weights: dict[str, np.ndarray]) -> None:
    payload = q.encode_weights(weights)
    assert bits_of(q.decode_weights(payload, expected=shapes(weights))) == bits_of(weights)
    assert q.inspect(payload).kind == "weights"


@FAST
@given(tensors, st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_xor_model_delta_is_exact(
    base: dict[str, np.ndarray], seed: int, changed: float
) -> None:
    rng = np.random.default_rng(seed)
    new = {}
    for k, v in base.items():
        moved = v + rng.normal(0, 1e-3, v.shape).astype(np.float32)
        new[k] = np.where(rng.random(v.shape) < changed, moved, v).astype(np.float32)
    payload = q.encode_model_delta(new, base)
    assert bits_of(q.apply_model_delta(payload, base)) == bits_of(new)


def test_xor_delta_of_unchanged_weights_is_tiny() -> None:
    base = update(1, sizes=(100_000,))
    payload = q.encode_model_delta(base, base)
    assert len(payload) < 400  # header, spec and table; 400 KB as dense float32
    assert q.inspect(payload).tensors[0].nnz == 0


def test_xor_delta_is_exact_where_subtraction_is_not() -> None:
    base = {"w": np.array([1e8, 0.1, -3.0], dtype=np.float32)}
    new = {"w": np.array([1.0, 0.30000001, 7e-39], dtype=np.float32)}  # incl. a subnormal
    naive = base["w"] + (new["w"] - base["w"])
    assert not np.array_equal(naive, new["w"])  # why XOR is needed at all
    out = q.apply_model_delta(q.encode_model_delta(new, base), base)
    assert out["w"].tobytes() == new["w"].tobytes()


def test_lossy_model_delta_applies_new_minus_base() -> None:
    base = update(2)
    new = {k: v + update(3)[k] for k, v in base.items()}
    spec = q.CodecSpec(values="float16")
    out = q.apply_model_delta(q.encode_model_delta(new, base, spec), base)
    for k in base:
        # float16 keeps 11 significant bits of each difference.
        np.testing.assert_allclose(out[k] - base[k], new[k] - base[k], rtol=1e-3, atol=1e-7)


@FAST
@given(tensors)
def test_float16_values_decode_to_the_float16_cast(update_: dict[str, np.ndarray]) -> None:
    clipped = {k: np.clip(v, -6e4, 6e4) for k, v in update_.items()}
    encoded = q.encode(clipped, q.CodecSpec(values="float16"))
    decoded = q.decode(encoded.payload)
    for k, v in clipped.items():
        assert decoded[k].tobytes() == v.astype(np.float16).astype(np.float32).tobytes()
        assert np.array_equal(encoded.residual[k], v - decoded[k])


@FAST
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.001, 0.01, 0.1, 0.5]),
    st.sampled_from(["topk", "randomk"]),
    st.sampled_from(["global", "per_tensor"]),
    st.sampled_from([None, 1, 3, 8]),
)
def test_sparse_decode_matches_residual_and_decode_into(
    seed: int, density: float, sparsify: str, scope: str, bits: int | None
) -> None:
    upd = update(seed % 1000)
    spec = q.CodecSpec.from_dict(
        {"density": density, "sparsify": sparsify, "scope": scope, "bits": bits}
    )
    encoded = q.encode(upd, spec, seed=seed)
    decoded = q.decode(encoded.payload, expected=shapes(upd))
    for k, v in upd.items():
        # What was sent plus what is carried is the input (up to float32 rounding).
        scale = max(float(np.abs(v).max()), float(np.abs(decoded[k]).max()))
        np.testing.assert_allclose(decoded[k] + encoded.residual[k], v, atol=1e-6 * scale)
    info = q.inspect(encoded.payload)
    assert info.nnz == encoded.stats.nnz
    assert encoded.stats.density == pytest.approx(density, rel=0.1, abs=4 / info.parameters)
    acc = {k: np.full(v.shape, 0.5, dtype=np.float64) for k, v in upd.items()}
    stats = q.decode_into(encoded.payload, acc, 3.0, expected=shapes(upd))
    for k in upd:
        np.testing.assert_allclose(acc[k], 0.5 + 3.0 * decoded[k].astype(np.float64), rtol=1e-6)
    assert stats.nnz == encoded.stats.nnz
    assert stats.l2_norm == pytest.approx(encoded.stats.sent_norm, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 5000).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), max_size=min(n, 300)))
    ),
    st.sampled_from(["auto", "varint", "bitmap", "rice"]),
)
def test_index_codings_round_trip(case: tuple[int, set[int]], force: str) -> None:
    n, chosen = case
    indices = np.array(sorted(chosen), dtype=np.int64)
    coding, section = indexcoding.encode(indices, n, force)
    decoded = indexcoding.decode(coding, section, n, indices.size)
    expected = np.arange(n) if decoded is None else indices
    assert np.array_equal(np.arange(n) if decoded is None else decoded, expected)


def test_auto_index_coding_picks_the_smallest() -> None:
    rng = np.random.default_rng(0)
    n = 100_000
    for density in (0.001, 0.01, 0.3):
        indices = np.sort(rng.choice(n, int(n * density), replace=False)).astype(np.int64)
        sizes = {
            force: len(indexcoding.encode(indices, n, force)[1])
            for force in ("varint", "bitmap", "rice")
        }
        _, auto = indexcoding.encode(indices, n, "auto")
        assert len(auto) == min(sizes.values()), sizes
    # Dense selections cost no index bytes at all.
    assert indexcoding.encode(np.arange(n, dtype=np.int64), n) == (indexcoding.DENSE, b"")


def test_rice_beats_varint_on_random_positions_at_one_percent() -> None:
    rng = np.random.default_rng(1)
    indices = np.sort(rng.choice(1_000_000, 10_000, replace=False)).astype(np.int64)
    varint = len(indexcoding.encode(indices, 1_000_000, "varint")[1])
    rice = len(indexcoding.encode(indices, 1_000_000, "rice")[1])
    assert rice * 8 / 10_000 < 8.4  # bits per index; the entropy is ≈ 8.1
    assert rice < 0.85 * varint


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(0, 70), st.integers(0, 2**32 - 1))
def test_bit_packing_round_trips(bits: int, count: int, seed: int) -> None:
    codes = np.random.default_rng(seed).integers(0, 1 << bits, count).astype(np.uint8)
    packed = bitpack.pack(codes, bits)
    assert len(packed) == bitpack.packed_size(count, bits)
    reference = np.packbits(
        ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1), bitorder="little"
    )
    assert packed == reference.tobytes()  # the documented LSB-first stream
    assert np.array_equal(bitpack.unpack(packed, bits, count), codes)


def test_weights_digest_hashes_values_not_frame_bytes() -> None:
    weights = update(4)
    digest = q.weights_digest(weights)
    level1 = q.decode_weights(q.encode_weights(weights, zstd_level=1))
    level19 = q.decode_weights(q.encode_weights(weights, zstd_level=19))
    assert q.weights_digest(level1) == q.weights_digest(level19) == digest
    flipped = {k: v.copy() for k, v in weights.items()}
    flipped["t1"].view(np.uint32).flat[0] ^= 1  # one bit of one weight
    assert q.weights_digest(flipped) != digest
    reshaped = {**weights, "t1": weights["t1"].reshape(-1)}  # same values, other shape
    assert q.weights_digest(reshaped) != digest
    renamed = {("u1" if k == "t1" else k): v for k, v in weights.items()}
    assert q.weights_digest(renamed) != digest


def test_float16_values_beyond_its_range_are_refused_not_sent_as_inf() -> None:
    update_ = {"w": np.array([1.0, 7e4, -2.0], np.float32)}
    with pytest.raises(q.CodecError, match="beyond float16's range"):
        q.encode(update_, q.CodecSpec(values="float16"))
    # Stochastic values take any finite magnitude (float32 chunk scales).
    payload = q.encode(update_, q.CodecSpec(bits=8), seed=0).payload
    assert np.isfinite(q.decode(payload)["w"]).all()
