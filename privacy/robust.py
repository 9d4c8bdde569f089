"""Defences against bad updates: norm bounds, anomaly scoring, a
quarantine/throttle policy, and robust aggregators for synchronous rounds.

The pieces are independent and return decisions; the service applies them:

- :func:`check_norm` — the hard bound (the service's ``max_norm``).
- :class:`AnomalyScorer` — scores an update against running statistics of
  accepted updates: its norm as a robust z-score against the median/MAD of
  recent norms, and its cosine similarity to an exponentially weighted mean
  update direction. Only accepted updates feed the statistics, so an
  attacker cannot drag them by being rejected.
- :class:`QuarantinePolicy` — per-device strike counters over a time window;
  an anomalous update is quarantined (left out of the aggregate, counted),
  and a device that keeps sending them is throttled for a while (the service
  answers it with 429 + Retry-After and pace steering).
- :func:`coordinate_median` and :func:`trimmed_mean` — aggregators that
  bound the influence of a minority of arbitrary updates in sync mode.

Limits: these defences target crude attacks (scaled updates, sign flips,
broken devices). Anomaly scores in non-IID fleets are noisy; thresholds are
deliberately loose. Robust aggregation needs the server to see individual
updates, so it does not combine with secure aggregation; with DP, run the
robust aggregator on clipped updates and add the noise afterwards (the
median's sensitivity is not the mean's: account with care, see
docs/privacy.md).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from privacy.dp import global_norm
from privacy.errors import PrivacyConfigError

Update = Mapping[str, np.ndarray]

# Consistency constant: MAD × 1.4826 estimates σ for Gaussian data.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class RobustConfig:
    """Settings for scoring and the policy (the ``robust`` config block)."""

    max_norm: float | None = None  # hard bound; None: no bound
    norm_z_threshold: float = 6.0  # robust z of the norm above which an update is anomalous
    min_cosine: float = -0.2  # cosine to the mean direction below which it is anomalous
    warmup: int = 10  # accepted updates before scoring flags anything
    direction_decay: float = 0.9  # weight of the past in the mean direction
    norm_window: int = 200  # recent accepted norms kept for median/MAD
    strikes_to_throttle: int = 3  # anomalies within strike_window_s that throttle a device
    strike_window_s: float = 86_400.0
    throttle_s: float = 3_600.0  # first throttle; doubles on each repeat, up to max_throttle_s
    max_throttle_s: float = 7 * 86_400.0

    def __post_init__(self) -> None:
        w = "robust"
        if self.max_norm is not None and not (math.isfinite(self.max_norm) and self.max_norm > 0):
            raise PrivacyConfigError(f"{w}.max_norm: {self.max_norm} must be > 0 or null")
        if not self.norm_z_threshold > 0:
            raise PrivacyConfigError(f"{w}.norm_z_threshold: {self.norm_z_threshold} must be > 0")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise PrivacyConfigError(f"{w}.min_cosine: {self.min_cosine} must be in [−1, 1]")
        if not 0.0 <= self.direction_decay < 1.0:
            raise PrivacyConfigError(
                f"{w}.direction_decay: {self.direction_decay} must be in [0, 1)"
            )
        for key in ("warmup", "norm_window", "strikes_to_throttle"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PrivacyConfigError(f"{w}.{key}: {value!r} must be an integer ≥ 1")
        for key in ("strike_window_s", "throttle_s", "max_throttle_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise PrivacyConfigError(f"{w}.{key}: {value} must be a number > 0")
        if self.max_throttle_s < self.throttle_s:
            raise PrivacyConfigError(f"{w}.max_throttle_s: must be ≥ throttle_s")

    @classmethod
    def from_dict(cls, data: Any, where: str = "robust") -> RobustConfig:
        if not isinstance(data, Mapping):
            raise PrivacyConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise PrivacyConfigError(f"{where}: unknown key(s) {unknown}; expected {sorted(known)}")
        ints = {"warmup", "norm_window", "strikes_to_throttle"}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key == "max_norm" and value is None:
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PrivacyConfigError(f"{where}.{key}: expected a number, got {value!r}")
            values[key] = value if key in ints else float(value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------------- norm bound


@dataclass(frozen=True)
class NormCheck:
    norm: float
    bound: float | None
    ok: bool  # finite and within the bound


def check_norm(update: Update, max_norm: float | None) -> NormCheck:
    """The hard bound: non-finite values or a norm above ``max_norm`` fail."""
    finite = all(np.all(np.isfinite(v)) for v in update.values())
    norm = global_norm(update) if finite else math.inf
    ok = finite and (max_norm is None or norm <= max_norm)
    return NormCheck(norm, max_norm, ok)


# --------------------------------------------------------------------------- anomaly scoring


class Reason(str, Enum):
    NON_FINITE = "non_finite"
    NORM_BOUND = "norm_bound"  # above the hard bound
    NORM_OUTLIER = "norm_outlier"  # far above the recent median
    DIRECTION = "direction"  # points against the mean direction


@dataclass(frozen=True)
class AnomalyScore:
    norm: float
    norm_z: float  # (norm − median) / (1.4826 · MAD); 0 during warm-up
    cosine: float  # to the running mean direction; nan during warm-up
    reasons: tuple[Reason, ...]

    @property
    def anomalous(self) -> bool:
        return bool(self.reasons)


def _flat(update: Update, names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(update[n], dtype=np.float64).ravel() for n in names])


class AnomalyScorer:
    """Running statistics of accepted updates for one model.

    Call :meth:`score` on every candidate, then :meth:`observe` on those the
    service accepts. Memory: one model-sized float64 vector plus
    ``norm_window`` floats.
    """

    def __init__(self, config: RobustConfig) -> None:
        self.config = config
        self._norms: deque[float] = deque(maxlen=config.norm_window)
        self._direction: np.ndarray | None = None
        self._names: tuple[str, ...] | None = None
        self.observed = 0

    def _layout(self, update: Update) -> tuple[str, ...]:
        names = tuple(update)
        if self._names is None:
            self._names = names
        elif set(names) != set(self._names):
            raise PrivacyConfigError(
                f"update tensors {sorted(names)} differ from the model's {sorted(self._names)}"
            )
        return self._names

    def score(self, update: Update) -> AnomalyScore:
        cfg = self.config
        check = check_norm(update, cfg.max_norm)
        if not math.isfinite(check.norm):
            return AnomalyScore(math.inf, math.inf, math.nan, (Reason.NON_FINITE,))
        reasons: list[Reason] = []
        if not check.ok:
            reasons.append(Reason.NORM_BOUND)
        norm_z, cosine = 0.0, math.nan
        if self.observed >= cfg.warmup:
            norms = np.asarray(self._norms)
            median = float(np.median(norms))
            mad = float(np.median(np.abs(norms - median))) * MAD_TO_SIGMA
            # A floor on the spread: identical norms would make any change infinite.
            spread = max(mad, 1e-3 * median, 1e-12)
            norm_z = (check.norm - median) / spread
            if norm_z > cfg.norm_z_threshold:
                reasons.append(Reason.NORM_OUTLIER)
            assert self._direction is not None
            d_norm = float(np.linalg.norm(self._direction))
            if d_norm > 0 and check.norm > 0:
                vec = _flat(update, self._layout(update))
                cosine = float(vec @ self._direction) / (check.norm * d_norm)
                if cosine < cfg.min_cosine:
                    reasons.append(Reason.DIRECTION)
        return AnomalyScore(check.norm, norm_z, cosine, tuple(reasons))

    def observe(self, update: Update) -> None:
        """Fold an accepted update into the statistics."""
        names = self._layout(update)
        vec = _flat(update, names)
        norm = float(np.linalg.norm(vec))
        if not math.isfinite(norm):
            raise PrivacyConfigError("cannot observe an update with non-finite values")
        self._norms.append(norm)
        unit = vec / norm if norm > 0 else vec
        if self._direction is None:
            self._direction = unit.copy()
        else:
            beta = self.config.direction_decay
            self._direction *= beta
            self._direction += (1 - beta) * unit
        self.observed += 1


# --------------------------------------------------------------------------- policy


class Action(str, Enum):
    ACCEPT = "accept"  # aggregate it
    QUARANTINE = "quarantine"  # leave it out of the aggregate, count it
    THROTTLE = "throttle"  # leave it out and tell the device to stay away until `until`


@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: tuple[Reason, ...]
    strikes: int  # anomalies of this device within the strike window
    until: float | None = None  # end of the throttle, in the caller's clock
    retry_after: float | None = None


@dataclass
class _DeviceRecord:
    strikes: deque[float] = field(default_factory=deque)
    throttled_until: float = -math.inf
    throttles: int = 0
    accepted: int = 0
    quarantined: int = 0


class QuarantinePolicy:
    """Per-device strike counting and throttling. Time is passed in (the
    service's injected clock), so the simulator can run it on virtual time."""

    def __init__(self, config: RobustConfig) -> None:
        self.config = config
        self._devices: dict[str, _DeviceRecord] = {}

    def _record(self, device: str) -> _DeviceRecord:
        return self._devices.setdefault(device, _DeviceRecord())

    def throttled(self, device: str, now: float) -> float | None:
        """Seconds the device must still wait, or None."""
        rec = self._devices.get(device)
        if rec is None or rec.throttled_until <= now:
            return None
        return rec.throttled_until - now

    def decide(self, device: str, score: AnomalyScore, now: float) -> Decision:
        cfg = self.config
        rec = self._record(device)
        while rec.strikes and rec.strikes[0] <= now - cfg.strike_window_s:
            rec.strikes.popleft()
        wait = self.throttled(device, now)
        if wait is not None:
            rec.quarantined += 1
            return Decision(Action.THROTTLE, score.reasons, len(rec.strikes),
                            rec.throttled_until, wait)
        if not score.anomalous:
            rec.accepted += 1
            return Decision(Action.ACCEPT, (), len(rec.strikes))
        rec.strikes.append(now)
        rec.quarantined += 1
        if len(rec.strikes) >= cfg.strikes_to_throttle:
            duration = min(cfg.throttle_s * 2**rec.throttles, cfg.max_throttle_s)
            rec.throttles += 1
            rec.throttled_until = now + duration
            rec.strikes.clear()
            return Decision(Action.THROTTLE, score.reasons, cfg.strikes_to_throttle,
                            rec.throttled_until, duration)
        return Decision(Action.QUARANTINE, score.reasons, len(rec.strikes))

    def counters(self, device: str) -> dict[str, int]:
        rec = self._devices.get(device, _DeviceRecord())
        return {"accepted": rec.accepted, "quarantined": rec.quarantined,
                "throttles": rec.throttles, "strikes": len(rec.strikes)}


# --------------------------------------------------------------------------- aggregators


def _stack(updates: Sequence[Update]) -> tuple[list[str], dict[str, np.ndarray]]:
    if not updates:
        raise PrivacyConfigError("robust aggregation needs at least one update")
    names = list(updates[0])
    stacked = {}
    for name in names:
        shapes = {np.shape(u[name]) if name in u else None for u in updates}
        if len(shapes) != 1 or None in shapes:
            raise PrivacyConfigError(f"updates disagree on tensor {name!r} (missing or shape)")
        stacked[name] = np.stack([np.asarray(u[name], dtype=np.float64) for u in updates])
    if any(set(u) != set(names) for u in updates):
        raise PrivacyConfigError("updates carry different tensors")
    return names, stacked


def coordinate_median(updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Coordinate-wise median: with fewer than half the updates corrupted,
    each coordinate stays within the range of the honest ones."""
    names, stacked = _stack(updates)
    return {n: np.median(stacked[n], axis=0).astype(np.float32) for n in names}


def trimmed_mean(updates: Sequence[Update], trim_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping the ``trim_fraction`` largest and
    smallest values of each coordinate (at least one each side when the
    fraction is positive). Tolerates that many corrupted updates."""
    if not 0.0 <= trim_fraction < 0.5:
        raise PrivacyConfigError(f"trim_fraction: {trim_fraction} must be in [0, 0.5)")
    names, stacked = _stack(updates)
    n = len(updates)
    b = math.ceil(trim_fraction * n) if trim_fraction > 0 else 0
    if n - 2 * b < 1:
        raise PrivacyConfigError(
            f"trim_fraction {trim_fraction} trims {b} from each side of {n} updates: none left"
        )
    out = {}
    for name in names:
        ordered = np.sort(stacked[name], axis=0)
        out[name] = ordered[b : n - b].mean(axis=0).astype(np.float32)
    return out
