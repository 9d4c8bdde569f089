"""The agent's only door to ``quantization``.

``quantization.CodecError`` never leaves this module: a weights frame that does
not decode is a :class:`DownloadError` (the bytes are bad: fetch again), a
codec spec the agent cannot honour is a :class:`ServerError` from the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import quantization
from edge_client.errors import DownloadError, ServerError
from edge_client.protocol import PlanDP
from fedge.manifest import Manifest
from privacy.dp import DPConfig, DPMode, add_local_noise, global_norm
from privacy.errors import PrivacyConfigError
from quantization import CodecError


@dataclass(frozen=True)
class EncodedUpdate:
    payload: bytes
    residual: dict[str, np.ndarray]  # empty when the codec keeps no error feedback
    stats: Mapping[str, Any]
    clip_bit: int | None = None  # adaptive clipping: 1 if the norm fitted under the bound


def _shapes(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in manifest.tensors}


def weights_frame_sha256(weights: Mapping[str, np.ndarray], manifest: Manifest) -> str:
    """sha256 of the lossless frame of ``weights`` in manifest order: what the
    service's weights endpoint serves, so a version rebuilt from an exact (XOR)
    delta can be checked against the plan's ``weights_sha256``."""
    ordered = {t.name: weights[t.name] for t in manifest.tensors}
    return hashlib.sha256(quantization.encode_weights(ordered)).hexdigest()


def weights_digest(weights: Mapping[str, np.ndarray], manifest: Manifest) -> str:
    """``quantization.weights_digest`` of ``weights`` in manifest order: a hash
    of the values, what the service sends with a delta (no re-encoding)."""
    try:
        return quantization.weights_digest({t.name: weights[t.name] for t in manifest.tensors})
    except (CodecError, KeyError) as exc:
        raise DownloadError(f"weights cannot be digested: {exc}") from exc


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
    dp: PlanDP | None = None,
    *,
    noise_rng: np.random.Generator | None = None,
) -> EncodedUpdate:
    """Encode ``update`` with the plan's codec and its ``dp`` block.

    Local DP (``dp.mode == "local"``): clip to ``dp.clip_norm``, add
    N(0, (z·C)²) to every coordinate, and only then compress — sparsifying and
    quantizing a privatized vector is post-processing. Error feedback is off
    in this mode: the residual is neither added nor returned, because what a
    residual would carry is mostly the unsent part of the *noise* (it would
    pile up across rounds), and a noise-free residual would add un-noised,
    data-dependent mass to the next release outside the clip bound. The noise
    comes from the OS's entropy unless ``noise_rng`` is given (tests): never
    from the agent's possibly seeded generator, which the server might know.
    """
    clip_bit: int | None = None
    local = dp is not None and dp.mode == DPMode.LOCAL.value
    if dp is not None:
        try:
            if dp.clip_bit:
                # Andrew et al.'s bit: did the update fit under the bound before clipping?
                clip_bit = int(global_norm(update) <= dp.clip_norm)
            if local:
                config = DPConfig(dp.noise_multiplier, dp.clip_norm, mode=DPMode.LOCAL)
                rng = noise_rng or np.random.default_rng(secrets.randbits(128))
                update = add_local_noise(update, config, rng).update
                residual = None
        except PrivacyConfigError as exc:
            raise ServerError(f"cannot apply the plan's dp block: {exc}", retryable=False) from exc
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
    out_residual = {} if local else encoded.residual
    stats = encoded.stats
    stats_dict = {k: v for k, v in dataclasses.asdict(stats).items() if k != "index_codings"}
    return EncodedUpdate(
        bytes(encoded.payload),
        {k: np.asarray(v) for k, v in out_residual.items()},
        stats_dict,
        clip_bit,
    )
