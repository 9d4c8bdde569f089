"""Decoding untrusted frames: only CodecError, bounded memory, and an
accumulator that is never half-updated."""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import quantization as q
from quantization import frame, indexcoding, stochastic
from tests.quantization.helpers import float_frame, reseal, shapes, update

UPDATE = update(5, sizes=(2000, 16, 600))
EXPECTED = shapes(UPDATE)
BASE = update(6, sizes=(2000, 16, 600))


def _valid_frames() -> list[bytes]:
    specs = [
        q.CodecSpec(density=0.01, bits=8),  # Rice indices, stochastic values
        q.CodecSpec(density=0.02, bits=3, index_coding="varint", chunk_size=7),
        q.CodecSpec(density=0.3, bits=1, index_coding="bitmap"),
        q.CodecSpec(values="float16"),
        q.CodecSpec(density=0.05, clip_norm=0.01),
    ]
    frames = [q.encode(UPDATE, s, seed=1).payload for s in specs]
    frames.append(q.encode_weights(UPDATE))
    moved = {k: v + np.float32(1e-4) * (np.arange(v.size).reshape(v.shape) % 7 == 0)
             for k, v in BASE.items()}
    frames.append(q.encode_model_delta(moved, BASE))
    return frames


FRAMES = _valid_frames()


def _mutate(data: bytes, kind: str, pos: int, blob: bytes, other: bytes) -> bytes:
    pos %= len(data) + 1
    if kind == "flip":
        i = min(pos, len(data) - 1)
        return data[:i] + bytes([data[i] ^ (1 << (blob[0] % 8 if blob else 0))]) + data[i + 1 :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + blob + data[pos:]
    if kind == "overwrite":
        return data[:pos] + blob + data[pos + len(blob) :]
    # splice: the head of one frame on the tail of another
    return data[:pos] + other[pos % (len(other) + 1) :]


mutations = st.tuples(
    st.integers(0, len(FRAMES) - 1),
    st.sampled_from(["flip", "truncate", "insert", "overwrite", "splice"]),
    st.integers(0, 1 << 16),
    st.binary(min_size=1, max_size=12),
    st.integers(0, len(FRAMES) - 1),
    st.booleans(),
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(mutations)
def test_mutated_frames_raise_only_codec_error(case: tuple) -> None:  # type: ignore[type-arg]
    which, kind, pos, blob, other, resealed = case
    data = _mutate(FRAMES[which], kind, pos, blob, FRAMES[other])
    if resealed and len(data) >= 4:
        data = reseal(data)  # get past the checksum: exercise the parser itself
    for attempt in (
        lambda: q.decode(data),
        lambda: q.decode(data, expected=EXPECTED),
        lambda: q.inspect(data),
        lambda: q.decode_weights(data, expected=EXPECTED),
        lambda: q.apply_model_delta(data, BASE),
    ):
        with contextlib.suppress(q.CodecError):
            attempt()

    rng = np.random.default_rng(pos)
    acc = {k: rng.normal(size=s).astype(np.float32) for k, s in EXPECTED.items()}
    before = {k: v.copy() for k, v in acc.items()}
    try:
        q.decode_into(data, acc, 0.7, expected=EXPECTED, max_norm=1.0)
    except q.CodecError:
        for k, value in acc.items():
            assert np.array_equal(value, before[k]), "accumulator changed on a rejected frame"
    else:
        decoded = q.decode(data, expected=EXPECTED)
        for k, value in acc.items():
            np.testing.assert_allclose(value, before[k] + np.float32(0.7) * decoded[k], rtol=1e-6)


def test_flipping_any_bit_is_caught_by_the_checksum() -> None:
    data = FRAMES[0]
    for i in range(0, len(data), max(1, len(data) // 97)):
        flipped = data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]
        with pytest.raises(q.CodecError):
            q.decode(flipped)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than the minimum"),
        (FRAMES[0][:20], "shorter than the minimum"),
        (FRAMES[0][:-1], "checksum"),
        (b"GIF89a" + bytes(64), "not a fedge codec frame"),
    ],
)
def test_truncated_and_foreign_payloads(data: bytes, message: str) -> None:
    with pytest.raises(q.CodecError, match=message):
        q.decode(data)


def test_non_bytes_payload_is_a_codec_error() -> None:
    with pytest.raises(q.CodecError, match="payload must be bytes"):
        q.decode("not bytes")  # type: ignore[arg-type]


def _patch_header(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return reseal(patched)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (4, "<B", 2, "format version 2 is not supported"),
        (5, "<B", 9, "unknown frame kind"),
        (6, "<H", 1, "unknown flags"),
        (8, "<I", 5000, "spec is 5000 bytes"),
        (12, "<I", 10**9, "claims 1000000000 tensors"),
    ],
)
def test_forged_header_fields(offset: int, fmt: str, value: int, message: str) -> None:
    with pytest.raises(q.CodecError, match=message):
        q.decode(_patch_header(FRAMES[0], offset, fmt, value))


def test_invalid_spec_inside_a_frame() -> None:
    data = FRAMES[0]
    (spec_len,) = struct.unpack_from("<I", data, 8)
    spec = json.loads(data[32 : 32 + spec_len])
    spec["bits"] = 12
    forged = json.dumps(spec).encode()
    patched = bytearray(data[:32] + forged + data[32 + spec_len :])
    struct.pack_into("<I", patched, 8, len(forged))
    with pytest.raises(q.CodecError, match=r"codec\.bits"):
        q.decode(reseal(patched))
    deep = b"[" * 2000 + b"]" * 2000
    patched = bytearray(data[:32] + deep + data[32 + spec_len :])
    struct.pack_into("<I", patched, 8, len(deep))
    with pytest.raises(q.CodecError, match="not valid JSON"):
        q.decode(reseal(patched))


def _one_entry_frame(entry: frame.Entry, sections: list[bytes], kind: int = frame.UPDATE) -> bytes:
    return frame.build(kind, q.CodecSpec(), [entry], sections, 3)


def test_decompression_bomb_is_refused_before_inflating() -> None:
    # 64 MiB of zeros compress to a few KB; the table claims 400 bytes.
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(64 * 2**20))
    honest = float_frame("w", (100,), indexcoding.DENSE, b"", np.zeros(100, np.float32))
    body_at = len(honest) - 4 - struct.unpack_from("<Q", honest, 24)[0]
    forged = bytearray(honest[:body_at] + bomb + b"\0\0\0\0")
    struct.pack_into("<Q", forged, 24, len(bomb))
    forged_bytes = reseal(forged)
    tracemalloc.start()
    try:
        with pytest.raises(q.CodecError, match="declares 67108864 bytes"):
            q.decode(forged_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    # Without a declared size the frame is refused too (it cannot be bounded up front).
    unsized = zstandard.ZstdCompressor(level=3, write_content_size=False).compress(bytes(400))
    forged = bytearray(honest[:body_at] + unsized + b"\0\0\0\0")
    struct.pack_into("<Q", forged, 24, len(unsized))
    with pytest.raises(q.CodecError, match="does not declare its size"):
        q.decode(reseal(forged))


def test_forged_sizes_are_checked_before_allocation() -> None:
    # A table row claiming a 2**40-element tensor: refused from the table alone.
    huge = frame.Entry("w", (2**40,), 0, indexcoding.VARINT, frame.FLOAT32, 0, 0, 0, 0, 0, 0)
    tracemalloc.start()
    try:
        with pytest.raises(q.CodecError, match="more than 268435456 bytes"):
            q.decode(_one_entry_frame(huge, [b"", b""]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # The same limit follows the caller's bound and the expected shapes.
    data = q.encode_weights({"w": np.ones(1000, np.float32)})
    with pytest.raises(q.CodecError, match="more than 3999 bytes"):
        q.decode(data, max_decoded_bytes=3999)
    assert q.decode(data, max_decoded_bytes=4000)["w"].size == 1000
    with pytest.raises(q.CodecError, match=r"shape \(1000,\), expected \(100,\)"):
        q.decode(data, expected={"w": (100,)})
    # A huge chunk size would make a naive decoder allocate a chunk's worth of scales.
    big_chunk = frame.Entry("w", (8,), 0, indexcoding.DENSE, frame.STOCHASTIC, 8, 1, 2**31, 8, 0,
                            10)
    with pytest.raises(q.CodecError, match="chunk size 2147483648"):
        q.decode(_one_entry_frame(big_chunk, [b"", bytes(10)]))


def test_duplicate_indices_are_rejected() -> None:
    # LEB128 deltas 5, 0: position 5 twice.
    data = float_frame("w", (10,), indexcoding.VARINT, bytes([5, 0]), np.ones(2, np.float32))
    with pytest.raises(q.CodecError, match="duplicate index"):
        q.decode(data)
    acc = {"w": np.zeros(10, np.float32)}
    with pytest.raises(q.CodecError, match="duplicate index"):
        q.decode_into(data, acc, 1.0, expected={"w": (10,)})
    assert not acc["w"].any()
    rice = indexcoding.rice_encode(np.array([5, 0], dtype=np.uint64), 1)
    data = float_frame("w", (10,), indexcoding.RICE, rice, np.ones(2, np.float32))
    with pytest.raises(q.CodecError, match="duplicate index"):
        q.decode(data)


@pytest.mark.parametrize(
    ("coding", "section", "count", "message"),
    [
        (indexcoding.VARINT, bytes([10]), 1, "outside the tensor"),
        (indexcoding.VARINT, bytes([6, 4]), 2, "outside the tensor"),
        (indexcoding.VARINT, bytes([0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 1, 1]),
         2, "longer than 9 bytes"),
        (indexcoding.VARINT, bytes([0x85, 0x00]), 1, "non-canonical"),
        (indexcoding.VARINT, bytes([0x85]), 1, "exactly 1 values"),
        (indexcoding.BITMAP, bytes([0b0000_0001, 0b0000_0100]), 1, "past the end"),
        (indexcoding.BITMAP, bytes([0b0000_0011, 0]), 1, "marks 2 positions"),
        (indexcoding.RICE, indexcoding.rice_encode(np.array([12], np.uint64), 2), 1,
         "outside the tensor"),
        (indexcoding.RICE, bytes([41, 0, 0, 0, 0, 0, 1]), 1, "rice parameter 41"),
        (indexcoding.RICE, bytes([0, 0b11]), 1, "holds 2 values"),
        (indexcoding.RICE, bytes([0, 1, 0]), 1, "trailing bytes"),
    ],
)
def test_bad_index_sections(coding: int, section: bytes, count: int, message: str) -> None:
    data = float_frame("w", (10,), coding, section, np.ones(count, np.float32))
    with pytest.raises(q.CodecError, match=message):
        q.decode(data)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_in_a_frame_are_rejected(bad: float) -> None:
    values = np.array([1.0, bad, 2.0], dtype=np.float32)
    data = float_frame("w", (3,), indexcoding.DENSE, b"", values)
    with pytest.raises(q.CodecError, match="NaN or infinite"):
        q.decode(data)
    scales = np.array([np.inf], dtype="<f2").tobytes()
    entry = frame.Entry("w", (3,), 0, indexcoding.DENSE, frame.STOCHASTIC, 8, 1, 256, 3, 0, 5)
    with pytest.raises(q.CodecError, match="non-finite scale"):
        q.decode(_one_entry_frame(entry, [b"", scales + bytes(3)]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source_dtype": 7}, "unknown source dtype"),
        ({"value_coding": 9}, "unknown value coding"),
        ({"index_coding": 6}, "unknown index coding"),
        ({"bits": 3}, "must be 0 for float32"),
        ({"nnz": 11}, "do not fit"),
        ({"nnz": 9}, "dense coding with 9 of 10"),
        ({"value_len": 39}, "value section is 39 bytes"),
    ],
)
def test_inconsistent_table_rows(fields: dict[str, int], message: str) -> None:
    base = {
        "name": "w", "shape": (10,), "source_dtype": 0, "index_coding": indexcoding.DENSE,
        "value_coding": frame.FLOAT32, "bits": 0, "scale_dtype": 0, "chunk_size": 0, "nnz": 10,
        "index_len": 0, "value_len": 40,
    }
    entry = frame.Entry(**(base | fields))  # type: ignore[arg-type]
    with pytest.raises(q.CodecError, match=message):
        q.decode(_one_entry_frame(entry, [b"", bytes(entry.value_len)]))


def test_unknown_stochastic_scale_dtype() -> None:
    entry = frame.Entry("w", (3,), 0, indexcoding.DENSE, frame.STOCHASTIC, 8, 5, 256, 3, 0, 5)
    with pytest.raises(q.CodecError, match="unknown scale dtype"):
        q.decode(_one_entry_frame(entry, [b"", bytes(5)]))
    assert stochastic.section_size(3, 8, 256, stochastic.SCALE_FLOAT16) == 5


@pytest.mark.parametrize(
    ("expected", "message"),
    [
        ({"t0": (250, 8), "t1": (2, 8)}, "unexpected tensor 't2'"),
        ({**EXPECTED, "t3": (4,)}, "lacks tensor\\(s\\) \\['t3'\\]"),
        ({**EXPECTED, "t0": (8, 250)}, "'t0' has shape \\(250, 8\\), expected \\(8, 250\\)"),
        ({**EXPECTED, "t1": (16,)}, "'t1' has shape \\(2, 8\\), expected \\(16,\\)"),
    ],
)
def test_wrong_expected_shapes(expected: dict[str, tuple[int, ...]], message: str) -> None:
    with pytest.raises(q.CodecError, match=message):
        q.decode(FRAMES[0], expected=expected)
    acc = {k: np.zeros(s, np.float32) for k, s in expected.items()}
    with pytest.raises(q.CodecError):
        q.decode_into(FRAMES[0], acc, 1.0, expected=expected)
    assert not any(a.any() for a in acc.values())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: q.decode_weights(FRAMES[0]), "this is a update frame; expected weights"),
        (lambda: q.decode(FRAMES[-1]), "delta_xor frame.*use apply_model_delta"),
        (lambda: q.apply_model_delta(FRAMES[0], UPDATE), "expected delta_xor or delta"),
        (lambda: q.apply_model_delta(FRAMES[-1], UPDATE | {"t0": np.zeros(3)}), "shape"),
    ],
)
def test_frame_kind_mismatches(call: Callable[[], object], message: str) -> None:
    with pytest.raises(q.CodecError, match=message):
        call()


def test_a_delta_that_makes_weights_non_finite_is_rejected() -> None:
    base = {"w": np.ones(4, np.float32)}
    # XOR turning 1.0 (0x3f800000) into +inf (0x7f800000).
    words = np.array([0x40000000, 0, 0, 0], dtype=np.uint32)
    new = {"w": (base["w"].view(np.uint32) ^ words).view(np.float32)}
    with pytest.raises(q.CodecError, match="refusing to encode"):
        q.encode_model_delta(new, base)
    entry = frame.Entry("w", (4,), 0, indexcoding.DENSE, frame.XOR32, 0, 0, 0, 4, 0, 16)
    data = frame.build(frame.DELTA_XOR, q.CodecSpec(), [entry], [b"", words.view(np.uint8)
                       .reshape(4, 4).T.tobytes()], 3)
    with pytest.raises(q.CodecError, match="non-finite"):
        q.apply_model_delta(data, base)


def test_a_scale_that_overflows_on_decoding_is_rejected() -> None:
    scales = np.array([3e38], dtype="<f4").tobytes()
    entry = frame.Entry("w", (2,), 0, indexcoding.DENSE, frame.STOCHASTIC, 8, 2, 256, 2, 0, 6)
    data = _one_entry_frame(entry, [b"", scales + bytes([0, 255])])
    with pytest.raises(q.CodecError, match="NaN or infinite"):
        q.decode(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": {"w": [1.0, float("nan")]}}, "NaN or infinite"),
        ({"values": {"w": [1.0, 2.0]}, "indices": {"w": [3, 3]}, "shapes": {"w": (5,)}},
         "duplicate index"),
        ({"values": {"w": [1.0, 2.0]}, "indices": {"w": [3, 1]}, "shapes": {"w": (5,)}},
         "outside the tensor"),
        ({"values": {"w": [1.0]}, "indices": {"w": [5]}, "shapes": {"w": (5,)}},
         "outside the tensor"),
        ({"values": {"w": [1.0]}, "kind": "weights"}, "weights frame; expected update"),
    ],
)
def test_testing_seam_builds_the_frames_a_service_must_refuse(
    kwargs: dict, message: str  # type: ignore[type-arg]
) -> None:
    from quantization.testing import raw_frame

    data = raw_frame(**kwargs)
    shapes_ = kwargs.get("shapes") or {k: np.shape(v) for k, v in kwargs["values"].items()}
    acc = {k: np.zeros(s, np.float64) for k, s in shapes_.items()}
    with pytest.raises(q.CodecError, match=message):
        q.decode_into(data, acc, 1.0, expected=shapes_)
    assert not any(a.any() for a in acc.values())
    good = raw_frame({"w": [1.0, 2.0]}, indices={"w": [0, 4]}, shapes={"w": (5,)})
    assert q.decode(good)["w"].tolist() == [1.0, 0.0, 0.0, 0.0, 2.0]
