"""The service's only door to ``quantization``: weights frames, deltas, updates.

Keeping every call in one module means the service speaks one vocabulary
(``{tensor name: array}`` and ``TensorSpec`` tables from the manifest) and
``quantization.CodecError`` is the one codec error the handlers translate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

import quantization
from fedge.manifest import Manifest
from quantization import CodecError

__all__ = [
    "BACKEND",
    "CodecError",
    "accumulate",
    "accumulate_many",
    "apply_delta",
    "decode_weights",
    "encode_delta",
    "encode_weights",
    "expected_for",
    "validate_codec_spec",
]


# Compile (or load from numba's cache) the update decoder's kernels when the
# service is imported, at start-up, so the first upload does not wait
# seconds for it; without numba (or with FEDGE_CODEC_JIT=off) this is free.
BACKEND, WARM_UP_SECONDS = quantization.warm_up()


def validate_codec_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as the canonical dict; ValueError naming what is wrong."""
    try:
        parsed = quantization.CodecSpec.from_dict(dict(spec))
    except (CodecError, TypeError, KeyError) as exc:
        raise ValueError(str(exc)) from exc
    return dict(parsed.to_dict())


def expected_for(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """What an update for ``manifest`` must carry: its trainable tensors, by name."""
    return {t.name: t.shape for t in manifest.trainable}


def _all_tensors(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in manifest.tensors}


# Level 1, not the library's 3: the service frames every published version
# (≈11 ms instead of ≈18 ms per 1M parameters, on the publish thread, for a
# frame a few percent larger). Nothing re-derives these bytes: devices check
# a full download against the served frame's own sha256 (the plan's
# weights_sha256) and weights rebuilt from a delta against the value digest
# (Fedge-Weights-Digest), so the level is free to differ from a device's.
WEIGHTS_ZSTD_LEVEL = 1


def encode_weights(weights: Mapping[str, np.ndarray]) -> bytes:
    return bytes(quantization.encode_weights(dict(weights), zstd_level=WEIGHTS_ZSTD_LEVEL))


def decode_weights(frame: bytes, manifest: Manifest) -> dict[str, np.ndarray]:
    return dict(quantization.decode_weights(frame, expected=_all_tensors(manifest)))


def encode_delta(new: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> bytes:
    return bytes(quantization.encode_model_delta(dict(new), dict(base)))


def apply_delta(frame: bytes, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(quantization.apply_model_delta(frame, dict(base)))


def accumulate(
    payload: bytes,
    accumulator: Mapping[str, np.ndarray],
    weight: float,
    expected: Mapping[str, tuple[int, ...]],
    max_norm: float | None,
) -> quantization.DecodeStats:
    """Validate the frame completely, then add ``weight × update`` into the
    float64 ``accumulator`` in place. Raises CodecError (accumulator untouched)."""
    return quantization.decode_into(
        payload, dict(accumulator), weight, expected=expected, max_norm=max_norm
    )


def accumulate_many(
    payloads: Sequence[bytes],
    accumulator: Mapping[str, np.ndarray],
    weights: Sequence[float],
    expected: Mapping[str, tuple[int, ...]],
    *,
    max_norm: float | None,
    limit: int,
) -> list[str | None]:
    """``accumulate`` for each frame in order — bit for bit the same sums —
    decoded together; stops once ``limit`` were added. One entry per processed
    frame: None (added) or the codec's error message (that frame changed nothing)."""
    outcomes = quantization.decode_many_into(
        payloads, dict(accumulator), weights, expected=expected, max_norm=max_norm, limit=limit
    )
    return [None if error is None else str(error) for error in outcomes]
