"""Downlink: full model weights, and model deltas between two versions.

The lossless delta is exact: float subtraction does not invert exactly
(``base + (new − base)`` may differ from ``new`` in the last bit), so it is
the XOR of the float32 bit patterns. Weights that did not change XOR to zero
and are left out through the index codings; weights that changed a little
share sign and exponent, so their XOR's high bytes are zero, which the
byte-plane layout and zstd turn into very few bytes. With a lossy spec the
delta is ``new − base`` through that codec (not exact, much smaller).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from quantization import api, floats, frame, indexcoding
from quantization.errors import CodecError
from quantization.spec import CodecSpec

F32 = npt.NDArray[np.float32]


def _float32_tensors(arrays: Mapping[str, npt.ArrayLike], what: str) -> dict[str, F32]:
    if not isinstance(arrays, Mapping):
        raise CodecError(f"{what} must be a mapping of name → array, got {type(arrays).__name__}")
    return {
        api._check_name(name): np.ascontiguousarray(
            api._as_float(name, value, f"{what} tensor"), dtype=np.float32
        )
        for name, value in arrays.items()
    }


def _shapes(arrays: Mapping[str, F32]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(int(d) for d in a.shape) for name, a in arrays.items()}


def weights_digest(weights: Mapping[str, npt.ArrayLike]) -> str:
    """sha256 (hex) of the weights themselves, independent of any frame bytes.

    Frame bytes depend on the zstd library's version and level; this does not.
    It hashes, per tensor in the mapping's order: the UTF-8 name's length (u16
    LE) and bytes, the rank (u8) and dims (u64 LE each), then the float32
    little-endian values in C order. Use it to check weights rebuilt from a
    delta against the weights a server published.
    """
    digest = hashlib.sha256()
    for name, value in _float32_tensors(weights, "weights").items():
        encoded = name.encode("utf-8")
        digest.update(struct.pack("<H", len(encoded)) + encoded)
        digest.update(struct.pack(f"<B{value.ndim}Q", value.ndim, *value.shape))
        digest.update(np.ascontiguousarray(value, dtype="<f4").tobytes())
    return digest.hexdigest()


def encode_weights(weights: Mapping[str, npt.ArrayLike], *, zstd_level: int = 3) -> bytes:
    """The full, lossless (dense float32) frame of a model's weights.

    The same bytes as ``encode_frame`` with the lossless spec, built directly:
    no clipping, selection or norm passes over the weights (a server encodes
    every version it publishes)."""
    spec = CodecSpec(zstd_level=zstd_level)
    if not isinstance(weights, Mapping):
        raise CodecError(f"update must be a mapping of name → array, got {type(weights).__name__}")
    entries: list[frame.Entry] = []
    sections: list[bytes] = []
    for name in weights:
        api._check_name(name)
        source = api._as_float(name, weights[name], "update tensor")
        shape = tuple(int(d) for d in source.shape)
        values = floats.to_bytes(source.astype(np.float32, copy=False).reshape(-1), floats.FLOAT32)
        entries.append(
            frame.Entry(
                name, shape, frame.SOURCE_CODES[source.dtype.name], indexcoding.DENSE,
                frame.FLOAT32, 0, 0, 0, math.prod(shape), 0, len(values),
            )
        )
        sections += [b"", values]
    return frame.build(frame.WEIGHTS, spec, entries, sections, spec.zstd_level)


def decode_weights(
    payload: bytes | bytearray | memoryview,
    expected: Mapping[str, tuple[int, ...]] | None = None,
    max_decoded_bytes: int | None = None,
) -> dict[str, F32]:
    """Inverse of :func:`encode_weights`; refuses any other kind of frame."""
    decoded = api.decode_frame(
        payload, expected=expected, max_decoded_bytes=max_decoded_bytes, kinds=(frame.WEIGHTS,)
    )
    return api.densify(decoded)


def encode_model_delta(
    new: Mapping[str, npt.ArrayLike],
    base: Mapping[str, npt.ArrayLike],
    spec: CodecSpec | None = None,
) -> bytes:
    """A frame that turns ``base`` into ``new``: exact by default (XOR), or
    ``new − base`` through a lossy ``spec``."""
    new32 = _float32_tensors(new, "new weights")
    base32 = _float32_tensors(base, "base weights")
    if _shapes(new32) != _shapes(base32):
        raise CodecError(
            "new and base weights must have the same tensor names and shapes: "
            f"{_shapes(new32)} vs {_shapes(base32)}"
        )
    if spec is not None and not spec.is_lossless:
        difference = {name: new32[name] - base32[name] for name in new32}
        encoded = api.encode_frame(difference, spec, residual=None, seed=None, kind=frame.DELTA)
        return encoded.payload
    spec = spec or CodecSpec.lossless()
    entries: list[frame.Entry] = []
    sections: list[bytes] = []
    for name, a in new32.items():
        words = (a.view(np.uint32) ^ base32[name].view(np.uint32)).reshape(-1)
        changed = np.flatnonzero(words).astype(np.int64)
        icode, isection = indexcoding.encode(changed, words.size, spec.index_coding)
        # Dense costs no index bytes but 4 bytes per unchanged word: pick the smaller.
        if icode != indexcoding.DENSE and len(isection) + 4 * changed.size >= 4 * words.size:
            icode, isection = indexcoding.DENSE, b""
        kept = words if icode == indexcoding.DENSE else words[changed]
        vsection = floats.to_bytes(kept, floats.XOR32)
        entries.append(
            frame.Entry(
                name, tuple(a.shape), frame.SOURCE_CODES["float32"], icode, frame.XOR32,
                0, 0, 0, kept.size, len(isection), len(vsection),
            )
        )
        sections += [isection, vsection]
    return frame.build(frame.DELTA_XOR, spec, entries, sections, spec.zstd_level)


def apply_model_delta(
    payload: bytes | bytearray | memoryview, base: Mapping[str, npt.ArrayLike]
) -> dict[str, F32]:
    """``new`` from ``base`` and a frame of :func:`encode_model_delta`.

    The frame must hold exactly ``base``'s tensor names and shapes."""
    base32 = _float32_tensors(base, "base weights")
    decoded = api.decode_frame(
        payload,
        expected=_shapes(base32),
        max_decoded_bytes=None,
        kinds=(frame.DELTA_XOR, frame.DELTA),
    )
    out: dict[str, F32] = {}
    if decoded.parsed.kind == frame.DELTA:
        for name, difference in api.densify(decoded).items():
            out[name] = base32[name] + difference
    else:
        for e, indices, words in decoded.tensors:
            new = base32[e.name].reshape(-1).view(np.uint32).copy()
            if indices is None:
                new ^= words.astype(np.uint32, copy=False)
            else:
                new[indices] ^= words.astype(np.uint32, copy=False)
            out[e.name] = new.view(np.float32).reshape(e.shape)
    for name, value in out.items():
        if not np.all(np.isfinite(value)):
            raise CodecError(f"applying the delta makes tensor {name!r} non-finite")
        if math.prod(value.shape) != base32[name].size:  # pragma: no cover - guarded by expected
            raise CodecError(f"tensor {name!r} changed size")
    return out
