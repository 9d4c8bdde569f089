"""The agent's only door to ``quantization``.

``quantization.CodecError`` never leaves this module: a weights frame that does
not decode is a :class:`DownloadError` (the bytes are bad: fetch again), a
codec spec the agent cannot honour is a :class:`ServerError` from the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import quantization
from edge_client.errors import DownloadError, ServerError
from fedge.manifest import Manifest
from quantization import CodecError


@dataclass(frozen=True)
class EncodedUpdate:
    payload: bytes
    residual: dict[str, np.ndarray]  # empty when the codec keeps no error feedback
    stats: Mapping[str, Any]


def _shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in manifest.tensors}


def weights_frame_sha256(weights: Mapping[str, np.ndarray], manifest: Manifest) -> str:
    """sha256 of the lossless frame of ``weights`` in manifest order: what the
    service's weights endpoint serves, so a version rebuilt from an exact (XOR)
    delta can be checked against the plan's ``weights_sha256``."""
    ordered = {t.name: weights[t.name] for t in manifest.tensors}
    return hashlib.sha256(quantization.encode_weights(ordered)).hexdigest()


def decode_weights(frame: bytes, manifest: Manifest) -> dict[str, np.ndarray]:
    try:
        return dict(quantization.decode_weights(frame, expected=_shapes(manifest)))
    except (CodecError, ValueError, KeyError) as exc:
        raise DownloadError(f"weights frame does not decode: {exc}") from exc


def apply_delta(
    frame: bytes, base: Mapping[str, np.ndarray], manifest: Manifest
) -> dict[str, np.ndarray]:
    try:
        base_all = {t.name: base[t.name] for t in manifest.tensors}
        return dict(quantization.apply_model_delta(frame, base_all))
    except (CodecError, ValueError) as exc:
        raise DownloadError(f"weights delta does not apply: {exc}") from exc
    except KeyError as exc:  # the cached base lacks a tensor of this manifest
        raise DownloadError(f"cached base weights lack tensor {exc}") from exc


def encode_update(
    update: Mapping[str, np.ndarray],
    spec: Mapping[str, Any],
    residual: Mapping[str, np.ndarray] | None,
    seed: int,
) -> EncodedUpdate:
    try:
        codec_spec = quantization.CodecSpec.from_dict(dict(spec))
    except (CodecError, TypeError, KeyError) as exc:
        raise ServerError(f"plan codec is not usable: {exc}", retryable=False) from exc
    try:
        encoded = quantization.encode(
            dict(update), codec_spec, residual=dict(residual) if residual else None, seed=seed
        )
    except CodecError as exc:
        raise ServerError(f"cannot encode the update with the plan's codec: {exc}") from exc
    out_residual = encoded.residual
    stats = encoded.stats
    stats_dict = {k: v for k, v in dataclasses.asdict(stats).items() if k != "index_codings"}
    return EncodedUpdate(
        bytes(encoded.payload),
        {k: np.asarray(v) for k, v in out_residual.items()},
        stats_dict,
    )
