"""Stage 6: the self-describing frame, and bounded parsing of untrusted ones.

Byte layout (all integers little-endian; docs/codec.md has the full table)::

    header   32 bytes  magic "FDGQ", version, kind, flags, spec_len,
                       n_tensors, body_raw_len, body_len
    spec     spec_len  the CodecSpec as compact UTF-8 JSON
    table    n_tensors entries (name, shape, dtype, codings, counts, lengths)
    body     body_len  one zstd frame; decompressed, the tensors' index and
                       value sections back to back, in table order
    crc      4 bytes   zlib.crc32 of every byte before it

The CRC-32 detects corruption in transit; it is not authentication (anyone
can recompute it), so the parser trusts nothing it has checked the CRC of:
every count and length is checked against a bound derived from what the
caller expects *before* anything of that size is allocated or decompressed.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zstandard

from quantization import floats, indexcoding, stochastic
from quantization.errors import CodecError
from quantization.spec import MAX_CHUNK_SIZE, CodecSpec

Shapes = Mapping[str, tuple[int, ...]]

MAGIC = b"FDGQ"
VERSION = 1
HEADER = struct.Struct("<4sBBHIIQQ")
ENTRY = struct.Struct("<BBBBBBIQQQ")
CRC = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U8 = struct.Struct("<B")
MIN_FRAME = HEADER.size + CRC.size

# Frame kinds.
UPDATE, WEIGHTS, DELTA_XOR, DELTA = 0, 1, 2, 3
KIND_NAMES = {UPDATE: "update", WEIGHTS: "weights", DELTA_XOR: "delta_xor", DELTA: "delta"}

# Value codings (float ones shared with floats.py).
FLOAT32, FLOAT16, STOCHASTIC, XOR32 = floats.FLOAT32, floats.FLOAT16, 2, floats.XOR32
VALUE_NAMES = {FLOAT32: "float32", FLOAT16: "float16", STOCHASTIC: "stochastic", XOR32: "xor32"}

# Source dtypes (what the encoder was given; decoding always yields float32).
SOURCE_DTYPES = {0: "float32", 1: "float16", 2: "float64"}
SOURCE_CODES = {name: code for code, name in SOURCE_DTYPES.items()}

DEFAULT_MAX_DECODED_BYTES = 256 * 2**20
MAX_SPEC_BYTES = 4096
MAX_NAME_BYTES = 1024
MAX_NDIM = 32
# zstd levels ≤ 19 never need a window above 8 MiB; refusing larger windows
# stops a forged frame from making the decoder reserve up to 2 GiB.
MAX_WINDOW = 1 << 23


@dataclass(frozen=True)
class Entry:
    """One row of the tensor table."""

    name: str
    shape: tuple[int, ...]
    source_dtype: int
    index_coding: int
    value_coding: int
    bits: int
    scale_dtype: int
    chunk_size: int
    nnz: int
    index_len: int
    value_len: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def pack(self) -> bytes:
        name = self.name.encode("utf-8")
        return (
            struct.pack("<H", len(name))
            + name
            + struct.pack(f"<B{len(self.shape)}Q", len(self.shape), *self.shape)
            + ENTRY.pack(
                self.source_dtype, self.index_coding, self.value_coding, self.bits,
                self.scale_dtype, 0, self.chunk_size, self.nnz, self.index_len, self.value_len,
            )
        )


@dataclass(frozen=True)
class Frame:
    kind: int
    spec: CodecSpec
    entries: tuple[Entry, ...]
    body: bytes  # decompressed
    payload_bytes: int

    def sections(self) -> list[tuple[Entry, memoryview, memoryview]]:
        view = memoryview(self.body)
        out = []
        offset = 0
        for e in self.entries:
            index = view[offset : offset + e.index_len]
            offset += e.index_len
            value = view[offset : offset + e.value_len]
            offset += e.value_len
            out.append((e, index, value))
        return out


def build(
    kind: int, spec: CodecSpec, entries: list[Entry], sections: list[bytes], level: int
) -> bytes:
    raw_len = sum(len(s) for s in sections)
    # Stream the sections through one zstd frame (declaring its size up front)
    # rather than joining them first: one copy fewer of a possibly 40 MB body.
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    stream = compressor.compressobj(size=raw_len)
    body = [stream.compress(section) for section in sections if section]
    body.append(stream.flush())
    body_len = sum(len(chunk) for chunk in body)
    spec_json = json.dumps(spec.to_dict(compact=True), separators=(",", ":")).encode()
    head = HEADER.pack(MAGIC, VERSION, kind, 0, len(spec_json), len(entries), raw_len, body_len)
    parts = [head, spec_json, *(e.pack() for e in entries), *body]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    parts.append(CRC.pack(crc))
    return b"".join(parts)


class _Reader:
    def __init__(self, data: memoryview, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def take(self, size: int, what: str) -> memoryview:
        if size > self.end - self.pos:
            raise CodecError(f"frame is truncated: {what} runs past the end of the table")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: struct.Struct | str, what: str) -> tuple[Any, ...]:
        s = fmt if isinstance(fmt, struct.Struct) else struct.Struct(fmt)
        return s.unpack(self.take(s.size, what))


def _expected_index_len(e: Entry) -> tuple[int, int]:
    """(min, max) index section length for an entry."""
    n, nnz = e.size, e.nnz
    if e.index_coding == indexcoding.DENSE:
        return 0, 0
    if e.index_coding == indexcoding.BITMAP:
        return (n + 7) // 8, (n + 7) // 8
    if e.index_coding == indexcoding.VARINT:
        return nnz, indexcoding.MAX_VARINT_BYTES * nnz
    if e.index_coding == indexcoding.RICE:
        # k byte + remainders (≤ MAX_RICE_K bits each) + unary quotients: their
        # sum is ≤ the last position < n, plus one stop bit per value.
        most = 1 + (nnz * indexcoding.MAX_RICE_K + 7) // 8 + (n + nnz + 7) // 8
        return 1, most
    raise CodecError(f"tensor {e.name!r}: unknown index coding {e.index_coding}")


def _expected_value_len(e: Entry) -> int:
    if e.value_coding in (FLOAT32, FLOAT16, XOR32):
        if e.bits or e.scale_dtype or e.chunk_size:
            raise CodecError(
                f"tensor {e.name!r}: bits, scale dtype and chunk size must be 0 for "
                f"{VALUE_NAMES[e.value_coding]} values"
            )
        return e.nnz * floats.itemsize(e.value_coding)
    if e.value_coding == STOCHASTIC:
        if not 1 <= e.bits <= 8:
            raise CodecError(f"tensor {e.name!r}: {e.bits} bits is outside 1 to 8")
        if not 1 <= e.chunk_size <= MAX_CHUNK_SIZE:
            raise CodecError(
                f"tensor {e.name!r}: chunk size {e.chunk_size} is outside 1 to {MAX_CHUNK_SIZE}"
            )
        if e.scale_dtype not in (stochastic.SCALE_FLOAT16, stochastic.SCALE_FLOAT32):
            raise CodecError(f"tensor {e.name!r}: unknown scale dtype {e.scale_dtype}")
        return stochastic.section_size(e.nnz, e.bits, e.chunk_size, e.scale_dtype)
    raise CodecError(f"tensor {e.name!r}: unknown value coding {e.value_coding}")


def _check_entry(e: Entry) -> None:
    if e.nnz > e.size:
        raise CodecError(f"tensor {e.name!r}: {e.nnz} values do not fit its {e.size} elements")
    if e.index_coding == indexcoding.DENSE and e.nnz != e.size:
        raise CodecError(f"tensor {e.name!r}: dense coding with {e.nnz} of {e.size} values")
    low, high = _expected_index_len(e)
    if not low <= e.index_len <= high:
        raise CodecError(
            f"tensor {e.name!r}: index section of {e.index_len} bytes is impossible for "
            f"{e.nnz} of {e.size} values ({indexcoding.NAMES[e.index_coding]})"
        )
    want = _expected_value_len(e)
    if e.value_len != want:
        raise CodecError(
            f"tensor {e.name!r}: value section is {e.value_len} bytes; its table row needs {want}"
        )


def _check_expected_tensor(name: str, shape: tuple[int, ...], expected: Shapes) -> None:
    if name not in expected:
        raise CodecError(
            f"frame has unexpected tensor {name!r}; the model has {sorted(expected)}"
        )
    want = tuple(int(d) for d in expected[name])
    if shape != want:
        raise CodecError(f"tensor {name!r} has shape {shape}, expected {want}")


def decoded_limit(
    expected: Shapes | None, max_decoded_bytes: int | None
) -> int:
    """Bytes of float32 output a frame may describe."""
    limits = []
    if expected is not None:
        limits.append(4 * sum(math.prod(s) for s in expected.values()))
    if max_decoded_bytes is not None:
        if max_decoded_bytes < 0:
            raise CodecError("max_decoded_bytes must be non-negative")
        limits.append(max_decoded_bytes)
    return min(limits) if limits else DEFAULT_MAX_DECODED_BYTES


def parse(
    payload: bytes | bytearray | memoryview,
    *,
    expected: Shapes | None = None,
    max_decoded_bytes: int | None = None,
) -> Frame:
    """Check and decompress a frame; raises CodecError for anything malformed."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    data = memoryview(payload).cast("B")
    if len(data) < MIN_FRAME:
        raise CodecError(f"frame is {len(data)} bytes, shorter than the minimum {MIN_FRAME}")
    if bytes(data[:4]) != MAGIC:
        raise CodecError(f"not a fedge codec frame (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    (crc,) = CRC.unpack(data[-CRC.size :])
    if zlib.crc32(data[: -CRC.size]) != crc:
        raise CodecError("frame checksum mismatch: the payload is corrupted or truncated")
    _, version, kind, flags, spec_len, n_tensors, raw_len, body_len = HEADER.unpack(
        data[: HEADER.size]
    )
    if version != VERSION:
        raise CodecError(f"frame format version {version} is not supported (this reads {VERSION})")
    if kind not in KIND_NAMES:
        raise CodecError(f"unknown frame kind {kind}")
    if flags:
        raise CodecError(f"frame sets unknown flags {flags:#06x}")
    if spec_len > MAX_SPEC_BYTES:
        raise CodecError(f"frame spec is {spec_len} bytes, above the maximum {MAX_SPEC_BYTES}")
    end = len(data) - CRC.size
    reader = _Reader(data, HEADER.size, end)
    spec = _parse_spec(bytes(reader.take(spec_len, "the spec")))
    # The smallest table row is 2 + 1 + 1 + 1 + ENTRY.size bytes.
    if n_tensors > (end - reader.pos) // (4 + ENTRY.size):
        raise CodecError(f"frame claims {n_tensors} tensors, more than its table can hold")
    limit = decoded_limit(expected, max_decoded_bytes)
    entries: list[Entry] = []
    names: set[str] = set()
    total_values = 0
    for i in range(n_tensors):
        (name_len,) = reader.unpack(_U16, f"tensor {i} name length")
        if not 1 <= name_len <= MAX_NAME_BYTES:
            raise CodecError(f"tensor {i}: name length {name_len} is outside 1 to {MAX_NAME_BYTES}")
        try:
            name = bytes(reader.take(name_len, f"tensor {i} name")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(f"tensor {i}: name is not UTF-8") from exc
        if name in names:
            raise CodecError(f"tensor {name!r} appears twice in the frame")
        names.add(name)
        (ndim,) = reader.unpack(_U8, f"tensor {name!r} rank")
        if ndim > MAX_NDIM:
            raise CodecError(f"tensor {name!r}: rank {ndim} is above the maximum {MAX_NDIM}")
        shape = tuple(reader.unpack(f"<{ndim}Q", f"tensor {name!r} shape"))
        if expected is not None:
            _check_expected_tensor(name, shape, expected)
        size = math.prod(shape)
        total_values += size
        if 4 * total_values > limit:
            raise CodecError(
                f"frame describes more than {limit} bytes of float32 values (at tensor "
                f"{name!r} of shape {tuple(shape)}); raise max_decoded_bytes if this is expected"
            )
        fields = reader.unpack(ENTRY, f"tensor {name!r} table row")
        src, icode, vcode, bits, sdtype, reserved, chunk, nnz, ilen, vlen = fields
        if reserved:
            raise CodecError(f"tensor {name!r}: reserved table byte is {reserved}, expected 0")
        if src not in SOURCE_DTYPES:
            raise CodecError(f"tensor {name!r}: unknown source dtype code {src}")
        entry = Entry(name, tuple(shape), src, icode, vcode, bits, sdtype, chunk, nnz, ilen, vlen)
        _check_entry(entry)
        entries.append(entry)
    if expected is not None:
        missing = [n for n in expected if n not in names]
        if missing:
            raise CodecError(f"frame lacks tensor(s) {missing} that the model has")
    if sum(e.index_len + e.value_len for e in entries) != raw_len:
        raise CodecError(
            f"frame body is {raw_len} bytes but its tensor sections add up to "
            f"{sum(e.index_len + e.value_len for e in entries)}"
        )
    if end - reader.pos != body_len:
        raise CodecError(
            f"frame body is {end - reader.pos} bytes, but the header says {body_len}"
        )
    body = _decompress(data[reader.pos : end], raw_len)
    return Frame(kind, spec, tuple(entries), body, len(data))


@functools.lru_cache(maxsize=64)
def _parse_spec(raw: bytes) -> CodecSpec:
    """A frame's spec. Devices on one plan send the same few spec strings, so
    parsed specs (frozen, safe to share) are kept by their bytes; a bad spec
    raises and is not kept."""
    try:
        spec_dict = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CodecError(f"frame spec is not valid JSON: {exc}") from exc
    return CodecSpec.from_dict(spec_dict)


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor: creating one per frame costs as much as
    decompressing a small update, and an instance must not be shared between
    threads. Each one-shot ``decompress`` starts from a clean state, also
    after an error."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        _local.dctx = dctx
    return dctx


def _decompress(compressed: memoryview, raw_len: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(compressed)
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
            raise CodecError("compressed body does not declare its size; it cannot be bounded")
        if params.content_size != raw_len:
            raise CodecError(
                f"compressed body declares {params.content_size} bytes, the header {raw_len}"
            )
        if params.window_size > MAX_WINDOW:
            raise CodecError(
                f"compressed body needs a {params.window_size}-byte window, above {MAX_WINDOW}"
            )
        raw = _decompressor().decompress(
            compressed, max_output_size=raw_len, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise CodecError(f"compressed body is corrupt: {exc}") from exc
    if len(raw) != raw_len:
        raise CodecError(f"compressed body holds {len(raw)} bytes, the header says {raw_len}")
    return bytes(raw)
