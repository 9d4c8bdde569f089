"""A centralized emulation of DP-FedAvg for audits and benchmarks, with
optional canary clients.

Not the fleet simulator: one process, one :class:`fedge.runtime.TrainableModel`
(the real exported TFLite graph) that every sampled device borrows in turn.
Each round samples every member of the population independently with
probability q (Poisson), each sampled real device trains ``local_steps``
full-batch steps on its own examples from the global weights, and its delta
is clipped to C. A sampled *canary* client sends C · c_i, its fixed unit
direction (:mod:`privacy.audit_canary`). The server sums, adds
N(0, (zC)²) with :func:`privacy.dp.add_noise`, divides by the *expected*
number of clients per round and steps with server learning rate 1. Without
DP (``noise_multiplier=None``) nothing is clipped and the sum is divided by
the realized count: plain FedAvg.

ε for the run comes from dp-accounting directly (the same events
:class:`privacy.accountant.PrivacyAccountant` charges, composed once for all
rounds instead of once per round, which costs tenths of a second per round).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from privacy.dp import DPConfig, add_noise, clip_update
from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.runtime import TrainableModel

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class FedAvgConfig:
    """One emulated training run."""

    rounds: int
    clients_per_round: float  # expected number sampled per round (real + canary)
    local_steps: int = 5
    local_lr: float = 0.1
    clip_norm: float = 1.0
    noise_multiplier: float | None = None  # None: plain FedAvg (no clip, no noise)
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise AuditError(f"rounds: {self.rounds} must be ≥ 1")
        if not self.clients_per_round > 0:
            raise AuditError(f"clients_per_round: {self.clients_per_round} must be > 0")
        if self.local_steps < 1:
            raise AuditError(f"local_steps: {self.local_steps} must be ≥ 1")
        if not (math.isfinite(self.local_lr) and self.local_lr > 0):
            raise AuditError(f"local_lr: {self.local_lr} must be a number > 0")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise AuditError(f"clip_norm: {self.clip_norm} must be a number > 0")
        z = self.noise_multiplier
        if z is not None and not (math.isfinite(z) and z >= 0):
            raise AuditError(f"noise_multiplier: {z} must be a number ≥ 0")
        if not 0 < self.delta < 1:
            raise AuditError(f"delta: {self.delta} must be strictly between 0 and 1")

    @property
    def dp(self) -> DPConfig | None:
        z = self.noise_multiplier
        return None if z is None else DPConfig(z, self.clip_norm, self.delta)


def canary_directions(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` independent directions uniform on the unit sphere of R^dim,
    as rows of a float32 array (Gaussian vectors, normalized)."""
    if count < 1 or dim < 2:
        raise AuditError(f"need at least one canary in ≥ 2 dimensions, got {count} in {dim}")
    out = np.empty((count, dim), np.float32)
    for i in range(count):  # row by row: bounded float64 scratch
        v = rng.standard_normal(dim)
        out[i] = v / np.linalg.norm(v)
    return out


def cosines(vector: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Cosine of ``vector`` with each row of ``directions`` (unit rows)."""
    v = np.asarray(vector, np.float64).ravel()
    norm = float(np.linalg.norm(v))
    if norm == 0 or not math.isfinite(norm):
        raise AuditError("the model delta is zero or not finite: nothing to measure")
    return (directions.astype(np.float64) @ v) / norm


@dataclass(frozen=True)
class Canaries:
    """Canary clients: ``seen`` are inserted (one client per row), ``unseen``
    are never used and measure the null. Rows are unit vectors over the
    model's trainable tensors, flattened in manifest order."""

    seen: np.ndarray
    unseen: np.ndarray

    def __post_init__(self) -> None:
        if (self.seen.ndim != 2 or self.unseen.ndim != 2
                or self.seen.shape[1] != self.unseen.shape[1]):
            raise AuditError("canaries: seen and unseen must be 2-D with the same width")


@dataclass
class FedAvgRun:
    """What a run produced and measured."""

    weights: Weights
    rounds: int
    sampling_probability: float
    clipped: int  # real updates that were scaled down
    updates: int  # real updates summed
    canary_updates: int
    # Canary statistics (empty without canaries): cosine of θ_T − θ_0 with
    # each canary, and the largest cosine of any round's step θ_t − θ_{t−1}.
    final_seen: np.ndarray
    final_unseen: np.ndarray
    max_step_seen: np.ndarray
    max_step_unseen: np.ndarray


def flatten(update: Weights, names: Sequence[str]) -> np.ndarray:
    return np.concatenate([np.asarray(update[n], np.float64).ravel() for n in names])


def unflatten(vector: np.ndarray, like: Weights, names: Sequence[str]) -> Weights:
    out: Weights = {}
    at = 0
    for n in names:
        size = like[n].size
        out[n] = vector[at : at + size].reshape(like[n].shape)
        at += size
    if at != vector.size:
        raise AuditError(f"a vector of {vector.size} values does not fit tensors of {at}")
    return out


def run_fedavg(
    model: TrainableModel,
    init: Weights,
    devices: Sequence[tuple[np.ndarray, np.ndarray]],
    config: FedAvgConfig,
    rng: np.random.Generator,
    *,
    canaries: Canaries | None = None,
) -> FedAvgRun:
    """Train from ``init``: ``devices`` is each real device's (x, y).

    Random draws per round, in order: one uniform per population member
    (real devices first, then canaries), then the noise."""
    if not devices:
        raise AuditError("no devices to train")
    names = [t.name for t in model.manifest.trainable]
    dim = sum(init[n].size for n in names)
    k = 0 if canaries is None else canaries.seen.shape[0]
    if canaries is not None and canaries.seen.shape[1] != dim:
        raise AuditError(f"canaries have {canaries.seen.shape[1]} values, the model {dim}")
    population = len(devices) + k
    q = config.clients_per_round / population
    if q > 1:
        raise AuditError(
            f"clients_per_round {config.clients_per_round} exceeds the population {population}"
        )
    dp = config.dp
    clip = config.clip_norm
    weights = {n: v.copy() for n, v in init.items()}
    clipped = updates = canary_updates = 0
    max_seen = np.full(k, -np.inf)
    max_unseen = np.full(0 if canaries is None else canaries.unseen.shape[0], -np.inf)
    for _ in range(config.rounds):
        chosen = np.flatnonzero(rng.random(population) < q)
        total = {n: np.zeros(weights[n].shape, np.float64) for n in names}
        for member in chosen:
            if member >= len(devices):
                assert canaries is not None
                direction = canaries.seen[member - len(devices)].astype(np.float64) * clip
                for n, v in unflatten(direction, init, names).items():
                    total[n] += v
                canary_updates += 1
                continue
            x, y = devices[int(member)]
            model.set_weights(weights)
            for _ in range(config.local_steps):
                model.train_step(x, y, config.local_lr)
            after = model.get_weights()
            delta_w = {n: after[n] - weights[n] for n in names}
            if dp is not None:
                result = clip_update(delta_w, clip)
                clipped += result.clipped
                delta_w = result.update
            for n in names:
                total[n] += delta_w[n]
            updates += 1
        if dp is not None:
            total = add_noise(total, dp, rng)
            denominator = float(config.clients_per_round)  # fixed: the realized count leaks
        else:
            denominator = float(max(len(chosen), 1))
        step = {n: total[n] / denominator for n in names}
        if canaries is not None:
            flat = flatten(step, names)
            if np.any(flat):
                max_seen = np.maximum(max_seen, cosines(flat, canaries.seen))
                max_unseen = np.maximum(max_unseen, cosines(flat, canaries.unseen))
        for n in names:
            weights[n] = (weights[n] + step[n]).astype(np.float32)
    final_seen = final_unseen = np.zeros(0)
    if canaries is not None:
        moved = flatten({n: weights[n].astype(np.float64) - init[n] for n in names}, names)
        final_seen = cosines(moved, canaries.seen)
        final_unseen = cosines(moved, canaries.unseen)
    return FedAvgRun(weights, config.rounds, q, clipped, updates, canary_updates,
                     final_seen, final_unseen, max_seen, max_unseen)


def accountant_epsilon(q: float, noise_multiplier: float, rounds: int, delta: float,
                       method: str = "rdp") -> float:
    """ε of ``rounds`` Poisson-sampled Gaussian steps — the events
    :class:`privacy.accountant.PrivacyAccountant` charges per step — from
    dp-accounting (``method`` "rdp", fedge's default, or "pld")."""
    import dp_accounting  # noqa: PLC0415  (server-side dependency; load on use)

    if noise_multiplier <= 0:
        return math.inf
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    event = gaussian if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
    accountant: dp_accounting.PrivacyAccountant
    if method == "pld":
        accountant = dp_accounting.pld.PLDAccountant()
    elif method == "rdp":
        accountant = dp_accounting.rdp.RdpAccountant()
    else:
        raise AuditError(f"accounting method {method!r}: expected 'rdp' or 'pld'")
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))
