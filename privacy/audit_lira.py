"""The likelihood-ratio membership attack with shadow models (LiRA; Carlini,
Chien, Nasr, Song, Terzis and Tramèr 2022, "Membership Inference Attacks
From First Principles").

The loss-threshold attack (:mod:`privacy.audit`) compares every example's
loss against one global threshold, so it mostly measures the train/test gap.
LiRA asks, per example, how this model's confidence on it compares with
models that did and did not train on it:

1. Train M models the way the target was trained (same graph, same initial
   weights, same recipe), each on a random half of a data pool.
2. For every (model, example) take the logit-scaled confidence on the true
   label, φ = log p_y − log(1 − p_y), which is close to Gaussian across
   training runs.
3. For a target model and example, fit N(μ_in, σ²) to φ over the shadow
   models that trained on the example and N(μ_out, σ²) over those that did
   not; the score is the log-likelihood ratio of the target's φ under the
   two. With few shadow models one variance is shared by all examples (the
   paper's fixed-variance variant); the *offline* variant uses the "out"
   models only (score (φ − μ_out)/σ_out).
4. Each of the M models is the target once, with the other M − 1 as its
   shadows (leave-one-out), so every score is honest: a target never sees
   its own training run among its shadows.

It reports the ROC AUC and the true-positive rate at 0.1 % and 1 %
false-positive rate — the regime an attacker cares about, where the
loss-threshold attack is near zero — beside the loss-threshold attack on
the same models.

Models train with the real TFLite graph (:class:`fedge.runtime.TrainableModel`):
centralized mini-batch SGD for the capacity and data-size sweep, or the
DP-FedAvg emulation (:mod:`privacy.audit_fedavg`, one example per device)
to see what DP does to the attack.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.audit import max_advantage, roc_auc, tpr_at_fpr
from privacy.audit_fedavg import FedAvgConfig, accountant_epsilon, run_fedavg
from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.runtime import TrainableModel

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class LiraConfig:
    """How the target and shadow models are trained and attacked."""

    models: int = 17  # target + shadows; every model is the target once
    train_size: int = 200  # examples each model trains on (half the pool)
    epochs: int = 100  # centralized training
    batch_size: int = 32
    lr: float = 0.1
    seed: int = 0
    # Train with the DP-FedAvg emulation (one example per device) instead.
    fedavg: FedAvgConfig | None = None

    def __post_init__(self) -> None:
        if self.models < 3:
            raise AuditError(f"models: {self.models} must be ≥ 3 (a target and two shadows)")
        if self.train_size < 2:
            raise AuditError(f"train_size: {self.train_size} must be ≥ 2")
        if self.epochs < 1 or self.batch_size < 1:
            raise AuditError("epochs and batch_size must be ≥ 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise AuditError(f"lr: {self.lr} must be > 0")


@dataclass(frozen=True)
class AttackScores:
    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    advantage: float


@dataclass(frozen=True)
class LiraResult:
    lira_online: AttackScores
    lira_offline: AttackScores
    loss_threshold: AttackScores
    models: int
    pool: int
    scored: int  # (target, example) pairs scored
    train_accuracy: float  # mean over models, on their own members
    test_accuracy: float  # mean over models, on held-out data
    epsilon: float | None  # accountant ε (RDP) when trained with DP
    seconds_training: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(pos: np.ndarray, neg: np.ndarray) -> AttackScores:
    return AttackScores(
        auc=roc_auc(pos, neg),
        tpr_at_0_1pct_fpr=tpr_at_fpr(pos, neg, 0.001),
        tpr_at_1pct_fpr=tpr_at_fpr(pos, neg, 0.01),
        advantage=max_advantage(pos, neg)[0],
    )


def logit_confidence(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log p_y − log Σ_{j≠y} p_j from the model's softmax output, in
    float64 (summing the other classes instead of taking 1 − p_y, which is 0
    once a float32 p_y rounds to 1)."""
    p = np.asarray(probabilities, np.float64)
    rows = np.arange(len(p))
    others = np.ones(p.shape, bool)
    others[rows, labels] = False
    tiny = 1e-45  # float32 probabilities underflow to 0 below ≈ 1e-45
    phi: np.ndarray = np.log(p[rows, labels] + tiny) - np.log(
        np.where(others, p, 0.0).sum(axis=1) + tiny)
    return phi


@dataclass(frozen=True)
class Scored:
    """Every (target model, example) pair LiRA could score."""

    online: np.ndarray
    offline: np.ndarray
    member: np.ndarray  # the ground truth
    target: np.ndarray  # model index
    example: np.ndarray  # example index


def lira_scores(phi: np.ndarray, member: np.ndarray) -> Scored:
    """Leave-one-out LiRA over M models × n examples.

    ``phi[m, i]``: model m's logit confidence on example i; ``member[m, i]``:
    whether model m trained on it. Each model is the target once, the other
    M − 1 its shadows; an example is scored for a target when it has at least
    one "in" and one "out" shadow."""
    phi = np.asarray(phi, np.float64)
    member = np.asarray(member, bool)
    models = phi.shape[0]
    parts: list[tuple[np.ndarray, ...]] = []
    for t in range(models):
        shadows = np.arange(models) != t
        sp, sm = phi[shadows], member[shadows]
        n_in, n_out = sm.sum(axis=0), (~sm).sum(axis=0)
        ok = np.flatnonzero((n_in >= 1) & (n_out >= 1))
        if ok.size == 0:
            continue
        sp, sm = sp[:, ok], sm[:, ok]
        mu_in = (sp * sm).sum(axis=0) / n_in[ok]
        mu_out = (sp * ~sm).sum(axis=0) / n_out[ok]
        # One variance per side, pooled over all examples (the paper's
        # fixed-variance variant, for a modest number of shadow models).
        sd_in = max(float(np.sqrt(np.mean(((sp - mu_in) ** 2)[sm]))), 1e-6)
        sd_out = max(float(np.sqrt(np.mean(((sp - mu_out) ** 2)[~sm]))), 1e-6)
        x = phi[t, ok]
        ll_in = -0.5 * ((x - mu_in) / sd_in) ** 2 - math.log(sd_in)
        ll_out = -0.5 * ((x - mu_out) / sd_out) ** 2 - math.log(sd_out)
        parts.append((ll_in - ll_out, (x - mu_out) / sd_out, member[t, ok],
                      np.full(ok.size, t), ok))
    if not parts:
        raise AuditError("no example has both an 'in' and an 'out' shadow model; train more "
                         "models")
    online, offline, labels, targets, examples = (np.concatenate(c) for c in zip(*parts,
                                                                                 strict=True))
    return Scored(online, offline, labels.astype(bool), targets, examples)


def _membership(models: int, pool: int, train_size: int, rng: np.random.Generator) -> np.ndarray:
    member = np.zeros((models, pool), bool)
    for m in range(models):
        member[m, rng.choice(pool, train_size, replace=False)] = True
    return member


def _train_central(model: TrainableModel, init: Weights, x: np.ndarray, y: np.ndarray, *,
                   config: LiraConfig, rng: np.random.Generator) -> Weights:
    model.set_weights(init)
    for _ in range(config.epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), config.batch_size):
            batch = order[i : i + config.batch_size]
            model.train_step(x[batch], y[batch], config.lr)
    return model.get_weights()


def run_lira(
    model: TrainableModel,
    init: Weights,
    pool: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    config: LiraConfig,
) -> LiraResult:
    """Train ``config.models`` models on random halves of ``pool`` (inputs
    already shaped for the model) from ``init`` and attack each with the
    others as shadows. ``held_out`` measures test accuracy."""
    px, py = pool
    if len(px) != 2 * config.train_size:
        raise AuditError(f"the pool must hold 2 × train_size = {2 * config.train_size} "
                         f"examples, got {len(px)}")
    rng = np.random.default_rng(config.seed)
    member = _membership(config.models, len(px), config.train_size, rng)
    phi = np.empty(member.shape)
    loss = np.empty(member.shape)
    train_acc: list[float] = []
    test_acc: list[float] = []
    started = time.perf_counter()
    fed = config.fedavg
    for m in range(config.models):
        idx = np.flatnonzero(member[m])
        if fed is None:
            weights = _train_central(model, init, px[idx], py[idx], config=config, rng=rng)
        else:
            devices = [(px[i : i + 1], py[i : i + 1]) for i in idx]
            weights = run_fedavg(model, init, devices, fed, rng).weights
        model.set_weights(weights)
        probs = np.asarray(model.infer(px), np.float64)
        phi[m] = logit_confidence(probs, py)
        loss[m] = -np.log(probs[np.arange(len(py)), py] + 1e-45)
        train_acc.append(float(np.mean(np.argmax(probs[idx], axis=1) == py[idx])))
        test_acc.append(float(model.evaluate(*held_out)["accuracy"]))
    seconds = time.perf_counter() - started
    scored = lira_scores(phi, member)
    loss_scores = -loss[scored.target, scored.example]
    labels = scored.member
    epsilon = None
    if fed is not None and fed.noise_multiplier:
        q = fed.clients_per_round / config.train_size
        epsilon = accountant_epsilon(q, fed.noise_multiplier, fed.rounds, fed.delta)
    return LiraResult(
        lira_online=_scores(scored.online[labels], scored.online[~labels]),
        lira_offline=_scores(scored.offline[labels], scored.offline[~labels]),
        loss_threshold=_scores(loss_scores[labels], loss_scores[~labels]),
        models=config.models,
        pool=len(px),
        scored=int(labels.size),
        train_accuracy=float(np.mean(train_acc)),
        test_accuracy=float(np.mean(test_acc)),
        epsilon=epsilon,
        seconds_training=seconds,
    )

