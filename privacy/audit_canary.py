"""The one-run ε audit: insert canary clients into an emulated DP-FedAvg run
with the real TFLite model and estimate ε from that single run, beside the
accountant's ε for the same run (method: :mod:`privacy.audit_epsilon`;
training: :mod:`privacy.audit_fedavg`).

Threat models, one estimate each:

- **final model**: the attacker sees θ_T only (and θ_0). Statistic: each
  canary's cosine with θ_T − θ_0; null: the cosine of a random direction,
  exactly the cosine distribution of R^d (≈ N(0, 1/d)), so no sampling error
  on that side (the paper's estimator for this threat model). The estimate
  with the empirical unseen canaries is reported too.
- **every version**: the attacker sees every θ_t. Statistic: each canary's
  largest cosine with one step θ_t − θ_{t−1}; the null is the unseen
  canaries' same statistic (no closed form for a maximum).

The estimates compared with the accountant use Gaussians with a shared
standard deviation; the paper's two-parameter fit is reported beside them
(:mod:`privacy.audit_epsilon` says why). Each comes with a 95 % bootstrap
interval over canaries: the estimate is a statistic of ≈ a thousand
canaries, and where the accountant is nearly tight (large noise, many
rounds: the composition is then close to one Gaussian, which the
final-model attack is optimal against) its sampling error decides whether
the point estimate lands a little above or below the bound. A point
estimate above the accountant's ε whose interval also lies above it is a
bug to find.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.audit_epsilon import CanaryEstimate, epsilon_between_gaussians, estimate_epsilon
from privacy.audit_fedavg import (
    Canaries,
    FedAvgConfig,
    accountant_epsilon,
    canary_directions,
    run_fedavg,
)
from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.runtime import TrainableModel

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class EpsilonAuditConfig:
    noise_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    devices: int = 1200  # real devices, one example each
    canaries: int = 1000  # inserted
    unseen: int = 1000  # never inserted
    clients_per_round: float = 100.0  # expected, real + canary
    rounds: int = 200
    local_steps: int = 5
    local_lr: float = 0.1
    clip_norm: float = 1.0
    delta: float = 1e-5
    seed: int = 0
    bootstrap: int = 200

    def __post_init__(self) -> None:
        if not self.noise_multipliers or any(
            not (math.isfinite(z) and z > 0) for z in self.noise_multipliers
        ):
            raise AuditError("noise multipliers must be finite numbers > 0 (ε needs noise)")
        if self.devices < 1 or self.canaries < 2 or self.unseen < 2:
            raise AuditError("need ≥ 1 device and ≥ 2 seen and ≥ 2 unseen canaries")
        if self.bootstrap < 0:
            raise AuditError(f"bootstrap: {self.bootstrap} must be ≥ 0")
        population = self.devices + self.canaries
        if self.clients_per_round > population:
            raise AuditError(
                f"clients per round {self.clients_per_round:g} exceeds the population "
                f"{population} (devices + canaries)"
            )


@dataclass(frozen=True)
class EpsilonRow:
    """One noise multiplier: the accountant's ε and the canary estimates."""

    noise_multiplier: float
    sampling_probability: float
    rounds: int
    test_accuracy: float
    epsilon_rdp: float  # what fedge's accountant charges (RDP)
    epsilon_pld: float  # the tighter PLD figure for the same events
    # Empirical ε, shared-std fit (compared with the bound), with 95 %
    # bootstrap intervals, and the paper's two-parameter fit beside each.
    final_model: float  # cosine with θ_T − θ_0 against N(0, 1/d)
    final_model_interval: tuple[float, float]
    final_model_two_parameter: float
    every_version: float  # max cosine with one step, against unseen canaries
    every_version_interval: tuple[float, float]
    every_version_two_parameter: float
    final_detail: CanaryEstimate
    steps_detail: CanaryEstimate
    canary_updates: int
    seconds: float

    @property
    def within_bound(self) -> bool:
        """Both point estimates at or below the tightest accountant ε."""
        return self.final_model <= self.epsilon_pld and self.every_version <= self.epsilon_pld

    @property
    def significantly_above(self) -> bool:
        """An estimate whose whole interval lies above the bound: a bug."""
        return (self.final_model_interval[0] > self.epsilon_pld
                or self.every_version_interval[0] > self.epsilon_pld)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["final_detail"] = self.final_detail.to_dict()
        out["steps_detail"] = self.steps_detail.to_dict()
        out["within_bound"] = self.within_bound
        out["significantly_above"] = self.significantly_above
        return out


def _required(value: float | None) -> float:
    if value is None:
        raise AuditError("the analytic-null estimate was not computed")
    return value


def _interval(values: list[float]) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    arr = np.asarray(values)
    finite = arr[np.isfinite(arr)]
    if finite.size < arr.size:  # an infinite resample: the upper end is unbounded
        return (float(np.percentile(finite, 2.5)) if finite.size else math.inf, math.inf)
    return float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))


def bootstrap_final(seen: np.ndarray, *, dim: int, delta: float, rounds: int,
                    rng: np.random.Generator) -> tuple[float, float]:
    """95 % interval of the final-model (analytic null, shared std)
    estimate, resampling canaries."""
    null = dim**-0.5
    values = []
    for _ in range(rounds):
        mean = float(rng.choice(seen, seen.size).mean())
        values.append(epsilon_between_gaussians(mean, null, 0.0, null, delta))
    return _interval(values)


def bootstrap_pair(seen: np.ndarray, unseen: np.ndarray, *, dim: int, delta: float,
                   rounds: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % interval of the seen-vs-unseen (shared std) estimate, resampling both."""
    values = []
    for _ in range(rounds):
        values.append(estimate_epsilon(rng.choice(seen, seen.size), rng.choice(unseen,
                                       unseen.size), delta, dim=dim).epsilon_equal_variance)
    return _interval(values)


def run_epsilon_audit(
    model: TrainableModel,
    init: Weights,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    config: EpsilonAuditConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[EpsilonRow]:
    """One training run per noise multiplier, the same canaries in each.
    ``train`` gives the devices (one example each, the first
    ``config.devices``), ``test`` the held-out accuracy."""
    x, y = train
    if len(x) < config.devices:
        raise AuditError(f"{config.devices} devices need {config.devices} examples, "
                         f"the data has {len(x)}")
    names = [t.name for t in model.manifest.trainable]
    dim = sum(init[n].size for n in names)
    rng = np.random.default_rng([config.seed, 7])
    canaries = Canaries(canary_directions(config.canaries, dim, rng),
                        canary_directions(config.unseen, dim, rng))
    devices: Sequence[tuple[np.ndarray, np.ndarray]] = [
        (x[i : i + 1], y[i : i + 1]) for i in range(config.devices)
    ]
    rows = []
    for z in config.noise_multipliers:
        started = time.perf_counter()
        fed = FedAvgConfig(rounds=config.rounds, clients_per_round=config.clients_per_round,
                           local_steps=config.local_steps, local_lr=config.local_lr,
                           clip_norm=config.clip_norm, noise_multiplier=z, delta=config.delta)
        run = run_fedavg(model, init, devices, fed, np.random.default_rng([config.seed, 1]),
                         canaries=canaries)
        model.set_weights(run.weights)
        accuracy = float(model.evaluate(*test)["accuracy"])
        final = estimate_epsilon(run.final_seen, run.final_unseen, config.delta, dim=dim,
                                 analytic_null=True)
        steps = estimate_epsilon(run.max_step_seen, run.max_step_unseen, config.delta, dim=dim)
        boot = np.random.default_rng([config.seed, 3])
        q = run.sampling_probability
        rows.append(EpsilonRow(
            noise_multiplier=z,
            sampling_probability=q,
            rounds=config.rounds,
            test_accuracy=accuracy,
            epsilon_rdp=accountant_epsilon(q, z, config.rounds, config.delta, "rdp"),
            epsilon_pld=accountant_epsilon(q, z, config.rounds, config.delta, "pld"),
            final_model=_required(final.epsilon_analytic_null_equal_variance),
            final_model_interval=bootstrap_final(run.final_seen, dim=dim, delta=config.delta,
                                                 rounds=config.bootstrap, rng=boot),
            final_model_two_parameter=_required(final.epsilon_analytic_null),
            every_version=steps.epsilon_equal_variance,
            every_version_interval=bootstrap_pair(run.max_step_seen, run.max_step_unseen,
                                                  dim=dim, delta=config.delta,
                                                  rounds=config.bootstrap, rng=boot),
            every_version_two_parameter=steps.epsilon,
            final_detail=final,
            steps_detail=steps,
            canary_updates=run.canary_updates,
            seconds=time.perf_counter() - started,
        ))
        if progress is not None:
            progress(f"z={z:g}: done")
    return rows
