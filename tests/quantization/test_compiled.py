"""The compiled (numba) decoders against the numpy reference: the same decoded
values, the same float64 sums bit for bit in the same order, the same frames
refused with the same errors, and the accumulator untouched on a refusal."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import quantization as q
from quantization import api, batch, frame, indexcoding, stochastic
from tests.conftest import REPO
from tests.quantization.helpers import reseal

compiled = pytest.importorskip("quantization.compiled", reason="numba is not installed")
kernels = pytest.importorskip("quantization.kernels")

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in arrays.items()}


specs = st.builds(
    dict,
    density=st.sampled_from([0.002, 0.01, 0.05, 0.3, 0.7, 1.0]),
    bits=st.one_of(st.none(), st.integers(1, 8)),
    chunk_size=st.sampled_from([1, 7, 64, 256, 5000]),
    index_coding=st.sampled_from(["auto", "varint", "bitmap", "rice"]),
    float16=st.booleans(),
    scope=st.sampled_from(["global", "per_tensor"]),
).map(
    lambda d: q.CodecSpec(
        density=d["density"],
        bits=d["bits"],
        values=None if d["bits"] is not None else ("float16" if d["float16"] else "float32"),
        chunk_size=d["chunk_size"],
        index_coding=d["index_coding"],
        scope=d["scope"],
    )
)


def make_update(seed: int, sizes: tuple[int, ...], scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"t{i}": (rng.standard_t(3, n) * scale).astype(np.float32) for i, n in enumerate(sizes)}


@FAST
@given(
    st.lists(specs, min_size=1, max_size=6),
    st.lists(st.integers(1, 3000), min_size=1, max_size=3),
    st.sampled_from([1e-3, 1.0, 1e5]),  # 1e5: float32 chunk scales (above float16's range)
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**31),
)
def test_same_bits_as_the_numpy_reference(
    spec_list: list[q.CodecSpec], sizes: list[int], scale: float, dtype: Any, seed: int
) -> None:
    assume(scale < 1e4 or all(s.values != "float16" for s in spec_list))
    shapes = {f"t{i}": (n,) for i, n in enumerate(sizes)}
    frames = [
        q.encode(make_update(seed + i, tuple(sizes), scale), spec, seed=seed + i).payload
        for i, spec in enumerate(spec_list)
    ]
    weights = [float(w) for w in np.random.default_rng(seed).uniform(0.1, 3.0, len(frames))]
    start = {k: np.random.default_rng(seed + 9).normal(size=s).astype(dtype) for k, s in
             shapes.items()}
    runs = {name: {k: v.copy() for k, v in start.items()} for name in
            ("reference", "compiled_one", "numpy_many", "compiled_many")}
    for payload, w in zip(frames, weights, strict=True):
        ref = api.decode_into_numpy(payload, runs["reference"], w, expected=shapes)
        fast = compiled.decode_into(payload, runs["compiled_one"], w, expected=shapes)
        assert fast.nnz == ref.nnz and fast.tensors == ref.tensors
        assert fast.l2_norm == pytest.approx(ref.l2_norm, rel=1e-12)
    assert batch.decode_many_into_numpy(frames, runs["numpy_many"], weights, expected=shapes) == [
        None
    ] * len(frames)
    assert compiled.decode_many_into(frames, runs["compiled_many"], weights, expected=shapes) == [
        None
    ] * len(frames)
    for name, acc in runs.items():
        assert bits(acc) == bits(runs["reference"]), name


@FAST
@given(specs, st.lists(st.integers(1, 3000), min_size=1, max_size=3), st.integers(0, 2**31))
def test_decoded_values_and_positions_are_the_references(
    spec: q.CodecSpec, sizes: list[int], seed: int
) -> None:
    shapes = {f"t{i}": (n,) for i, n in enumerate(sizes)}
    payload = q.encode(make_update(seed, tuple(sizes), 1e-3), spec, seed=seed).payload
    reference = api.decode_frame(payload, expected=shapes, max_decoded_bytes=None,
                                 kinds=(frame.UPDATE,))
    decoded = compiled._Decoded([frame.parse(payload, expected=shapes)], shapes)
    assert decoded.failed == 0
    for (e, indices, values), got in zip(reference.tensors, decoded.frame_values(0), strict=True):
        assert got.tobytes() == values.astype(np.float32).tobytes()
        segment = decoded.segments[decoded.names.index(e.name)][0]
        if indices is None:
            assert segment[1] == -1
        else:
            assert np.array_equal(decoded.positions[segment[1] : segment[1] + e.nnz], indices)


# -- Sections at random: accepted by the kernel exactly when by numpy ------------


def _kernel_index(coding: int, section: bytes, n: int, count: int) -> np.ndarray | None:
    """The kernel's positions for one index section, or None if refused."""
    meta = np.zeros((1, kernels.COLUMNS), dtype=np.int64)
    meta[0, [kernels.SIZE, kernels.ICODE, kernels.VCODE, kernels.NNZ]] = [n, coding, 0, count]
    meta[0, [kernels.IOFF, kernels.ILEN, kernels.VOFF, kernels.VLEN]] = [
        0, len(section), len(section), 4 * count,
    ]
    body = np.frombuffer(section + np.ones(count, "<f4").tobytes(), np.uint8).copy()
    positions = np.zeros(count, np.int64)
    failed = kernels.decode_rows(body, meta, positions, np.zeros(count, np.float32),
                                 np.zeros(1), compiled._FACTORS)
    return None if failed else positions


def _numpy_index(coding: int, section: bytes, n: int, count: int) -> np.ndarray | None:
    try:
        out = indexcoding.decode(coding, section, n, count)
    except q.CodecError:
        return None
    assert out is not None
    return out


def _mutations(draw: st.DrawFn, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "add"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        else:
            data += draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@st.composite
def index_sections(draw: st.DrawFn) -> tuple[int, bytes, int, int]:
    n = draw(st.integers(1, 400))
    chosen = sorted(draw(st.sets(st.integers(0, n - 1), max_size=min(n, 60))))
    coding = draw(st.sampled_from([indexcoding.VARINT, indexcoding.BITMAP, indexcoding.RICE]))
    positions = np.array(chosen, dtype=np.int64)
    if coding == indexcoding.BITMAP:
        valid = indexcoding.bitmap_encode(positions, n)
    else:
        deltas = np.diff(positions, prepend=0).astype(np.uint64)
        if positions.size:
            deltas[0] = positions[0]
        valid = (indexcoding.varint_encode(deltas) if coding == indexcoding.VARINT
                 else indexcoding.rice_encode(deltas, draw(st.integers(0, 12))))
    section = draw(st.one_of(st.just(valid), st.builds(lambda: _mutations(draw, valid)),
                             st.binary(max_size=40)))
    count = len(chosen) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    return coding, section, n, max(0, min(count, n))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index_sections())
def test_index_sections_accepted_exactly_when_numpy_accepts(
    case: tuple[int, bytes, int, int],
) -> None:
    coding, section, n, count = case
    want = _numpy_index(coding, section, n, count)
    got = _kernel_index(coding, section, n, count)
    assert (got is None) == (want is None)
    if want is not None:
        assert np.array_equal(got, want)


@st.composite
def value_sections(draw: st.DrawFn) -> tuple[frame.Entry, bytes]:
    count = draw(st.integers(0, 80))
    coding = draw(st.sampled_from([frame.STOCHASTIC, frame.FLOAT16, frame.FLOAT32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    values = (rng.standard_normal(count) * draw(st.sampled_from([1e-3, 1.0, 1e5]))).astype(
        np.float32
    )
    if coding == frame.STOCHASTIC:
        b, chunk = draw(st.integers(1, 8)), draw(st.sampled_from([1, 3, 16, 256]))
        quantized = stochastic.quantize(values, b, chunk, rng)
        valid, sdtype = stochastic.to_bytes(quantized), quantized.scale_dtype
    else:
        b, chunk, sdtype = 0, 0, 0
        from quantization import floats

        with np.errstate(over="ignore"):  # float16 infinities: the decoder must refuse them
            valid = floats.to_bytes(values, coding)
    section = draw(st.one_of(st.just(valid), st.builds(lambda: _mutations(draw, valid)),
                             st.binary(max_size=60)))
    entry = frame.Entry("w", (count,), 0, indexcoding.DENSE, coding, b, sdtype, chunk, count, 0,
                        len(section))
    return entry, section


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value_sections())
def test_value_sections_accepted_exactly_when_numpy_accepts(
    case: tuple[frame.Entry, bytes],
) -> None:
    e, section = case
    try:
        with np.errstate(all="ignore"):
            want: np.ndarray | None = api._values(e, memoryview(section))
    except q.CodecError:
        want = None
    meta = np.zeros((1, kernels.COLUMNS), dtype=np.int64)
    meta[0, :11] = [e.size, e.index_coding, e.value_coding, e.bits, e.scale_dtype, e.chunk_size,
                    e.nnz, 0, 0, 0, len(section)]
    meta[0, kernels.POFF] = -1
    values = np.zeros(e.nnz, np.float32)
    sumsq = np.zeros(1)
    failed = kernels.decode_rows(np.frombuffer(section, np.uint8).copy(), meta,
                                 np.zeros(0, np.int64), values, sumsq, compiled._FACTORS)
    assert (failed != 0) == (want is None)
    if want is not None:
        assert values.tobytes() == want.astype(np.float32).tobytes()
        assert sumsq[0] == pytest.approx(float(np.sum(want.astype(np.float64) ** 2)), rel=1e-12)


def test_every_float16_pattern_converts_exactly() -> None:
    patterns = np.arange(1 << 16, dtype=np.uint16)
    reference = patterns.view(np.float16).astype(np.float64)
    got = np.array([kernels._half(int(p)) for p in patterns])
    finite = np.isfinite(reference)
    assert got[finite].tobytes() == reference[finite].tobytes()  # -0.0 and subnormals too
    assert np.isnan(got[~finite]).all()


def test_float32_patterns_convert_exactly() -> None:
    rng = np.random.default_rng(0)
    special = np.array([0, 0x80000000, 1, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000,
                        0xFF800000, 0x7FC00000], dtype=np.uint32)
    patterns = np.concatenate([special, rng.integers(0, 1 << 32, 20000, dtype=np.uint32)])
    with np.errstate(invalid="ignore"):  # NaN patterns
        reference = patterns.view(np.float32).astype(np.float64)
    got = np.array([kernels._single(int(p)) for p in patterns])
    finite = np.isfinite(reference)
    assert got[finite].tobytes() == reference[finite].tobytes()
    assert np.isnan(got[~finite]).all()


# -- Hostile frames through the compiled path -------------------------------------

BASE_UPDATE = make_update(5, (2000, 16, 600), 1e-3)
EXPECTED = {k: v.shape for k, v in BASE_UPDATE.items()}
FRAMES = [
    q.encode(BASE_UPDATE, spec, seed=1).payload
    for spec in (
        q.CodecSpec(density=0.01, bits=8),
        q.CodecSpec(density=0.02, bits=3, index_coding="varint", chunk_size=7),
        q.CodecSpec(density=0.3, bits=1, index_coding="bitmap"),
        q.CodecSpec(values="float16"),
        q.CodecSpec(density=0.05, values="float16", index_coding="rice"),
        q.CodecSpec(density=0.05, clip_norm=0.01),
    )
]


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except q.CodecError as exc:
        return "error", str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(FRAMES) - 1),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from([None, 1.0, 0.02]),
)
def test_mutated_frames_same_outcome_as_the_reference(
    which: int, edits: list[tuple[int, int]], resealed: bool, max_norm: float | None
) -> None:
    data = bytearray(FRAMES[which])
    for pos, value in edits:
        data[pos % len(data)] = value
    payload = reseal(data) if resealed else bytes(data)
    rng = np.random.default_rng(len(edits))
    start = {k: rng.normal(size=s) for k, s in EXPECTED.items()}
    ref_acc = {k: v.copy() for k, v in start.items()}
    fast_acc = {k: v.copy() for k, v in start.items()}
    want = _outcome(lambda: api.decode_into_numpy(payload, ref_acc, 0.7, expected=EXPECTED,
                                                  max_norm=max_norm))
    got = _outcome(lambda: compiled.decode_into(payload, fast_acc, 0.7, expected=EXPECTED,
                                                max_norm=max_norm))
    assert got[0] == want[0]
    if want[0] == "error":
        assert got[1] == want[1]
        assert bits(fast_acc) == bits(start), "accumulator changed on a refused frame"
    assert bits(fast_acc) == bits(ref_acc)
    # In a batch with good frames around it: the same outcomes and sums.
    batch_payloads = [FRAMES[0], payload, FRAMES[1]]
    ref_many = {k: v.copy() for k, v in start.items()}
    fast_many = {k: v.copy() for k, v in start.items()}
    want_many = batch.decode_many_into_numpy(batch_payloads, ref_many, [1.0, 0.7, 2.0],
                                             expected=EXPECTED, max_norm=max_norm)
    got_many = compiled.decode_many_into(batch_payloads, fast_many, [1.0, 0.7, 2.0],
                                         expected=EXPECTED, max_norm=max_norm)
    assert [str(x) for x in got_many] == [str(x) for x in want_many]
    assert bits(fast_many) == bits(ref_many)


def test_norm_at_the_bound_is_decided_as_the_reference_decides() -> None:
    payload = FRAMES[0]
    norm = api.decode_into_numpy(payload, {k: np.zeros(s) for k, s in EXPECTED.items()}, 1.0,
                                 expected=EXPECTED).l2_norm
    for bound in (norm, np.nextafter(norm, 0.0), np.nextafter(norm, 1.0), norm * (1 - 1e-9)):
        ref = _outcome(lambda b=bound: api.decode_into_numpy(
            payload, {k: np.zeros(s) for k, s in EXPECTED.items()}, 1.0, expected=EXPECTED,
            max_norm=float(b)))
        fast = _outcome(lambda b=bound: compiled.decode_into(
            payload, {k: np.zeros(s) for k, s in EXPECTED.items()}, 1.0, expected=EXPECTED,
            max_norm=float(b)))
        assert fast[0] == ref[0], bound
        many = compiled.decode_many_into([payload], {k: np.zeros(s) for k, s in EXPECTED.items()},
                                         [1.0], expected=EXPECTED, max_norm=float(bound))
        assert (many == [None]) == (ref[0] == "ok")


def test_scatter_refuses_positions_outside_the_accumulator_before_writing() -> None:
    acc = np.zeros(10)
    values = np.ones(3, np.float32)
    for positions in ([1, 2, 10], [3, 3, 4], [5, 4, 6], [-1, 2, 3]):
        segments = np.array([[0, 0, 3, 0]], np.int64)
        ok = kernels.scatter(acc, np.array(positions, np.int64), values, segments, np.ones(1))
        assert not ok and not acc.any()
    assert not kernels.scatter(acc, np.zeros(0, np.int64), values, np.array([[0, -1, 3, 0]]),
                               np.ones(1))  # a dense segment must cover the tensor
    assert kernels.scatter(acc, np.array([0, 9], np.int64), values, np.array([[1, 0, 2, 0]]),
                           np.full(1, 2.0))
    assert acc.tolist() == [2.0] + [0.0] * 8 + [2.0]


def test_warm_up_leaves_nothing_to_compile_on_the_request_path() -> None:
    compiled.warm_up()
    before = {name: len(getattr(kernels, name).signatures) for name in ("decode_rows", "scatter")}
    for dtype in (np.float32, np.float64):
        acc = {k: np.zeros(s, dtype) for k, s in EXPECTED.items()}
        for payload in FRAMES:
            compiled.decode_into(payload, acc, 0.5, expected=EXPECTED)
        compiled.decode_many_into(FRAMES, acc, [0.5] * len(FRAMES), expected=EXPECTED)
        with contextlib.suppress(q.CodecError):
            compiled.decode_into(reseal(FRAMES[0][:-9] + b"\0" * 9), acc, 1.0, expected=EXPECTED)
    after = {name: len(getattr(kernels, name).signatures) for name in ("decode_rows", "scatter")}
    assert after == before


# -- Choosing the path --------------------------------------------------------------


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **env}, check=False,
    )


SHOW = "from quantization import accel; b = accel.backend(); print(b.name, '|', b.reason)"


@pytest.mark.parametrize(
    ("value", "name"), [("off", "numpy"), ("0", "numpy"), ("auto", "numba"), ("", "numba"),
                        ("on", "numba")],
)
def test_environment_variable_chooses_the_path(value: str, name: str) -> None:
    out = _python(SHOW, FEDGE_CODEC_JIT=value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" | ")[0] == name


def test_a_bad_environment_value_is_a_clear_error() -> None:
    out = _python("import numpy as np, quantization as q\n"
                  "q.decode_into(b'', {}, 1.0, expected={})", FEDGE_CODEC_JIT="fast")
    assert out.returncode != 0
    assert "FEDGE_CODEC_JIT='fast': expected one of auto, on, off" in out.stderr


def test_without_numba_auto_falls_back_and_on_refuses() -> None:
    hide = "import sys; sys.modules['numba'] = None\n"  # import numba → ImportError
    out = _python(hide + SHOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("numpy | compiled kernels unavailable (ModuleNotFoundError")
    out = _python(hide + SHOW, FEDGE_CODEC_JIT="on")
    assert out.returncode != 0
    assert "FEDGE_CODEC_JIT=on but the compiled codec kernels cannot load" in out.stderr


def test_kernels_that_fail_to_compile_fall_back_or_refuse() -> None:
    broken = (
        "import quantization.compiled as c\n"
        "def fail():\n    raise RuntimeError('no code generator for this CPU')\n"
        "c.warm_up = fail\n"
    )
    out = _python(broken + SHOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "numpy | compiled kernels unavailable (RuntimeError: no code generator for this CPU)"
    )
    out = _python(broken + SHOW, FEDGE_CODEC_JIT="on")
    assert out.returncode != 0
    assert "no code generator for this CPU" in out.stderr


def test_compiled_code_is_cached_between_processes(tmp_path: Any) -> None:
    code = (
        "from quantization import accel, kernels\n"
        "accel.warm_up()\n"
        "s = kernels.decode_rows.stats\n"
        "print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n"
    )
    env = {"FEDGE_CODEC_JIT": "on", "FEDGE_CODEC_JIT_CACHE": str(tmp_path / "cache")}
    first = _python(code, **env)
    assert first.returncode == 0, first.stderr
    assert any((tmp_path / "cache").rglob("*.nbi")), "nothing was cached"
    second = _python(code, **env)
    assert second.returncode == 0, second.stderr
    hits, misses = map(int, second.stdout.split())
    assert hits >= 1 and misses == 0


def test_the_cache_moves_out_of_a_read_only_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantization import accel

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("FEDGE_CODEC_JIT_CACHE", raising=False)
    monkeypatch.setattr(accel, "_writable", lambda path: False)
    chosen = accel._cache_dir()
    assert chosen is not None and chosen.name == f"fedge-numba-{os.getuid()}"
    monkeypatch.setenv("FEDGE_CODEC_JIT_CACHE", "/srv/cache")
    assert str(accel._cache_dir()) == "/srv/cache"
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/elsewhere")
    assert accel._cache_dir() is None  # numba's own variable wins


@pytest.mark.slow
def test_fuzzing_with_bounds_checks_on_finds_no_out_of_range_access(tmp_path: Any) -> None:
    """numba does not check indices; with NUMBA_BOUNDSCHECK=1 it does (an
    IndexError), so the hostile-frame tests here would fail on any read or
    write outside an array."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         str(REPO / "tests" / "quantization" / "test_compiled.py"),
         "-k", "mutated_frames or accepted_exactly or scatter_refuses"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "NUMBA_BOUNDSCHECK": "1",
             "NUMBA_CACHE_DIR": str(tmp_path)},
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
