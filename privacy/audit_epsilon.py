"""One-run empirical ε from canary clients (Andrew, Kairouz, Oh, Oprea,
McMahan and Suriyakumar 2023, "One-shot Empirical Privacy Estimation for
Federated Learning").

The method, as this module implements it:

1. Before training, draw k *canary* directions c_i, independent and uniform
   on the unit sphere of the model's parameter space, and k′ more that are
   never used (the *unseen* canaries).
2. Add k canary clients to the population. Whenever the sampler picks one,
   its update is C · c_i (C the clip norm): the largest update a device may
   send, in a direction nothing else in training shares.
3. After training, take each canary's cosine with the final model delta
   θ_T − θ_0 (the threat model "only the final model is released"), or its
   largest cosine with any single step's delta θ_t − θ_{t−1} ("every
   published version is released").
4. Fit a Gaussian to the seen canaries' statistics and one to the unseen
   canaries'; the estimate is the ε at which the two Gaussians are
   (ε, δ)-indistinguishable — the ε of the Gaussian mechanism whose output
   distributions those are. In high dimension an unseen canary's cosine is
   ≈ N(0, 1/d), and for the Gaussian mechanism the seen canaries' cosine is
   Gaussian with the same variance, which is why the estimate is correct for
   that mechanism (the paper's theorem); for anything else it is an
   estimate, not a bound.

Two fits are reported: the paper's, where each Gaussian has its own mean
and standard deviation, and one where they share a pooled standard
deviation. With a thousand canaries the sampled ratio of the two stds is
off by a few per cent, and at δ = 1e-5 any ratio ≠ 1 adds ε (a wider
Gaussian's tail is unbounded privacy loss): on exact Gaussian-mechanism
samples the two-parameter fit comes out ≈ 0.25–0.5 too high where ε ≤ 3
(docs/privacy.md). The shared-std fit has no such bias on the mechanism
the method is exact for, so fedge uses it for the comparison with the
accountant and reports the paper's fit beside it.

The estimate should sit at or below the accountant's ε for the same run:
the accountant bounds every attack, including this one. A higher estimate
means the implementation adds less noise, clips less or samples differently
from what the accountant was told — the test this audit is for.

numpy and scipy only (server or offline side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from privacy.errors import AuditError


def _log_ndtr(x: float) -> float:
    from scipy.special import log_ndtr  # noqa: PLC0415  (scipy is heavy; load on use)

    return float(log_ndtr(x))


def _log_sub(a: float, b: float) -> float:
    """log(e^a − e^b) for a ≥ b (−inf when equal)."""
    if b == -math.inf:
        return a
    if b >= a:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log_mass(lo: float, hi: float, mean: float, std: float) -> float:
    """log P(lo < X < hi) for X ~ N(mean, std²), either end may be infinite."""
    # P(X < hi) − P(X < lo), each taken on the side of the mean where the
    # tail is small, so that tiny masses far from the mean stay accurate.
    u = (hi - mean) / std if hi != math.inf else math.inf
    v = (lo - mean) / std if lo != -math.inf else -math.inf
    if v >= 0:  # both above the mean: use upper tails, P(X > lo) − P(X > hi)
        upper_lo = _log_ndtr(-v)
        upper_hi = -math.inf if u == math.inf else _log_ndtr(-u)
        return _log_sub(upper_lo, upper_hi)
    lower_hi = 0.0 if u == math.inf else _log_ndtr(u)
    lower_lo = -math.inf if v == -math.inf else _log_ndtr(v)
    return _log_sub(lower_hi, lower_lo)


def _log_delta(mu1: float, s1: float, mu2: float, s2: float, eps: float) -> float:
    """log of the hockey-stick divergence E_{e^ε}(P ‖ Q) = sup_S P(S) − e^ε Q(S)
    for P = N(mu1, s1²), Q = N(mu2, s2²).

    The optimal S is where the log-likelihood ratio exceeds ε; that ratio is
    the quadratic a x² + b x + c, so S is a half-line (equal variances), the
    outside of two roots (a > 0) or the inside (a < 0)."""
    a = 0.5 / s2**2 - 0.5 / s1**2
    b = mu1 / s1**2 - mu2 / s2**2
    c = 0.5 * (mu2 / s2) ** 2 - 0.5 * (mu1 / s1) ** 2 + math.log(s2 / s1)
    pieces: list[tuple[float, float]]
    if abs(a) <= 1e-12 * max(1.0 / s1**2, 1.0 / s2**2):
        if b == 0:
            # Identical distributions (or a constant ratio e^c): δ = (1 − e^{ε−c})₊.
            return -math.inf if c <= eps else _log_sub(0.0, eps - c)
        t = (eps - c) / b
        pieces = [(t, math.inf)] if b > 0 else [(-math.inf, t)]
    else:
        disc = b * b - 4 * a * (c - eps)
        if disc <= 0:
            if a < 0:
                return -math.inf  # the ratio never exceeds e^ε
            pieces = [(-math.inf, math.inf)]
        else:
            r1 = (-b - math.sqrt(disc)) / (2 * a)
            r2 = (-b + math.sqrt(disc)) / (2 * a)
            lo, hi = min(r1, r2), max(r1, r2)
            pieces = [(lo, hi)] if a < 0 else [(-math.inf, lo), (hi, math.inf)]
    log_p = log_q = -math.inf
    for lo, hi in pieces:
        log_p = _log_add(log_p, _log_mass(lo, hi, mu1, s1))
        log_q = _log_add(log_q, _log_mass(lo, hi, mu2, s2))
    return _log_sub(log_p, eps + log_q)


def epsilon_between_gaussians(
    mean_a: float, std_a: float, mean_b: float, std_b: float, delta: float
) -> float:
    """The smallest ε ≥ 0 such that N(mean_a, std_a²) and N(mean_b, std_b²) are
    (ε, δ)-indistinguishable in both directions.

    With equal stds and |mean_a − mean_b| / std = 1/z this is the ε of one
    Gaussian mechanism with noise multiplier z (sensitivity 1, std z)."""
    for name, value in (("mean_a", mean_a), ("mean_b", mean_b)):
        if not math.isfinite(value):
            raise AuditError(f"{name}: {value} is not finite")
    for name, value in (("std_a", std_a), ("std_b", std_b)):
        if not (math.isfinite(value) and value > 0):
            raise AuditError(f"{name}: {value} must be a finite number > 0")
    if not 0 < delta < 1:
        raise AuditError(f"delta: {delta} must be strictly between 0 and 1")
    log_target = math.log(delta)

    def excess(eps: float) -> float:
        worst = max(_log_delta(mean_a, std_a, mean_b, std_b, eps),
                    _log_delta(mean_b, std_b, mean_a, std_a, eps))
        return worst - log_target

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return math.inf
    for _ in range(200):  # bisection: δ(ε) is decreasing in ε
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
    return hi


def gaussian_mechanism_epsilon(noise_multiplier: float, delta: float) -> float:
    """ε of one Gaussian mechanism (sensitivity 1, std ``noise_multiplier``),
    from the exact hockey-stick divergence (Balle and Wang 2018)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise AuditError(f"noise_multiplier: {noise_multiplier} must be > 0")
    return epsilon_between_gaussians(1.0 / noise_multiplier, 1.0, 0.0, 1.0, delta)


@dataclass(frozen=True)
class CanaryEstimate:
    """An empirical ε from seen and unseen canaries' statistics."""

    epsilon: float  # two Gaussians, each with its own mean and std (the paper's fit)
    # One std shared by both (pooled): the shape the paper's theorem gives
    # the Gaussian mechanism (seen and unseen cosines both have variance
    # ≈ 1/d). Free of the upward bias a sampled std ratio ≠ 1 gives the
    # two-parameter fit at small δ (measured in docs/privacy.md).
    epsilon_equal_variance: float
    delta: float
    seen_mean: float
    seen_std: float
    unseen_mean: float
    unseen_std: float
    seen: int
    unseen: int
    dim: int
    # The same two estimates with the unseen statistics replaced by the exact
    # null of a random direction, N(0, 1/d) (final-model statistic only).
    epsilon_analytic_null: float | None = None
    epsilon_analytic_null_equal_variance: float | None = None

    @property
    def separation(self) -> float:
        """(seen mean − unseen mean) / unseen std: the canaries' signal in
        units of the null's spread (1/z for one Gaussian mechanism)."""
        return (self.seen_mean - self.unseen_mean) / self.unseen_std

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "separation": self.separation}


def _fit(values: Sequence[float] | np.ndarray, what: str) -> tuple[float, float, int]:
    arr = np.asarray(values, np.float64).ravel()
    if arr.size < 2:
        raise AuditError(f"{what}: need at least 2 statistics to fit a Gaussian, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise AuditError(f"{what}: non-finite statistics")
    std = float(arr.std(ddof=1))
    if std <= 0:
        raise AuditError(f"{what}: all statistics are equal; a Gaussian cannot be fitted")
    return float(arr.mean()), std, int(arr.size)


def estimate_epsilon(
    seen: Sequence[float] | np.ndarray,
    unseen: Sequence[float] | np.ndarray,
    delta: float,
    *,
    dim: int,
    analytic_null: bool = False,
) -> CanaryEstimate:
    """Andrew et al.'s estimate: fit N(μ, σ²) to the seen canaries'
    statistics and to the unseen ones', return the ε between the two.
    ``analytic_null`` also reports the estimate against N(0, 1/dim), valid
    for the cosine with the final model delta (not for a max over steps)."""
    mu_s, sd_s, n_s = _fit(seen, "seen canaries")
    mu_u, sd_u, n_u = _fit(unseen, "unseen canaries")
    eps = epsilon_between_gaussians(mu_s, sd_s, mu_u, sd_u, delta)
    pooled = math.sqrt(((n_s - 1) * sd_s**2 + (n_u - 1) * sd_u**2) / (n_s + n_u - 2))
    eps_eq = epsilon_between_gaussians(mu_s, pooled, mu_u, pooled, delta)
    null_sd = dim**-0.5
    return CanaryEstimate(
        eps, eps_eq, delta, mu_s, sd_s, mu_u, sd_u, n_s, n_u, dim,
        epsilon_between_gaussians(mu_s, sd_s, 0.0, null_sd, delta) if analytic_null else None,
        epsilon_between_gaussians(mu_s, null_sd, 0.0, null_sd, delta) if analytic_null else None,
    )
