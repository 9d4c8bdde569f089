"""The decoder's and weights encoder's fast paths give exactly what the plain
formulations give (bit for bit), and keep refusing bad input."""

from __future__ import annotations

import numpy as np
import pytest

import quantization as q
from quantization import api, bitpack, frame, stochastic
from quantization.testing import reseal


def _per_value_dequantize(qz: stochastic.Quantized) -> np.ndarray:
    levels = (1 << qz.bits) - 1
    idx = np.arange(qz.codes.size) // qz.chunk_size
    s = qz.scales.astype(np.float32)[idx]
    return qz.codes.astype(np.float32) * (s * np.float32(2.0 / levels)) - s


@pytest.mark.parametrize("count", [0, 1, 7, 256, 257, 1000])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_dequantize_matches_per_value_scales(count: int, bits: int) -> None:
    rng = np.random.default_rng(count + bits)
    values = (rng.standard_normal(count) * 1e-3).astype(np.float32)
    qz = stochastic.quantize(values, bits, 256, rng)
    assert np.array_equal(stochastic.dequantize(qz), _per_value_dequantize(qz))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [0, 1, 5, 8, 9, 63, 100])
def test_bitpack_roundtrip_every_width(bits: int, count: int) -> None:
    codes = np.random.default_rng(bits * 100 + count).integers(0, 1 << bits, count)
    packed = bitpack.pack(codes, bits)
    assert len(packed) == bitpack.packed_size(count, bits)
    assert np.array_equal(bitpack.unpack(packed, bits, count), codes.astype(np.uint8))


@pytest.mark.parametrize(
    "weights",
    [
        {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)},
        {"x": np.linspace(-1, 1, 9), "y/z": np.arange(4, dtype=np.float16), "s": np.float32(2)},
        {"t": np.arange(20, dtype=np.float32).reshape(4, 5).T},
        {},
    ],
    ids=["float32", "mixed-dtypes", "non-contiguous", "empty"],
)
def test_encode_weights_is_the_lossless_frame(weights: dict[str, np.ndarray]) -> None:
    plain = api.encode_frame(
        weights, q.CodecSpec(), residual=None, seed=None, kind=frame.WEIGHTS
    ).payload
    assert q.encode_weights(weights) == plain


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"a": np.array([np.nan], np.float32)}, "NaN or infinite"),
        ({"o": np.array([1e300])}, "NaN or infinite"),
        ({"i": np.zeros(2, np.int32)}, "dtype int32"),
        ({"": np.zeros(2, np.float32)}, "non-empty strings"),
    ],
    ids=["nan", "float64-overflow", "int", "empty-name"],
)
def test_encode_weights_refuses_bad_tensors(weights: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(q.CodecError, match=message):
        q.encode_weights(weights)


def test_decoder_recovers_after_a_corrupt_body() -> None:
    """The per-thread zstd decompressor is reused: a corrupt body must not
    poison the next frame."""
    update = {"w": np.linspace(-1, 1, 4000, dtype=np.float32)}
    good = q.encode(update, q.CodecSpec(density=0.1, bits=8), seed=0).payload
    expected = q.decode(good, expected={"w": (4000,)})["w"]
    body = bytearray(good)
    body[-12:-4] = b"\xff" * 8  # inside the zstd body, just before the CRC
    bad = reseal(body)
    for _ in range(2):
        with pytest.raises(q.CodecError):
            q.decode(bad, expected={"w": (4000,)})
        assert np.array_equal(q.decode(good, expected={"w": (4000,)})["w"], expected)


def test_a_bad_spec_is_refused_every_time() -> None:
    """Parsed specs are cached by their bytes; a refused one is not."""
    payload = q.encode({"w": np.ones(10, np.float32)}, q.CodecSpec(), seed=0).payload
    at = payload.index(b"{}", frame.HEADER.size)  # the lossless spec, compact
    forged = reseal(payload[:at] + b'{"' + payload[at + 2 :])
    for _ in range(2):
        with pytest.raises(q.CodecError, match="spec is not valid JSON"):
            q.decode(forged)
