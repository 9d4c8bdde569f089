"""The codec spec: which pipeline stages run and how, in one frozen object.

A spec travels in the device's training plan as a dict (``to_dict``) and is
written into every frame, so it is parsed from untrusted input: ``from_dict``
rejects unknown keys by name and every field is validated on construction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

from quantization.errors import CodecError

Sparsify = Literal["topk", "randomk"]
Scope = Literal["global", "per_tensor"]
Values = Literal["stochastic", "float16", "float32"]
IndexCoding = Literal["auto", "varint", "bitmap", "rice"]

SPARSIFY: tuple[Sparsify, ...] = ("topk", "randomk")
SCOPES: tuple[Scope, ...] = ("global", "per_tensor")
VALUES: tuple[Values, ...] = ("stochastic", "float16", "float32")
INDEX_CODINGS: tuple[IndexCoding, ...] = ("auto", "varint", "bitmap", "rice")

MAX_CHUNK_SIZE = 1 << 20
# Levels above 19 are zstd's "ultra" levels, whose windows (up to 128 MiB) a
# decoder would have to accept from untrusted frames; 19 needs at most 8 MiB.
MIN_ZSTD_LEVEL, MAX_ZSTD_LEVEL = 1, 19


@dataclass(frozen=True)
class CodecSpec:
    """How an update is compressed. The default is lossless (dense float32).

    - ``clip_norm``: scale the whole update down to this L2 norm (before any
      compression); also the bound the decoded update's norm never exceeds.
    - ``density``: fraction of values sent (1.0 = dense).
    - ``sparsify``: ``"topk"`` (largest magnitudes) or ``"randomk"`` (uniform).
    - ``scope``: choose the kept values across all tensors (``"global"``) or
      the same fraction of each tensor (``"per_tensor"``).
    - ``bits``: 1–8 for unbiased stochastic rounding with one scale per
      ``chunk_size`` values; implies ``values="stochastic"``.
    - ``values``: ``"stochastic"``, ``"float16"`` or ``"float32"``; when left
      out it is ``"stochastic"`` if ``bits`` is set, else ``"float32"``.
    - ``chunk_size``: values per quantization scale.
    - ``zstd_level``: 1–19.
    - ``error_feedback``: return what was not sent (and the quantization error)
      as a residual for the caller to add to its next update.
    - ``index_coding``: ``"auto"`` picks the smallest of delta+varint, bitmap
      and delta+Rice per tensor; the others force one (for measurements).
    """

    clip_norm: float | None = None
    density: float = 1.0
    sparsify: Sparsify = "topk"
    scope: Scope = "global"
    bits: int | None = None
    values: Values | None = None
    chunk_size: int = 256
    zstd_level: int = 3
    error_feedback: bool = True
    index_coding: IndexCoding = "auto"

    def __post_init__(self) -> None:
        if self.clip_norm is not None:
            _number("clip_norm", self.clip_norm)
            if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
                raise CodecError(
                    f"codec.clip_norm: expected a positive finite number or null, "
                    f"got {self.clip_norm!r}"
                )
        _number("density", self.density)
        if not (0.0 < self.density <= 1.0):
            raise CodecError(
                f"codec.density: expected a fraction in (0, 1] (1.0 = dense), got {self.density!r}"
            )
        _choice("sparsify", self.sparsify, SPARSIFY)
        _choice("scope", self.scope, SCOPES)
        if self.bits is not None:
            _integer("bits", self.bits)
            if not 1 <= self.bits <= 8:
                raise CodecError(f"codec.bits: expected an integer from 1 to 8, got {self.bits}")
        values = self.values
        if values is None:
            values = "stochastic" if self.bits is not None else "float32"
            object.__setattr__(self, "values", values)
        _choice("values", values, VALUES)
        if values == "stochastic" and self.bits is None:
            raise CodecError("codec.values: 'stochastic' needs codec.bits (1 to 8)")
        if values != "stochastic" and self.bits is not None:
            raise CodecError(
                f"codec.bits: only applies to values 'stochastic', but values is {values!r}; "
                "drop bits or set values to 'stochastic'"
            )
        _integer("chunk_size", self.chunk_size)
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise CodecError(
                f"codec.chunk_size: expected 1 to {MAX_CHUNK_SIZE} values per scale, "
                f"got {self.chunk_size}"
            )
        _integer("zstd_level", self.zstd_level)
        if not MIN_ZSTD_LEVEL <= self.zstd_level <= MAX_ZSTD_LEVEL:
            raise CodecError(
                f"codec.zstd_level: expected {MIN_ZSTD_LEVEL} to {MAX_ZSTD_LEVEL}, "
                f"got {self.zstd_level}"
            )
        if not isinstance(self.error_feedback, bool):
            raise CodecError(
                f"codec.error_feedback: expected true or false, got {self.error_feedback!r}"
            )
        _choice("index_coding", self.index_coding, INDEX_CODINGS)

    @property
    def value_coding(self) -> Values:
        """``values`` with the default resolved (never None after construction)."""
        return cast(Values, self.values)

    @property
    def is_lossless(self) -> bool:
        """True when decoding returns the float32 update exactly."""
        return self.clip_norm is None and self.density == 1.0 and self.values == "float32"

    @classmethod
    def lossless(cls) -> CodecSpec:
        """Dense float32, no clipping, no quantization: decodes exactly."""
        return cls()

    @classmethod
    def from_dict(cls, data: Any) -> CodecSpec:
        """Parse a spec from a plan, a YAML file or a frame; unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise CodecError(f"codec: expected a mapping of settings, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            raise CodecError(
                f"codec: unknown key(s) {', '.join(repr(k) for k in sorted(unknown))}; "
                f"expected some of {', '.join(known)}"
            )
        return cls(**{str(k): v for k, v in data.items()})

    def to_dict(self, *, compact: bool = False) -> dict[str, Any]:
        """Plain YAML/JSON types; ``from_dict(spec.to_dict()) == spec``.

        ``compact`` leaves out fields at their default (``values`` when it
        follows from ``bits``): what frames carry, to keep small updates small.
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if not compact:
            return out
        implied = CodecSpec(bits=self.bits).values
        return {
            f.name: out[f.name]
            for f in fields(self)
            if out[f.name] != (implied if f.name == "values" else f.default)
        }


def _number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CodecError(f"codec.{key}: expected a number, got {type(value).__name__} {value!r}")


def _integer(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"codec.{key}: expected an integer, got {type(value).__name__} {value!r}")


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CodecError(
            f"codec.{key}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        )
