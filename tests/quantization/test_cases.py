"""Named edge cases of the API, encode side and decode_into's contract."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import quantization as q
from quantization import topk
from tests.conftest import REPO
from tests.quantization.helpers import shapes, update

SPARSE = q.CodecSpec(density=0.01, bits=8)


@pytest.mark.parametrize(
    "spec", [q.CodecSpec.lossless(), SPARSE, q.CodecSpec(density=0.5, scope="per_tensor", bits=2)]
)
def test_empty_tensors_and_scalars(spec: q.CodecSpec) -> None:
    upd = {
        "empty": np.zeros((0,), np.float32),
        "empty2d": np.zeros((3, 0), np.float32),
        "scalar": np.array(0.25, np.float32),
        "w": np.linspace(-1, 1, 50, dtype=np.float32),
    }
    encoded = q.encode(upd, spec, seed=0)
    decoded = q.decode(encoded.payload, expected=shapes(upd))
    assert {k: v.shape for k, v in decoded.items()} == shapes(upd)
    assert decoded["empty"].size == 0 and decoded["scalar"].shape == ()
    if spec.is_lossless:
        assert decoded["scalar"] == np.float32(0.25)


def test_an_update_with_no_tensors() -> None:
    encoded = q.encode({}, SPARSE)
    assert q.decode(encoded.payload) == {}
    assert encoded.stats.parameters == 0 and encoded.stats.ratio == 0.0


@pytest.mark.parametrize("spec", [q.CodecSpec.lossless(), SPARSE, q.CodecSpec(bits=1)])
def test_all_zero_update(spec: q.CodecSpec) -> None:
    upd = {"w": np.zeros((30, 30), np.float32), "b": np.zeros(30, np.float32)}
    encoded = q.encode(upd, spec, seed=1)
    decoded = q.decode(encoded.payload)
    assert all(not v.any() for v in decoded.values())
    assert all(not v.any() for v in encoded.residual.values())
    assert encoded.stats.quantization_error == 0.0 and encoded.stats.sent_norm == 0.0


def test_k_larger_than_the_tensor() -> None:
    # One value per non-empty tensor at least, never more than the tensor holds.
    assert topk.budget(10, 0.001) == 1
    assert topk.budget(1, 0.9) == 1
    assert topk.budget(0, 0.5) == 0
    upd = {"a": np.array([3.0], np.float32), "b": np.array([1.0, -2.0], np.float32)}
    per_tensor = q.encode(upd, q.CodecSpec(density=0.9, scope="per_tensor"))
    decoded = q.decode(per_tensor.payload)
    assert decoded["a"][0] == 3.0 and list(decoded["b"]) == [1.0, -2.0]
    tiny = q.encode(upd, q.CodecSpec(density=0.01))  # global: k = 1 of 3
    assert tiny.stats.nnz == 1
    assert q.decode(tiny.payload)["a"][0] == 3.0


def test_global_top_k_spends_the_budget_where_the_mass_is() -> None:
    upd = {"big": np.full(1000, 1.0, np.float32), "small": np.full(1000, 1e-3, np.float32)}
    stats = q.inspect(q.encode(upd, q.CodecSpec(density=0.1)).payload)
    assert {t.name: t.nnz for t in stats.tensors} == {"big": 200, "small": 0}
    per_tensor = q.inspect(q.encode(upd, q.CodecSpec(density=0.1, scope="per_tensor")).payload)
    assert {t.name: t.nnz for t in per_tensor.tensors} == {"big": 100, "small": 100}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_are_refused_by_name(bad: float) -> None:
    upd = update(0)
    upd["t1"] = upd["t1"].copy()
    upd["t1"].flat[3] = bad
    with pytest.raises(q.CodecError, match="update tensor 't1' has 1 NaN or infinite"):
        q.encode(upd, SPARSE)
    clean = update(0)
    residual = {"t0": np.full(clean["t0"].shape, bad, np.float32)}
    with pytest.raises(q.CodecError, match="residual tensor 't0'"):
        q.encode(clean, SPARSE, residual=residual)


@pytest.mark.parametrize(
    ("upd", "message"),
    [
        ({"w": np.arange(4)}, "dtype int64; expected float32, float16 or float64"),
        ({"w": np.array(["a"])}, "dtype <U1"),
        ({"": np.zeros(2, np.float32)}, "non-empty strings"),
        ({3: np.zeros(2, np.float32)}, "non-empty strings"),
        ({"x" * 2000: np.zeros(2, np.float32)}, "longer than 1024 bytes"),
    ],
)
def test_unencodable_updates(upd: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(q.CodecError, match=message):
        q.encode(upd, SPARSE)


def test_not_a_mapping_or_not_a_spec() -> None:
    with pytest.raises(q.CodecError, match="mapping"):
        q.encode([np.zeros(3)], SPARSE)  # type: ignore[arg-type]
    with pytest.raises(q.CodecError, match="CodecSpec"):
        q.encode({"w": np.zeros(3)}, {"density": 0.1})  # type: ignore[arg-type]


def test_residual_must_match_the_update() -> None:
    upd = update(0)
    with pytest.raises(q.CodecError, match=r"tensors the update does not: \['zz'\]"):
        q.encode(upd, SPARSE, residual={"zz": np.zeros(3, np.float32)})
    with pytest.raises(q.CodecError, match="residual 't0' has shape"):
        q.encode(upd, SPARSE, residual={"t0": np.zeros(3, np.float32)})


def test_float16_and_float64_inputs_are_recorded_and_decoded_as_float32() -> None:
    upd = {"h": np.array([0.5, -1.0], np.float16), "d": np.array([1 / 3], np.float64)}
    payload = q.encode(upd, q.CodecSpec.lossless()).payload
    info = q.inspect(payload)
    assert [t.source_dtype for t in info.tensors] == ["float16", "float64"]
    decoded = q.decode(payload)
    assert decoded["h"].dtype == np.float32 and decoded["d"][0] == np.float32(1 / 3)


def test_encode_never_modifies_the_callers_arrays() -> None:
    upd = update(3)
    residual = update(4)
    before = {k: v.copy() for k, v in upd.items()}
    residual_before = {k: v.copy() for k, v in residual.items()}
    for spec in (SPARSE, q.CodecSpec(clip_norm=1e-4), q.CodecSpec(values="float16")):
        q.encode(upd, spec, residual=residual, seed=0)
    assert all(np.array_equal(upd[k], before[k]) for k in upd)
    assert all(np.array_equal(residual[k], residual_before[k]) for k in residual)


def test_same_seed_same_payload() -> None:
    upd = update(8)
    spec = q.CodecSpec(density=0.05, bits=2, sparsify="randomk")
    assert q.encode(upd, spec, seed=4).payload == q.encode(upd, spec, seed=4).payload
    assert q.encode(upd, spec, seed=4).payload != q.encode(upd, spec, seed=5).payload


def test_error_feedback_off_returns_no_residual() -> None:
    encoded = q.encode(update(0), q.CodecSpec(density=0.01, bits=8, error_feedback=False))
    assert encoded.residual == {}


def test_stats_describe_the_payload() -> None:
    upd = update(9, sizes=(100_000, 1000))
    encoded = q.encode(upd, SPARSE, seed=0)
    s = encoded.stats
    assert s.payload_bytes == len(encoded.payload)
    assert s.dense_bytes == 4 * 101_000 and s.parameters == 101_000
    assert s.ratio == pytest.approx(s.dense_bytes / s.payload_bytes)
    assert s.nnz == 1010 and s.density == pytest.approx(0.01)
    assert 0 < s.quantization_error < 0.05
    assert s.index_codings == {"t0": "rice", "t1": "varint"}
    info = q.inspect(encoded.payload, expected=shapes(upd))
    assert info.spec == SPARSE and info.kind == "update" and info.nnz == 1010
    assert info.l2_norm == pytest.approx(s.sent_norm)


# -- decode_into's contract ------------------------------------------------------


def _acc(dtype: type = np.float32) -> dict[str, np.ndarray]:
    return {k: np.ones(s, dtype) for k, s in shapes(update(0)).items()}


@pytest.mark.parametrize(
    ("accumulator", "weight", "message"),
    [
        ({k: v for k, v in _acc().items() if k != "t1"}, 1.0, "no tensor 't1'"),
        (_acc() | {"t1": np.ones((4, 16), np.float32)}, 1.0, "'t1' has shape"),
        (_acc() | {"t1": np.ones((8, 8), np.int32)}, 1.0, "float32 or float64"),
        (_acc() | {"t1": np.ones((8, 16), np.float32)[:, ::2]}, 1.0, "C-contiguous"),
        (_acc(), float("nan"), "weight must be finite"),
        (_acc(), "1", "weight must be a number"),
    ],
)
def test_decode_into_checks_its_arguments(
    accumulator: dict[str, np.ndarray], weight: float, message: str
) -> None:
    payload = q.encode(update(0), SPARSE, seed=0).payload
    before = {k: v.copy() for k, v in accumulator.items()}
    with pytest.raises(q.CodecError, match=message):
        q.decode_into(payload, accumulator, weight, expected=shapes(update(0)))
    assert all(np.array_equal(accumulator[k], before[k]) for k in before)


def test_decode_into_refuses_an_update_above_max_norm_untouched() -> None:
    upd = update(0)
    encoded = q.encode(upd, SPARSE, seed=0)
    acc = _acc(np.float64)
    with pytest.raises(q.CodecError, match="above the bound"):
        q.decode_into(encoded.payload, acc, 1.0, expected=shapes(upd),
                      max_norm=encoded.stats.sent_norm * 0.99)
    assert all((v == 1).all() for v in acc.values())
    stats = q.decode_into(encoded.payload, acc, 1.0, expected=shapes(upd),
                          max_norm=encoded.stats.sent_norm * 1.01)
    assert stats.tensors == {t.name: t.nnz for t in q.inspect(encoded.payload).tensors}


def test_decode_into_sums_many_updates_like_dense_arithmetic() -> None:
    expected = shapes(update(0))
    acc = {k: np.zeros(s, np.float64) for k, s in expected.items()}
    reference = {k: np.zeros(s, np.float64) for k, s in expected.items()}
    for i in range(5):
        payload = q.encode(update(i), q.CodecSpec(density=0.1, bits=4), seed=i).payload
        q.decode_into(payload, acc, 1.0 + i, expected=expected)
        for k, v in q.decode(payload).items():
            reference[k] += np.float32(1.0 + i) * v
    for k, value in acc.items():
        np.testing.assert_allclose(value, reference[k], rtol=1e-6)


# -- Across numpy versions -------------------------------------------------------

_ENCODE_IN_CHILD = """
import sys, numpy as np, quantization as q
rng = np.random.default_rng(11)
upd = {"w": (rng.standard_t(3, (300, 7)) * 1e-3).astype(np.float32),
       "b": rng.normal(size=9).astype(np.float32)}
specs = [q.CodecSpec.lossless(), q.CodecSpec(density=0.05, bits=4),
         q.CodecSpec(density=0.2, values="float16", index_coding="bitmap")]
frames = [q.encode(upd, s, seed=3).payload for s in specs]
frames.append(q.encode_model_delta({k: v + 1 for k, v in upd.items()}, upd))
if len(sys.argv) > 1:  # decode what the other side encoded, print a digest
    import hashlib
    for path in sys.argv[1:]:
        out = q.decode(open(path, "rb").read())
        print(hashlib.sha256(b"".join(out[k].tobytes() for k in out)).hexdigest())
else:
    sys.stdout.buffer.write(b"".join(len(f).to_bytes(8, "little") + f for f in frames))
"""


def test_frames_are_identical_under_numpy_1_and_2(tflite_python: Path, tmp_path: Path) -> None:
    """The device side may run numpy<2 (tflite-runtime): same bytes, same decode."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [str(tflite_python), "-c", _ENCODE_IN_CHILD], capture_output=True, check=True, env=env
    ).stdout
    frames = []
    while child:
        size = int.from_bytes(child[:8], "little")
        frames.append(child[8 : 8 + size])
        child = child[8 + size :]
    here = {}
    exec(compile(_ENCODE_IN_CHILD.replace("if len(sys.argv) > 1:", "if False:")
                 .replace("    sys.stdout.buffer.write", "    pass  #"), "<encode>", "exec"), here)
    assert frames == here["frames"]  # byte-identical encodings, seeds included
    paths = []
    for i, f in enumerate(frames[:3]):
        paths.append(tmp_path / f"{i}.bin")
        paths[-1].write_bytes(f)
    digests = subprocess.run(
        [str(tflite_python), "-c", _ENCODE_IN_CHILD, *map(str, paths)],
        capture_output=True, check=True, env=env, text=True,
    ).stdout.split()
    for f, digest in zip(frames[:3], digests, strict=True):
        out = q.decode(f)
        assert hashlib.sha256(b"".join(out[k].tobytes() for k in out)).hexdigest() == digest


@pytest.mark.parametrize(
    "distribution", ["normal", "heavy", "ascending", "constant", "few_distinct", "spike"]
)
def test_top_k_is_exact_on_the_fast_path(distribution: str) -> None:
    """The sampled-threshold path must pick the same magnitudes as argpartition."""
    rng = np.random.default_rng(0)
    n, k = 200_000, 2_000  # large enough for the sampled path
    values = {
        "normal": rng.normal(size=n),
        "heavy": rng.standard_t(1.5, n),
        "ascending": np.arange(n, dtype=np.float64),
        "constant": np.ones(n),
        "few_distinct": rng.integers(0, 3, n).astype(np.float64),
        "spike": np.where(np.arange(n) % 997 == 0, 1e6, 1e-3),
    }[distribution]
    magnitudes = np.abs(values).astype(np.float32)
    picked = topk._largest(magnitudes, k)
    assert picked.size == k and np.all(np.diff(picked) > 0)
    reference = np.sort(magnitudes)[n - k :]
    assert np.array_equal(np.sort(magnitudes[picked]), reference)


def test_decode_into_never_materializes_the_dense_update() -> None:
    upd = update(12, sizes=(400_000, 100_000))
    expected = shapes(upd)
    payload = q.encode(upd, SPARSE, seed=0).payload
    acc = {k: np.zeros(s, np.float32) for k, s in expected.items()}
    dense_bytes = 4 * 500_000
    tracemalloc.start()
    try:
        q.decode_into(payload, acc, 1.0, expected=expected)
        _, into_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        q.decode(payload, expected=expected)
        _, decode_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert into_peak < 0.2 * dense_bytes  # ~1 % of the values, and their indices
    assert dense_bytes <= decode_peak < 3 * dense_bytes  # decode does densify


def test_decode_into_a_float64_sum_keeps_the_weight_in_float64() -> None:
    payload = q.encode({"w": np.array([1.0, 3.0], np.float32)}, q.CodecSpec.lossless()).payload
    acc = {"w": np.zeros(2, np.float64)}
    q.decode_into(payload, acc, 1 / 3, expected={"w": (2,)})
    assert acc["w"][1] == 3.0 * (1 / 3)  # not float32(1/3) · 3
    acc32 = {"w": np.zeros(2, np.float32)}
    q.decode_into(payload, acc32, 1 / 3, expected={"w": (2,)})
    assert acc32["w"].dtype == np.float32 and acc32["w"][1] == np.float32(3) * np.float32(1 / 3)


def test_values_beyond_float32_and_overflowing_residuals_are_refused() -> None:
    with pytest.raises(q.CodecError, match="'big' has 1 NaN or infinite value\\(s\\) as float32"):
        q.encode({"big": np.array([1.0, 1e300])}, SPARSE)
    near_max = {"w": np.full(4, 3e38, np.float32)}
    with pytest.raises(q.CodecError, match="update \\+ residual of tensor 'w'"):
        q.encode(near_max, SPARSE, residual=near_max)
