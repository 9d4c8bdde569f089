"""User-level differential privacy for federated averaging (DP-FedAvg).

What a caller does with this module:

- the **device** clips its update to an L2 bound before any compression (the
  ``quantization`` clip stage, or :func:`clip_update`), and in local mode adds
  its own Gaussian noise with :func:`add_local_noise` before encoding;
- the **service** sums the clipped updates of one aggregation step, adds
  Gaussian noise calibrated to the clip norm with :func:`add_noise`, divides
  by a *fixed* denominator and steps the server optimizer; with adaptive
  clipping it feeds the step's count of unclipped updates to an
  :class:`AdaptiveClipper`, which moves the bound toward a target quantile of
  update norms (Andrew et al. 2021, "Differentially Private Learning with
  Adaptive Clipping");
- the **accountant** (:mod:`privacy.accountant`) turns the noise multiplier
  and the sampling model into (ε, δ).

Configurations that would silently break the guarantee (noise without a
clip norm, a codec that does not bound what is sent, count bits without
noise) are refused by :class:`DPConfig` and :func:`check_codec_compatible`
with messages that say why.

Only numpy: this module runs on devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from privacy.errors import PrivacyConfigError

Update = Mapping[str, np.ndarray]


class DPMode(str, Enum):
    """Where the noise is added."""

    # The service adds noise to each aggregated sum: trusts the server with
    # individual (clipped) updates, protects the published models.
    CENTRAL = "central"
    # Each device adds noise before upload: does not trust the server; needs
    # far more noise for the same model quality.
    LOCAL = "local"


class Participation(str, Enum):
    """How the accountant models who contributes to an aggregation step."""

    # Each step is a Poisson sample with q = K / population (an assumption
    # for asynchronous FedBuff: see privacy.accountant).
    SAMPLED = "sampled"
    # q = 1: every device is assumed to be in every step. Always valid; no
    # amplification by sampling, so ε is much larger.
    FULL = "full"


class AccountingMethod(str, Enum):
    RDP = "rdp"
    PLD = "pld"


def _number(data: Mapping[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise PrivacyConfigError(f"{where}.{key}: missing (expected a number)")
        return default
    value = data[key]
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PrivacyConfigError(
            f"{where}.{key}: expected a number, got {type(value).__name__} {value!r}"
        )
    return float(value)


def _choice(data: Mapping[str, Any], key: str, where: str, enum: type[Enum], default: Enum) -> Any:
    value = data.get(key, default.value)
    try:
        return enum(value)
    except ValueError:
        options = ", ".join(repr(e.value) for e in enum)
        raise PrivacyConfigError(f"{where}.{key}: {value!r} is not one of {options}") from None


def _reject_unknown(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise PrivacyConfigError(
            f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}"
        )


@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping (Andrew et al. 2021, Algorithm 1).

    After each step the bound moves geometrically toward the
    ``target_quantile`` of update norms::

        b̄ = (Σ_i (1[‖Δ_i‖ ≤ C] − ½) + N(0, σ_b²)) / m + ½
        C ← C · exp(−η · (b̄ − γ))

    with γ = ``target_quantile``, η = ``learning_rate``, σ_b =
    ``count_noise_std`` and m the *expected* number of updates per step (not
    the realized one, which would leak). The centred bits are what is
    released: adding or removing a device moves their sum by ½. The count is itself a private
    release: the accountant charges both releases as one Gaussian with the
    overall ``DPConfig.noise_multiplier`` z, and the update sum gets
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (the bits have sensitivity ½ once centred).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 1.0
    min_clip_norm: float = 1e-6
    max_clip_norm: float = 1e6

    def __post_init__(self) -> None:
        where = "dp.adaptive"
        if not 0.0 < self.target_quantile < 1.0:
            raise PrivacyConfigError(
                f"{where}.target_quantile: {self.target_quantile} must be strictly between 0 "
                "and 1 (the fraction of updates that should fit under the bound)"
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise PrivacyConfigError(f"{where}.learning_rate: {self.learning_rate} must be > 0")
        if not (math.isfinite(self.count_noise_std) and self.count_noise_std >= 0):
            raise PrivacyConfigError(
                f"{where}.count_noise_std: {self.count_noise_std} must be a finite number ≥ 0"
            )
        if not 0 < self.min_clip_norm < self.max_clip_norm or not math.isfinite(
            self.max_clip_norm
        ):
            raise PrivacyConfigError(
                f"{where}: need 0 < min_clip_norm < max_clip_norm < ∞, got "
                f"{self.min_clip_norm} and {self.max_clip_norm}"
            )

    @classmethod
    def from_dict(cls, data: Any, where: str = "dp.adaptive") -> AdaptiveClipping:
        if not isinstance(data, Mapping):
            raise PrivacyConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        _reject_unknown(data, known, where)
        defaults = cls()
        return cls(**{k: _number(data, k, where, getattr(defaults, k)) for k in known})

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class DPConfig:
    """User-level DP settings, parsed once and validated.

    ``noise_multiplier`` z is the ratio of the Gaussian noise's standard
    deviation to the per-device L2 sensitivity ``clip_norm``. z = 0 means
    clipping only: allowed, but the accountant reports ε = ∞.
    """

    noise_multiplier: float
    clip_norm: float | None
    delta: float = 1e-5
    mode: DPMode = DPMode.CENTRAL
    adaptive: AdaptiveClipping | None = None
    participation: Participation = Participation.SAMPLED
    accounting: AccountingMethod = AccountingMethod.RDP

    def __post_init__(self) -> None:
        # Accept the enums' string values from Python callers too ("local").
        for key, enum in (("mode", DPMode), ("participation", Participation),
                          ("accounting", AccountingMethod)):
            value = getattr(self, key)
            if not isinstance(value, enum):
                try:
                    object.__setattr__(self, key, enum(value))
                except ValueError:
                    options = ", ".join(repr(e.value) for e in enum)
                    raise PrivacyConfigError(
                        f"dp.{key}: {value!r} is not one of {options}"
                    ) from None
        z, c = self.noise_multiplier, self.clip_norm
        if not (math.isfinite(z) and z >= 0):
            raise PrivacyConfigError(f"dp.noise_multiplier: {z} must be a finite number ≥ 0")
        if c is None:
            if z > 0:
                raise PrivacyConfigError(
                    "dp.clip_norm: noise without clipping is refused — the Gaussian noise is "
                    "calibrated to the clip norm (its std is noise_multiplier × clip_norm); "
                    "without a bound on each device's update the sensitivity is unbounded and "
                    "the noise guarantees nothing. Set dp.clip_norm (e.g. near the median "
                    "update norm) or enable dp.adaptive with an initial dp.clip_norm."
                )
            if self.adaptive is not None:
                raise PrivacyConfigError(
                    "dp.clip_norm: adaptive clipping needs an initial clip_norm to start from"
                )
        elif not (math.isfinite(c) and c > 0):
            raise PrivacyConfigError(f"dp.clip_norm: {c} must be a finite number > 0")
        if not 0.0 < self.delta < 1.0:
            raise PrivacyConfigError(
                f"dp.delta: {self.delta} must be strictly between 0 and 1 (use less than "
                "1 / number of devices)"
            )
        if self.mode is DPMode.LOCAL:
            if z == 0:
                raise PrivacyConfigError(
                    "dp.noise_multiplier: local DP with noise_multiplier 0 adds no noise; set "
                    "it > 0 or use mode 'central'"
                )
            if self.adaptive is not None:
                raise PrivacyConfigError(
                    "dp.adaptive: adaptive clipping is a server-side estimate from a noised "
                    "count of clipped updates; in local mode the server is not trusted with "
                    "those bits. Use a fixed dp.clip_norm with mode 'local'."
                )
        a = self.adaptive
        if a is not None and z > 0:
            if a.count_noise_std == 0:
                raise PrivacyConfigError(
                    "dp.adaptive.count_noise_std: 0 would release the count of clipped updates "
                    "without noise, which is not differentially private; Andrew et al. suggest "
                    "about expected_updates_per_step / 20"
                )
            if 2 * a.count_noise_std <= z:
                raise PrivacyConfigError(
                    f"dp.adaptive.count_noise_std: {a.count_noise_std} is too small for "
                    f"noise_multiplier {z}: the count alone would spend the whole budget; it "
                    f"must exceed noise_multiplier / 2 = {z / 2:g}"
                )
        if a is not None and c is not None and not a.min_clip_norm <= c <= a.max_clip_norm:
            raise PrivacyConfigError(
                f"dp.clip_norm: {c} is outside dp.adaptive's [min_clip_norm, max_clip_norm] = "
                f"[{a.min_clip_norm}, {a.max_clip_norm}]"
            )

    @property
    def enabled(self) -> bool:
        """True when noise is added (a finite ε is possible)."""
        return self.noise_multiplier > 0

    @property
    def update_noise_multiplier(self) -> float:
        """The multiplier for the noise on the update sum.

        Equal to ``noise_multiplier`` without adaptive clipping; with it, the
        share of the budget left after the count release (Andrew et al. 2021,
        Theorem 1): z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2).
        """
        z = self.noise_multiplier
        if self.adaptive is None or z == 0:
            return z
        return float((z**-2 - (2 * self.adaptive.count_noise_std) ** -2) ** -0.5)

    @classmethod
    def from_dict(cls, data: Any, where: str = "dp") -> DPConfig:
        """Parse the ``dp`` block of the operator API / fleet file."""
        if not isinstance(data, Mapping):
            raise PrivacyConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {
            "noise_multiplier", "clip_norm", "delta", "mode", "adaptive", "participation",
            "accounting",
        }
        _reject_unknown(data, known, where)
        adaptive_raw = data.get("adaptive")
        return cls(
            noise_multiplier=_number(data, "noise_multiplier", where),
            clip_norm=_number(data, "clip_norm", where, None),
            delta=_number(data, "delta", where, 1e-5),
            mode=_choice(data, "mode", where, DPMode, DPMode.CENTRAL),
            adaptive=None
            if adaptive_raw is None
            else AdaptiveClipping.from_dict(adaptive_raw, f"{where}.adaptive"),
            participation=_choice(
                data, "participation", where, Participation, Participation.SAMPLED
            ),
            accounting=_choice(data, "accounting", where, AccountingMethod, AccountingMethod.RDP),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "delta": self.delta,
            "mode": self.mode.value,
            "adaptive": None if self.adaptive is None else self.adaptive.to_dict(),
            "participation": self.participation.value,
            "accounting": self.accounting.value,
        }


# --------------------------------------------------------------------------- clipping


def global_norm(update: Update) -> float:
    """L2 norm over all tensors of an update (float64 accumulation)."""
    total = 0.0
    for value in update.values():
        flat = np.asarray(value, dtype=np.float64).ravel()
        total += float(flat @ flat)
    return math.sqrt(total)


@dataclass(frozen=True)
class ClipResult:
    """A clipped update with its measurements."""

    update: dict[str, np.ndarray]
    norm_before: float
    factor: float  # ≤ 1; 1.0 when the update already fitted

    @property
    def clipped(self) -> bool:
        return self.factor < 1.0

    @property
    def norm_after(self) -> float:
        return self.norm_before * self.factor


def clip_update(update: Update, clip_norm: float) -> ClipResult:
    """Scale the whole update so its global L2 norm is at most ``clip_norm``.

    Non-finite values are refused: a NaN would pass any norm test (NaN > C is
    False) and poison the sum.
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyConfigError(f"clip_norm: {clip_norm} must be a finite number > 0")
    for name, value in update.items():
        if not np.all(np.isfinite(value)):
            raise PrivacyConfigError(f"update tensor {name!r} has non-finite values")
    norm = global_norm(update)
    factor = 1.0 if norm <= clip_norm else clip_norm / norm
    while True:
        out = {k: np.asarray(v, dtype=np.float32) * np.float32(factor) for k, v in update.items()}
        # float32 rounding can leave the result a hair above the bound, and
        # the service rejects anything above it: shave until it fits.
        if factor == 1.0 or global_norm(out) <= clip_norm:
            break
        factor *= 1 - 1e-6
    return ClipResult(update=out, norm_before=norm, factor=factor)


# --------------------------------------------------------------------------- central noise


def noise_std(dp: DPConfig, clip_norm: float | None = None, max_weight: float = 1.0) -> float:
    """Standard deviation of the Gaussian noise on one aggregated sum.

    ``clip_norm`` overrides ``dp.clip_norm`` (adaptive clipping moves it);
    ``max_weight`` is the largest weight any single update can carry in the
    sum (sensitivity = max_weight × clip_norm). DP-FedAvg sums updates with
    weights ≤ 1 — e.g. FedBuff's staleness factor (1+τ)^−a — never
    example counts, which are unbounded.
    """
    c = dp.clip_norm if clip_norm is None else clip_norm
    if c is None:
        return 0.0
    if not (math.isfinite(max_weight) and max_weight > 0):
        raise PrivacyConfigError(f"max_weight: {max_weight} must be a finite number > 0")
    return dp.update_noise_multiplier * c * max_weight


def add_noise(
    total: Update,
    dp: DPConfig,
    rng: np.random.Generator,
    *,
    clip_norm: float | None = None,
    max_weight: float = 1.0,
) -> dict[str, np.ndarray]:
    """The Gaussian mechanism on an aggregated sum of clipped updates.

    Returns a new mapping (the input is not modified) with N(0, σ²) added to
    every coordinate, σ = :func:`noise_std`. Use a cryptographically seeded
    generator in production (``np.random.default_rng()`` seeds from the OS);
    pass a seeded one only in tests and simulations.
    """
    if dp.mode is not DPMode.CENTRAL:
        raise PrivacyConfigError(
            "dp.mode: add_noise is the central mechanism; in local mode devices add noise "
            "(add_local_noise) and the service must not add more"
        )
    std = noise_std(dp, clip_norm, max_weight)
    out: dict[str, np.ndarray] = {}
    for name, value in total.items():
        arr = np.asarray(value)
        dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        noise = rng.normal(0.0, std, size=arr.shape) if std > 0 else 0.0
        out[name] = (arr.astype(np.float64) + noise).astype(dtype)
    return out


# --------------------------------------------------------------------------- local DP


@dataclass(frozen=True)
class LocalNoised:
    """A device's locally privatized update and what was done to it."""

    update: dict[str, np.ndarray]
    norm_before: float
    clipped: bool
    noise_std: float


def add_local_noise(update: Update, dp: DPConfig, rng: np.random.Generator) -> LocalNoised:
    """Device-side DP: clip to ``dp.clip_norm``, then add N(0, (z·C)²) per
    coordinate. Call before encoding: compression afterwards is
    post-processing and cannot weaken the guarantee."""
    if dp.mode is not DPMode.LOCAL:
        raise PrivacyConfigError(
            "dp.mode: add_local_noise needs mode 'local'; in central mode the service adds noise"
        )
    assert dp.clip_norm is not None  # DPConfig guarantees it in local mode
    clipped = clip_update(update, dp.clip_norm)
    std = dp.noise_multiplier * dp.clip_norm
    noised = {
        k: (v.astype(np.float64) + rng.normal(0.0, std, size=v.shape)).astype(np.float32)
        for k, v in clipped.update.items()
    }
    return LocalNoised(noised, clipped.norm_before, clipped.clipped, std)


# --------------------------------------------------------------------------- adaptive clipping


@dataclass(frozen=True)
class AdaptiveClipStep:
    """One adaptive-clipping update, for logs and metrics."""

    clip_before: float
    clip_after: float
    unclipped_count: int
    expected_updates: float
    noisy_fraction: float  # b̄: the noised fraction of updates that fitted


class AdaptiveClipper:
    """The service's adaptive clip bound (one per model).

    Usage per aggregation step: plans carry ``clip_norm`` (as the codec's
    ``clip_norm``); each device reports whether its update fitted under it
    before clipping; after the step the service calls :meth:`update` with the
    number that fitted and the *expected* number of updates per step (K in
    FedBuff, clients per round in sync mode). State is a single float:
    persist :attr:`clip_norm` with the published version.
    """

    def __init__(self, dp: DPConfig, clip_norm: float | None = None) -> None:
        if dp.adaptive is None or dp.clip_norm is None:
            raise PrivacyConfigError("dp.adaptive: not configured; AdaptiveClipper needs it")
        self.config = dp.adaptive
        self.clip_norm = float(dp.clip_norm if clip_norm is None else clip_norm)

    def update(
        self,
        unclipped_count: int,
        expected_updates: float,
        rng: np.random.Generator,
        *,
        reported: int | None = None,
    ) -> AdaptiveClipStep:
        """One step. ``reported`` is the realized number of bits in the step
        (default: ``expected_updates``, as in FedBuff where a step is exactly K
        updates).

        The released quantity is the *centred* count Σ(bᵢ − ½) + N(0, σ_b²):
        adding or removing one device moves it by ½, which is what lets the
        update sum keep z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (see
        :attr:`DPConfig.update_noise_multiplier`). Then b̄ = release / m + ½,
        with m the expected count (public), never the realized one.
        """
        n = expected_updates if reported is None else reported
        if unclipped_count < 0 or not expected_updates > 0 or not 0 <= unclipped_count <= n:
            raise PrivacyConfigError(
                f"adaptive clipping: need 0 ≤ unclipped_count ≤ reported and "
                f"expected_updates > 0, got {unclipped_count}, {reported} and {expected_updates}"
            )
        a = self.config
        centred = unclipped_count - n / 2 + rng.normal(0.0, a.count_noise_std)
        noisy = centred / expected_updates + 0.5
        before = self.clip_norm
        after = before * math.exp(-a.learning_rate * (noisy - a.target_quantile))
        self.clip_norm = min(max(after, a.min_clip_norm), a.max_clip_norm)
        return AdaptiveClipStep(before, self.clip_norm, unclipped_count, expected_updates, noisy)


# --------------------------------------------------------------------------- codec checks

_VALUE_STAGES = ("sparsify", "quantize", "compress")


def _spec_dict(codec_spec: Any) -> Mapping[str, Any]:
    if isinstance(codec_spec, Mapping):
        return codec_spec
    to_dict = getattr(codec_spec, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, Mapping):
            return result
    raise PrivacyConfigError(
        f"codec: expected a codec spec mapping (CodecSpec.to_dict()), got "
        f"{type(codec_spec).__name__}"
    )


def check_codec_compatible(dp: DPConfig, codec_spec: Any, *, tolerance: float = 1e-6) -> None:
    """Refuse a device codec that would not bound what a device sends.

    ``codec_spec`` is a ``quantization.CodecSpec`` or its dict. In central
    mode the sensitivity of the noised sum is the clip norm, so the codec must
    clip, at most at ``dp.clip_norm``, and the clip must bound the vector that
    is actually sent. ``quantization`` clips first and shrinks the sent
    (sparsified, quantized) vector back under ``clip_norm`` after adding the
    error-feedback residual, so its sent norm is always ≤ ``clip_norm``; a
    spec that declares an explicit stage order (``stages``, for other agent
    implementations) must put ``clip`` before sparsification and
    quantization, and unbiased random-k must not rescale kept values upward.
    Raises :class:`PrivacyConfigError` saying why.

    This check keeps honest devices inside the bound. What *enforces* the
    sensitivity against a modified device is the service decoding every
    update with ``max_norm = clip_norm`` (rejecting larger ones) before it
    enters the sum.

    In local mode the device adds noise before encoding, so any codec is
    post-processing and is accepted.
    """
    spec = _spec_dict(codec_spec)
    if dp.mode is DPMode.LOCAL or dp.clip_norm is None:
        return
    clip = spec.get("clip_norm")
    if clip is None:
        raise PrivacyConfigError(
            "codec.clip_norm: not set, but DP needs every update clipped on the device to "
            f"dp.clip_norm = {dp.clip_norm:g} before compression; without it a device's "
            "contribution to the noised sum is unbounded and the noise calibrated to "
            "clip_norm protects nothing"
        )
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0:
        raise PrivacyConfigError(f"codec.clip_norm: {clip!r} must be a number > 0")
    if clip > dp.clip_norm * (1 + tolerance):
        raise PrivacyConfigError(
            f"codec.clip_norm: {clip:g} is above dp.clip_norm = {dp.clip_norm:g}; the noise "
            "is calibrated to dp.clip_norm, so devices must clip at most that much"
        )
    stages = spec.get("stages", spec.get("order"))
    if stages is not None:
        names = [str(s) for s in stages]
        if "clip" not in names:
            raise PrivacyConfigError(
                f"codec.stages: {names} has no 'clip' stage; DP needs clipping first"
            )
        first_value_stage = min(
            (names.index(s) for s in _VALUE_STAGES if s in names), default=len(names)
        )
        if names.index("clip") > first_value_stage:
            raise PrivacyConfigError(
                f"codec.stages: {names} clips after sparsification/quantization; the clip "
                "would bound only the part that is sent while error feedback carries the rest "
                "into later updates, so a device's total contribution is not bounded by "
                "clip_norm. Put 'clip' first."
            )
    if spec.get("sparsify") == "randomk" and spec.get("rescale", False):
        raise PrivacyConfigError(
            "codec.rescale: unbiased random-k scales the kept values by 1/density, which "
            "raises the sent norm above clip_norm; turn rescale off under DP"
        )
