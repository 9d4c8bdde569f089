"""Update codecs for fedge: clip, sparsify with error feedback, quantize,
code indices, compress with zstd, and frame — plus safe decoding.

The pipeline (every stage optional, configured by one :class:`CodecSpec`)::

    update ─▶ clip (L2) ─▶ + residual ─▶ top-k / random-k ─▶ stochastic 1–8 bit
           │                                 │               or float16 / float32
           │                                 └─▶ residual (error feedback)
           └──────────────▶ index coding (dense | varint | bitmap | Rice) ─▶ zstd ─▶ frame

The API: :func:`encode`, :func:`decode`, :func:`decode_into` (scatter-add
into a caller's accumulator, all-or-nothing), :func:`decode_many_into` (the
same for a batch of frames, bit for bit), :func:`inspect`; downlink
:func:`encode_weights` / :func:`decode_weights` and
:func:`encode_model_delta` / :func:`apply_model_delta` (exact XOR delta by
default), and :func:`weights_digest` (a hash of weights, not of frame
bytes). docs/codec.md documents the frame byte by byte.

The decoders' hot loops run compiled (numba) where it is installed, else as
numpy — the same bits either way; :func:`backend` says which, ``FEDGE_CODEC_JIT``
chooses, and :func:`warm_up` compiles ahead (:mod:`quantization.accel`).

Exceptions::

    fedge.errors.FedgeError
    └── quantization.CodecError (also a ValueError)
            a bad spec, an update that cannot be encoded (NaN/Inf, wrong
            dtype, mismatched residual), or any malformed, truncated,
            oversized or inconsistent frame. zstandard, numpy and struct
            errors never escape decoding: they are translated to this.
"""

from quantization.accel import Backend, backend, warm_up
from quantization.api import (
    DecodeStats,
    Encoded,
    EncodeStats,
    FrameInfo,
    TensorInfo,
    decode,
    decode_into,
    encode,
    inspect,
)
from quantization.batch import decode_many_into
from quantization.delta import (
    apply_model_delta,
    decode_weights,
    encode_model_delta,
    encode_weights,
    weights_digest,
)
from quantization.errors import CodecError
from quantization.frame import DEFAULT_MAX_DECODED_BYTES
from quantization.spec import CodecSpec

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "Backend",
    "CodecError",
    "CodecSpec",
    "DecodeStats",
    "EncodeStats",
    "Encoded",
    "FrameInfo",
    "TensorInfo",
    "apply_model_delta",
    "backend",
    "decode",
    "decode_into",
    "decode_many_into",
    "decode_weights",
    "encode",
    "encode_model_delta",
    "encode_weights",
    "inspect",
    "warm_up",
    "weights_digest",
]
