"""encode / decode / decode_into / inspect: the pipeline end to end.

Encoding runs clip → (+ residual) → sparsify → quantize → index coding →
zstd → frame. Decoding parses and validates the whole frame before it
returns anything or touches a caller's accumulator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from quantization import accel, floats, frame, indexcoding, stochastic, topk
from quantization import clip as clipping
from quantization.errors import CodecError
from quantization.spec import CodecSpec

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Shapes = Mapping[str, tuple[int, ...]]

# The encoder aims this far under clip_norm so that a server recomputing the
# norm with another summation order still finds it within the bound.
_NORM_MARGIN = 1e-6


@dataclass(frozen=True)
class EncodeStats:
    """What one encode did; every figure is for this update only."""

    payload_bytes: int
    dense_bytes: int  # the same tensors as dense float32
    ratio: float  # dense_bytes / payload_bytes
    parameters: int
    nnz: int  # values sent
    density: float  # nnz / parameters
    clip_factor: float  # 1.0 when not clipped
    norm_before_clip: float
    norm_after_clip: float
    sent_norm: float  # L2 norm of what decode() returns
    quantization_error: float  # ‖sent − kept‖ / ‖kept‖ over the kept values
    index_bytes: int  # before zstd
    value_bytes: int  # before zstd
    index_codings: Mapping[str, str]
    seconds: float


@dataclass(frozen=True)
class Encoded:
    payload: bytes
    # What was not sent (and the quantization error of what was), to add to the
    # next update. Empty when error feedback is off or the spec is lossless.
    residual: dict[str, F32]
    stats: EncodeStats


@dataclass(frozen=True)
class DecodeStats:
    l2_norm: float  # of the decoded update (before the weight)
    nnz: int
    parameters: int
    payload_bytes: int
    tensors: Mapping[str, int]  # nnz per tensor
    seconds: float


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    source_dtype: str
    index_coding: str
    value_coding: str
    bits: int
    nnz: int
    index_bytes: int
    value_bytes: int


@dataclass(frozen=True)
class FrameInfo:
    kind: str  # "update", "weights", "delta_xor" or "delta"
    version: int
    spec: CodecSpec
    tensors: tuple[TensorInfo, ...]
    l2_norm: float | None  # None for an XOR delta, whose words are not values
    nnz: int
    parameters: int
    payload_bytes: int


# -- Input checks ---------------------------------------------------------------


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise CodecError(f"tensor names must be non-empty strings, got {name!r}")
    if len(name.encode("utf-8")) > frame.MAX_NAME_BYTES:
        raise CodecError(f"tensor name {name[:40]!r}… is longer than {frame.MAX_NAME_BYTES} bytes")
    return name


def _as_float(name: str, value: object, what: str) -> npt.NDArray[np.floating]:
    """The array, if it is float16/32/64 and finite once cast to float32."""
    array = np.asarray(value)
    if array.dtype.name not in frame.SOURCE_CODES:
        raise CodecError(
            f"{what} {name!r} has dtype {array.dtype}; expected float32, float16 or float64"
        )
    with np.errstate(over="ignore"):  # overflow is what the check reports
        _check_finite(name, array.astype(np.float32, copy=False), what)
    return array


def _check_finite(name: str, array: npt.NDArray[np.floating], what: str) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise CodecError(
            f"{what} {name!r} has {bad} NaN or infinite value(s) as float32; refusing to encode"
        )


def _flat_f32(array: npt.NDArray[np.floating]) -> F32:
    return np.array(array, dtype=np.float32, copy=True).reshape(-1)


# -- Encoding ------------------------------------------------------------------


@dataclass(frozen=True)
class _Sent:
    """One tensor's kept values, as coded and as decoded."""

    indices: I64 | None
    kept: F32
    decoded: F32
    quantized: stochastic.Quantized | None


def _quantize(
    indices: I64 | None, kept: F32, spec: CodecSpec, rng: np.random.Generator
) -> _Sent:
    if spec.value_coding == "stochastic":
        bits = spec.bits if spec.bits is not None else 8  # always set: CodecSpec checks it
        q = stochastic.quantize(kept, bits, spec.chunk_size, rng)
        return _Sent(indices, kept, stochastic.dequantize(q), q)
    if spec.value_coding == "float16":
        with np.errstate(over="ignore"):  # reported just below
            half = kept.astype(np.float16)
        if not np.all(np.isfinite(half)):
            raise CodecError(
                f"a value of magnitude {float(np.abs(kept).max()):.6g} is beyond float16's "
                f"range ({stochastic.FLOAT16_MAX:g}); use values 'float32' or stochastic bits"
            )
        return _Sent(indices, kept, half.astype(np.float32), None)
    return _Sent(indices, kept, kept, None)


def _shrink(sent: _Sent, factor: float, spec: CodecSpec) -> _Sent:
    if sent.quantized is not None:
        q = stochastic.shrink(sent.quantized, factor)
        return _Sent(sent.indices, sent.kept, stochastic.dequantize(q), q)
    scaled = sent.decoded * np.float32(factor)
    if spec.value_coding == "float16":
        # Round toward zero so float16 storage cannot push the norm back up.
        half = scaled.astype(np.float16)
        up = np.abs(half.astype(np.float32)) > np.abs(scaled)
        half[up] = np.nextafter(half[up], np.float16(0))
        scaled = half.astype(np.float32)
    return _Sent(sent.indices, sent.kept, scaled, None)


def _value_section(sent: _Sent, spec: CodecSpec) -> tuple[int, bytes, int, int, int]:
    """(value coding, bytes, bits, scale dtype, chunk size)."""
    if sent.quantized is not None:
        q = sent.quantized
        return frame.STOCHASTIC, stochastic.to_bytes(q), q.bits, q.scale_dtype, q.chunk_size
    if spec.value_coding == "float16":
        return frame.FLOAT16, floats.to_bytes(sent.decoded, floats.FLOAT16), 0, 0, 0
    return frame.FLOAT32, floats.to_bytes(sent.decoded, floats.FLOAT32), 0, 0, 0


def encode(
    update: Mapping[str, npt.ArrayLike],
    spec: CodecSpec,
    *,
    residual: Mapping[str, npt.ArrayLike] | None = None,
    seed: int | None = None,
) -> Encoded:
    """Compress an update (``{name: array}``, in the mapping's order).

    ``residual`` (what an earlier encode returned) is added to the clipped
    update whenever it is given; ``spec.error_feedback`` only decides whether a
    new residual is returned. ``seed`` makes random-k and stochastic rounding
    reproducible (the same inputs and seed give the same bytes).
    """
    return encode_frame(update, spec, residual=residual, seed=seed, kind=frame.UPDATE)


def encode_frame(
    update: Mapping[str, npt.ArrayLike],
    spec: CodecSpec,
    *,
    residual: Mapping[str, npt.ArrayLike] | None,
    seed: int | None,
    kind: int,
) -> Encoded:
    started = time.perf_counter()
    if not isinstance(spec, CodecSpec):
        raise CodecError(f"spec must be a CodecSpec, got {type(spec).__name__}")
    if not isinstance(update, Mapping):
        raise CodecError(f"update must be a mapping of name → array, got {type(update).__name__}")
    names = [_check_name(n) for n in update]
    sources = {n: _as_float(n, update[n], "update tensor") for n in names}
    shapes = {n: tuple(int(d) for d in a.shape) for n, a in sources.items()}
    flats = [_flat_f32(sources[n]) for n in names]

    clipped = clipping.clip(flats, spec.clip_norm)
    work = clipped.arrays
    if residual:
        unknown = [str(n) for n in residual if n not in shapes]
        if unknown:
            raise CodecError(f"residual has tensors the update does not: {unknown}")
        # ``work`` holds private float32 copies (never the caller's arrays).
        for i, n in enumerate(names):
            if n in residual:
                r = _as_float(n, residual[n], "residual tensor")
                if tuple(r.shape) != shapes[n]:
                    raise CodecError(
                        f"residual {n!r} has shape {tuple(r.shape)}, the update {shapes[n]}"
                    )
                with np.errstate(over="ignore"):  # reported just below
                    work[i] += r.reshape(-1).astype(np.float32)
                _check_finite(n, work[i], "update + residual of tensor")

    rng = np.random.default_rng(seed)
    chosen = topk.select(work, spec.density, spec.sparsify, spec.scope, rng)
    sent = [
        _quantize(idx, flat if idx is None else flat[idx], spec, rng)
        for flat, idx in zip(work, chosen, strict=True)
    ]

    sent_norm = clipping.l2_norm(s.decoded for s in sent)
    if spec.clip_norm is not None:
        bound = spec.clip_norm * (1 - _NORM_MARGIN)
        for _ in range(4):  # each pass shrinks by the excess; one almost always suffices
            if sent_norm <= bound:
                break
            factor = bound / sent_norm * (1 - _NORM_MARGIN)
            sent = [_shrink(s, factor, spec) for s in sent]
            sent_norm = clipping.l2_norm(s.decoded for s in sent)
        if sent_norm > spec.clip_norm:
            raise CodecError(f"could not bring the sent norm {sent_norm} under {spec.clip_norm}")

    entries: list[frame.Entry] = []
    sections: list[bytes] = []
    codings: dict[str, str] = {}
    index_bytes = value_bytes = 0
    for name, s in zip(names, sent, strict=True):
        size = math.prod(shapes[name])
        icode, isection = indexcoding.encode(s.indices, size, spec.index_coding)
        vcode, vsection, bits, sdtype, chunk = _value_section(s, spec)
        entries.append(
            frame.Entry(
                name, shapes[name], frame.SOURCE_CODES[sources[name].dtype.name], icode, vcode,
                bits, sdtype, chunk, s.decoded.size, len(isection), len(vsection),
            )
        )
        sections += [isection, vsection]
        codings[name] = indexcoding.NAMES[icode]
        index_bytes += len(isection)
        value_bytes += len(vsection)
    payload = frame.build(kind, spec, entries, sections, spec.zstd_level)

    kept_norm = clipping.l2_norm(s.kept for s in sent)
    # Float32 values are sent as they are: no error to measure (or allocate for).
    error_norm = clipping.l2_norm(s.decoded - s.kept for s in sent if s.decoded is not s.kept)
    out_residual: dict[str, F32] = {}
    if spec.error_feedback and not spec.is_lossless:
        for name, flat, s in zip(names, work, sent, strict=True):
            if s.indices is None:
                r = flat - s.decoded
            else:
                r = flat  # private, and no longer needed: reuse it
                r[s.indices] -= s.decoded
            out_residual[name] = r.reshape(shapes[name])
    parameters = sum(math.prod(s) for s in shapes.values())
    nnz = sum(s.decoded.size for s in sent)
    stats = EncodeStats(
        payload_bytes=len(payload),
        dense_bytes=4 * parameters,
        ratio=4 * parameters / len(payload),
        parameters=parameters,
        nnz=nnz,
        density=nnz / parameters if parameters else 1.0,
        clip_factor=clipped.factor,
        norm_before_clip=clipped.norm_before,
        norm_after_clip=clipped.norm_after,
        sent_norm=sent_norm,
        quantization_error=error_norm / kept_norm if kept_norm > 0 else 0.0,
        index_bytes=index_bytes,
        value_bytes=value_bytes,
        index_codings=codings,
        seconds=time.perf_counter() - started,
    )
    return Encoded(payload, out_residual, stats)


# -- Decoding ------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """A parsed frame's tensors: kept positions (None = all) and float32 values."""

    parsed: frame.Frame
    tensors: tuple[tuple[frame.Entry, I64 | None, npt.NDArray[Any]], ...]

    def l2_norm(self) -> float:
        return clipping.l2_norm(v for _, _, v in self.tensors)


def _values(e: frame.Entry, section: memoryview) -> npt.NDArray[Any]:
    if e.value_coding == frame.STOCHASTIC:
        q = stochastic.from_bytes(section, e.nnz, e.bits, e.chunk_size, e.scale_dtype)
        with np.errstate(over="ignore", invalid="ignore"):  # a forged scale: caught below
            values: npt.NDArray[Any] = stochastic.dequantize(q)
    else:
        values = floats.from_bytes(section, e.nnz, e.value_coding)
    if values.dtype == np.float32 and not np.all(np.isfinite(values)):
        raise CodecError(f"tensor {e.name!r} carries NaN or infinite values")
    return values


def decode_frame(
    payload: bytes | bytearray | memoryview,
    *,
    expected: Shapes | None,
    max_decoded_bytes: int | None,
    kinds: tuple[int, ...],
) -> Decoded:
    """Parse and validate everything; raise CodecError for any fault."""
    parsed = frame.parse(payload, expected=expected, max_decoded_bytes=max_decoded_bytes)
    if parsed.kind not in kinds:
        wanted = " or ".join(frame.KIND_NAMES[k] for k in kinds)
        raise CodecError(
            f"this is a {frame.KIND_NAMES[parsed.kind]} frame; expected {wanted}"
            + (" (use apply_model_delta)" if parsed.kind in (frame.DELTA_XOR, frame.DELTA) else "")
        )
    tensors = []
    for e, index_section, value_section in parsed.sections():
        if (e.value_coding == frame.XOR32) != (parsed.kind == frame.DELTA_XOR):
            raise CodecError(f"tensor {e.name!r}: value coding does not suit a {parsed.kind} frame")
        indices = indexcoding.decode(e.index_coding, index_section, e.size, e.nnz)
        tensors.append((e, indices, _values(e, value_section)))
    return Decoded(parsed, tuple(tensors))


def densify(decoded: Decoded) -> dict[str, F32]:
    out: dict[str, F32] = {}
    for e, indices, values in decoded.tensors:
        if indices is None:
            out[e.name] = values.astype(np.float32, copy=False).reshape(e.shape)
        else:
            dense = np.zeros(e.size, dtype=np.float32)
            dense[indices] = values
            out[e.name] = dense.reshape(e.shape)
    return out


_VALUE_KINDS = (frame.UPDATE, frame.WEIGHTS, frame.DELTA)


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    expected: Shapes | None = None,
    max_decoded_bytes: int | None = None,
) -> dict[str, F32]:
    """The dense float32 update. With ``expected`` the names and shapes must
    match exactly, and nothing larger than those shapes is ever allocated;
    without either bound, frames describing more than 256 MiB are refused."""
    decoded = decode_frame(
        payload, expected=expected, max_decoded_bytes=max_decoded_bytes, kinds=_VALUE_KINDS
    )
    return densify(decoded)


def _check_accumulator(
    accumulator: MutableMapping[str, npt.NDArray[np.floating]], expected: Shapes
) -> None:
    for name, shape in expected.items():
        if name not in accumulator:
            raise CodecError(f"accumulator has no tensor {name!r}")
        acc = accumulator[name]
        if not isinstance(acc, np.ndarray) or acc.dtype not in (np.float32, np.float64):
            raise CodecError(f"accumulator {name!r} must be a float32 or float64 numpy array")
        if tuple(acc.shape) != tuple(shape):
            raise CodecError(f"accumulator {name!r} has shape {acc.shape}, expected {tuple(shape)}")
        # A non-contiguous array's reshape(-1) would be a copy and the sum lost.
        if not acc.flags.c_contiguous or not acc.flags.writeable:
            raise CodecError(f"accumulator {name!r} must be a writeable C-contiguous array")


def decode_into(
    payload: bytes | bytearray | memoryview,
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weight: float,
    *,
    expected: Shapes,
    max_norm: float | None = None,
) -> DecodeStats:
    """Add ``weight × update`` into ``accumulator`` without densifying the update.

    The whole frame is validated first (checksum, table, counts, indices,
    finite values, names and shapes against ``expected``, the norm against
    ``max_norm``); on any error the accumulator is left untouched.

    Runs the compiled kernels where :mod:`quantization.accel` chose them,
    else :func:`decode_into_numpy`; both give the same bits.
    """
    fast = accel.compiled()
    if fast is not None:
        stats: DecodeStats = fast.decode_into(
            payload, accumulator, weight, expected=expected, max_norm=max_norm
        )
        return stats
    return decode_into_numpy(payload, accumulator, weight, expected=expected, max_norm=max_norm)


def decode_into_numpy(
    payload: bytes | bytearray | memoryview,
    accumulator: MutableMapping[str, npt.NDArray[np.floating]],
    weight: float,
    *,
    expected: Shapes,
    max_norm: float | None = None,
) -> DecodeStats:
    """:func:`decode_into` in numpy: the reference the compiled path must match."""
    started = time.perf_counter()
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating)):
        raise CodecError(f"weight must be a number, got {weight!r}")
    if not math.isfinite(weight):
        raise CodecError(f"weight must be finite, got {weight}")
    if max_norm is not None and not (max_norm >= 0):
        raise CodecError(f"max_norm must be a non-negative number, got {max_norm}")
    _check_accumulator(accumulator, expected)
    # Only update frames: summing a full weights frame as if it were an update
    # would be a silent disaster.
    decoded = decode_frame(
        payload, expected=expected, max_decoded_bytes=None, kinds=(frame.UPDATE,)
    )
    norm = decoded.l2_norm()
    if max_norm is not None and norm > max_norm:
        raise CodecError(f"update norm {norm:.6g} is above the bound {max_norm:.6g}")
    for e, indices, values in decoded.tensors:
        acc = accumulator[e.name]
        flat = acc.reshape(-1)
        # Scale in the accumulator's precision: a float64 sum keeps a float64 weight.
        scaled = values.astype(acc.dtype, copy=False) * acc.dtype.type(weight)
        if indices is None:
            flat += scaled
        else:
            # One pass over the scattered positions (NumPy ≥ 1.25 has a fast
            # path for this): about half the time of ``flat[indices] += scaled``,
            # which gathers and then scatters. Indices are unique (checked), so
            # each position gets exactly the same single addition either way.
            np.add.at(flat, indices, scaled)
    return DecodeStats(
        l2_norm=norm,
        nnz=sum(e.nnz for e in decoded.parsed.entries),
        parameters=sum(e.size for e in decoded.parsed.entries),
        payload_bytes=decoded.parsed.payload_bytes,
        tensors={e.name: e.nnz for e in decoded.parsed.entries},
        seconds=time.perf_counter() - started,
    )


def inspect(
    payload: bytes | bytearray | memoryview,
    *,
    expected: Shapes | None = None,
    max_decoded_bytes: int | None = None,
) -> FrameInfo:
    """Validate a frame and describe it (spec, tensors, norm) without densifying."""
    decoded = decode_frame(
        payload,
        expected=expected,
        max_decoded_bytes=max_decoded_bytes,
        kinds=tuple(frame.KIND_NAMES),
    )
    parsed = decoded.parsed
    tensors = tuple(
        TensorInfo(
            name=e.name,
            shape=e.shape,
            source_dtype=frame.SOURCE_DTYPES[e.source_dtype],
            index_coding=indexcoding.NAMES[e.index_coding],
            value_coding=frame.VALUE_NAMES[e.value_coding],
            bits=e.bits,
            nnz=e.nnz,
            index_bytes=e.index_len,
            value_bytes=e.value_len,
        )
        for e in parsed.entries
    )
    return FrameInfo(
        kind=frame.KIND_NAMES[parsed.kind],
        version=frame.VERSION,
        spec=parsed.spec,
        tensors=tensors,
        l2_norm=None if parsed.kind == frame.DELTA_XOR else decoded.l2_norm(),
        nnz=sum(e.nnz for e in parsed.entries),
        parameters=sum(e.size for e in parsed.entries),
        payload_bytes=parsed.payload_bytes,
    )
