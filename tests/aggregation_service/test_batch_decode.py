"""The intake's batched summing (``quantization.decode_many_into``) against
``decode_into`` frame by frame: the same outcomes and the same accumulator,
bit for bit — the property exact replay after a crash rests on, since
recovery sums the log one record at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import quantization as q
from quantization import batch

SHAPES = {"kernel": (60, 50), "bias": (50,)}


def frame(seed: int, scale: float = 1e-2, **spec: Any) -> bytes:
    rng = np.random.default_rng(seed)
    update = {k: (rng.standard_t(3, size=s) * scale).astype(np.float32) for k, s in SHAPES.items()}
    return q.encode(update, q.CodecSpec(**spec), seed=seed).payload


def zeros(dtype: Any = np.float64) -> dict[str, np.ndarray]:
    return {k: np.zeros(s, dtype) for k, s in SHAPES.items()}


def one_by_one(
    frames: list[bytes], weights: list[float], acc: dict[str, np.ndarray], **kw: Any
) -> list[str | None]:
    limit = kw.pop("limit", None)
    out: list[str | None] = []
    for f, w in zip(frames, weights, strict=True):
        if limit is not None and out.count(None) >= limit:
            break
        try:
            q.decode_into(f, acc, w, expected=SHAPES, **kw)
        except q.CodecError as exc:
            out.append(str(exc))
        else:
            out.append(None)
    return out


def batched(
    frames: list[bytes], weights: list[float], acc: dict[str, np.ndarray], **kw: Any
) -> list[str | None]:
    outcomes = q.decode_many_into(frames, acc, weights, expected=SHAPES, **kw)
    return [None if e is None else str(e) for e in outcomes]


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the batch falls back to frame-by-frame decoding: the equality
    tests below must exercise the batched arithmetic, not the fallback."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fell back to decode_into")

    monkeypatch.setattr(batch, "decode_into", refuse)


# Specs that differ per frame within one batch: densities (so Rice parameters
# differ), bit widths, chunk sizes including a short last chunk, float16 values.
MIXED = [
    {"density": 0.01, "bits": 8},
    {"density": 0.05, "bits": 4, "chunk_size": 7},
    {"density": 0.3, "bits": 1},
    {"density": 0.002, "bits": 8, "chunk_size": 1},
    {"density": 0.02, "bits": 3},
    {"density": 0.1, "values": "float16"},
    {"density": 0.1, "values": "float32", "index_coding": "varint"},
    {"density": 0.5, "bits": 8, "index_coding": "bitmap"},
    {"bits": 8},  # dense
    {"density": 0.05, "bits": 8, "scale": 1e6},  # chunks beyond float16: float32 scales
]


@pytest.mark.parametrize("acc_dtype", [np.float64, np.float32])
def test_a_mixed_batch_sums_bit_for_bit_like_frame_by_frame(acc_dtype: Any) -> None:
    frames = [frame(i, **MIXED[i % len(MIXED)]) for i in range(3 * len(MIXED))]
    weights = [float(w) for w in np.random.default_rng(1).uniform(0.05, 40.0, len(frames))]
    # Start from a non-zero sum, as a buffer in the middle of filling does.
    start = {
        k: np.random.default_rng(2).standard_normal(s).astype(acc_dtype) for k, s in SHAPES.items()
    }
    expected_acc = {k: v.copy() for k, v in start.items()}
    assert one_by_one(frames, weights, expected_acc) == [None] * len(frames)
    acc = {k: v.copy() for k, v in start.items()}
    assert batched(frames, weights, acc) == [None] * len(frames)
    assert same_bits(acc, expected_acc)


@pytest.mark.parametrize(
    "same_spec",
    [{"density": 0.02, "bits": 8}, {"density": 0.02, "bits": 8, "scale": 1e6}, None],
    ids=["one-rice-parameter", "float32-scales", "mixed"],
)
def test_rice_and_stochastic_batches_take_the_batched_path(
    no_fallback: None, same_spec: dict[str, Any] | None
) -> None:
    specs = [m for m in MIXED if "index_coding" not in m and "values" not in m]
    if same_spec is not None:
        specs = [same_spec]
    frames = [frame(i, **specs[i % len(specs)]) for i in range(20)]
    weights = [1.0 + i / 7 for i in range(20)]
    expected_acc = zeros()
    one_by_one_outcomes = []
    for f, w in zip(frames, weights, strict=True):  # decode_into is patched out of batch only
        q.decode_into(f, expected_acc, w, expected=SHAPES)
        one_by_one_outcomes.append(None)
    acc = zeros()
    assert batched(frames, weights, acc) == one_by_one_outcomes
    assert same_bits(acc, expected_acc)


@pytest.mark.parametrize("budget", [1, 6000, 20000])
def test_sub_batches_bound_the_work_and_keep_the_order(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """A batch is cut into sub-batches of at most ``_BATCH_BYTES`` of frames
    (one frame at least), so summing queued dense frames never allocates a
    multiple of the model; the sums stay those of one frame at a time."""
    monkeypatch.setattr(batch, "_BATCH_BYTES", budget)
    calls: list[int] = []
    whole = batch._whole  # a sub-batch, on the compiled or the numpy path

    def counting(payloads: Any, *args: Any) -> Any:
        calls.append(len(payloads))
        return whole(payloads, *args)

    monkeypatch.setattr(batch, "_whole", counting)
    frames = [frame(i, **MIXED[i % len(MIXED)]) for i in range(2 * len(MIXED))]
    frames.insert(5, b"garbage frame")
    weights = [0.5 + i for i in range(len(frames))]
    expected_acc, acc = zeros(), zeros()
    want = one_by_one(frames, weights, expected_acc, limit=14)
    assert batched(frames, weights, acc, limit=14) == want
    assert same_bits(acc, expected_acc)
    assert len(calls) > 1 and sum(calls) == len(want)
    if budget == 1:
        assert calls == [1] * len(want)


def test_a_norm_bound_is_decided_per_frame_exactly_as_decode_into_does() -> None:
    frames = [frame(i, density=0.05, bits=8) for i in range(12)]
    norms = [q.inspect(f, expected=SHAPES).l2_norm for f in frames]
    assert norms[3] is not None
    bound = float(norms[3])  # exactly one frame's norm: ≤ passes, others fall either side
    weights = [1.0] * len(frames)
    expected_acc, acc = zeros(), zeros()
    want = one_by_one(frames, weights, expected_acc, max_norm=bound)
    assert want[3] is None and any(w is not None for w in want)
    assert batched(frames, weights, acc, max_norm=bound) == want
    assert same_bits(acc, expected_acc)


def corrupt(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x40
    return bytes(out)


def test_bad_frames_get_their_own_errors_and_change_nothing() -> None:
    good = [frame(i, density=0.02, bits=8) for i in range(6)]
    wrong_shape = q.encode(
        {"kernel": np.ones((5, 5), np.float32), "bias": np.ones(50, np.float32)},
        q.CodecSpec(density=0.5, bits=8),
    ).payload
    weights_frame = q.encode_weights({k: np.ones(s, np.float32) for k, s in SHAPES.items()})
    frames = [
        good[0],
        corrupt(good[1], len(good[1]) // 2),  # checksum
        good[2],
        good[3][:-9],  # truncated
        wrong_shape,
        weights_frame,  # a weights frame is not an update
        b"not a frame",
        good[4],
    ]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    expected_acc, acc = zeros(), zeros()
    want = one_by_one(frames, weights, expected_acc)
    assert [w is None for w in want] == [True, False, True, False, False, False, False, True]
    assert batched(frames, weights, acc) == want
    assert same_bits(acc, expected_acc)


@pytest.mark.parametrize("bad_weight", [float("nan"), float("inf"), True])
def test_a_bad_weight_is_that_frames_error(bad_weight: Any) -> None:
    frames = [frame(i, density=0.02, bits=8) for i in range(3)]
    weights = [1.0, bad_weight, 2.0]
    expected_acc, acc = zeros(), zeros()
    want = one_by_one(frames, weights, expected_acc)
    assert want[1] is not None and "weight" in want[1]
    assert batched(frames, weights, acc) == want
    assert same_bits(acc, expected_acc)


@pytest.mark.parametrize("limit", [0, 1, 4, 10])
def test_the_limit_stops_after_that_many_added(limit: int) -> None:
    frames = [frame(i, density=0.02, bits=8) for i in range(6)]
    frames.insert(2, b"garbage frame")
    weights = [1.0] * len(frames)
    expected_acc, acc = zeros(), zeros()
    want = one_by_one(frames, weights, expected_acc, limit=limit)
    assert batched(frames, weights, acc, limit=limit) == want
    assert want.count(None) == min(limit, 6)
    assert same_bits(acc, expected_acc)


def test_forged_rice_streams_are_refused_like_decode_into() -> None:
    """Flip bytes inside the (decompressed) index section by re-framing: the
    batched checks must refuse exactly what rice_decode / _positions refuse."""
    from quantization import frame as frames_mod

    base = frame(0, density=0.02, bits=8)
    parsed = frames_mod.parse(base, expected=SHAPES)
    outcomes = []
    for offset in range(1, 12):
        sections: list[bytes] = []
        for e, ix, vs in parsed.sections():
            index = bytearray(ix)
            if e.name == "kernel" and offset < len(index):
                index[offset] ^= 0xFF
            sections += [bytes(index), bytes(vs)]
        forged = frames_mod.build(frames_mod.UPDATE, parsed.spec, list(parsed.entries), sections, 3)
        frames = [frame(1, density=0.02, bits=8), forged, frame(2, density=0.02, bits=8)]
        expected_acc, acc = zeros(), zeros()
        want = one_by_one(frames, [1.0, 1.0, 1.0], expected_acc)
        assert batched(frames, [1.0, 1.0, 1.0], acc) == want
        assert same_bits(acc, expected_acc)
        outcomes.append(want[1])
    assert any(o is not None for o in outcomes)  # the forgeries did hit the checks


@pytest.mark.parametrize("scale", [b"\x00\x7e", b"\x00\x7c", b"\x00\xbc"], ids=["nan", "inf", "-1"])
def test_a_forged_scale_is_refused_like_decode_into(scale: bytes) -> None:
    from quantization import frame as frames_mod

    parsed = frames_mod.parse(frame(0, density=0.02, bits=8), expected=SHAPES)
    sections: list[bytes] = []
    for e, ix, vs in parsed.sections():
        values = bytes(vs)
        if e.name == "kernel":  # its first float16 scale
            values = scale + values[2:]
        sections += [bytes(ix), values]
    forged = frames_mod.build(frames_mod.UPDATE, parsed.spec, list(parsed.entries), sections, 3)
    frames = [frame(1, density=0.02, bits=8), forged, frame(2, density=0.02, bits=8)]
    expected_acc, acc = zeros(), zeros()
    want = one_by_one(frames, [1.0, 1.0, 1.0], expected_acc)
    assert want[1] is not None and "scale" in want[1]
    assert batched(frames, [1.0, 1.0, 1.0], acc) == want
    assert same_bits(acc, expected_acc)


def test_frames_and_weights_must_pair_up() -> None:
    with pytest.raises(ValueError, match="2 frames but 1 weights"):
        q.decode_many_into([b"a", b"b"], zeros(), [1.0], expected=SHAPES)
