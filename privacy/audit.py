"""Empirical privacy audit: membership inference against a trained model.

The loss-threshold attack (Yeom et al. 2018, "Privacy Risk in Machine
Learning: Analyzing the Connection to Overfitting") guesses that an example
was in the training data when the model's loss on it is low. Its ROC AUC over
all thresholds measures how well a model separates members from
non-members (0.5: not at all), and its membership advantage
max_τ (TPR − FPR) is the quantity DP bounds: an (ε, δ)-DP training run
limits any attack's advantage to (e^ε − 1 + 2δ) / (e^ε + 1)
(Humphries et al. 2020; Kairouz et al. 2015). The audit is a *lower* bound
on leakage — a weak attack failing proves nothing — while the accountant's ε
is an upper bound; reporting both shows where a deployment sits between them.

The shadow-model variant (Shokri et al. 2017) calibrates the threshold on
models trained on data the attacker controls; the loss-threshold attack with
the ROC sweep is the usual strong-enough baseline for an operator's own
audit, and is what this module implements.

Runs on the server or in the simulator; uses :class:`fedge.runtime.TrainableModel`
so it audits exactly the TFLite graph devices run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.runtime import TrainableModel


@dataclass(frozen=True)
class AuditResult:
    """A membership-inference attack's outcome."""

    attack: str
    auc: float  # P(score(member) > score(non-member)), ties count ½
    advantage: float  # max over thresholds of TPR − FPR
    threshold: float  # the loss at which the advantage is reached
    members: int
    non_members: int
    member_loss: float  # mean loss on members
    non_member_loss: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scores(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise AuditError(f"{what}: no examples")
    if not np.all(np.isfinite(arr)):
        raise AuditError(f"{what}: non-finite values")
    return arr


def roc_auc(positive: Any, negative: Any) -> float:
    """ROC AUC of scores where higher means "positive" (Mann–Whitney U with
    average ranks for ties)."""
    pos, neg = _scores(positive, "positive scores"), _scores(negative, "negative scores")
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(allv.size, dtype=np.float64)
    sorted_vals = allv[order]
    # Average ranks over runs of equal values.
    boundaries = np.flatnonzero(np.diff(sorted_vals)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [allv.size]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # 1-based average rank
    rank_sum = float(ranks[: pos.size].sum())
    u = rank_sum - pos.size * (pos.size + 1) / 2.0
    return u / (pos.size * neg.size)


def max_advantage(positive: Any, negative: Any) -> tuple[float, float]:
    """max_τ TPR(τ) − FPR(τ) for the rule "positive when score ≥ τ", and τ."""
    pos, neg = _scores(positive, "positive scores"), _scores(negative, "negative scores")
    thresholds = np.unique(np.concatenate([pos, neg]))
    pos_sorted, neg_sorted = np.sort(pos), np.sort(neg)
    tpr = 1.0 - np.searchsorted(pos_sorted, thresholds, side="left") / pos.size
    fpr = 1.0 - np.searchsorted(neg_sorted, thresholds, side="left") / neg.size
    gap = tpr - fpr
    best = int(np.argmax(gap))
    return max(float(gap[best]), 0.0), float(thresholds[best])


def tpr_at_fpr(positive: Any, negative: Any, fpr: float) -> float:
    """The largest true-positive rate of a rule "positive when score ≥ τ"
    whose false-positive rate is at most ``fpr`` (Carlini et al. 2022 report
    attacks this way: what an attacker finds while rarely wrong). With n
    negatives a rate below 1/n can only be met with no false positive."""
    if not 0 <= fpr <= 1:
        raise AuditError(f"fpr: {fpr} must be between 0 and 1")
    pos, neg = _scores(positive, "positive scores"), _scores(negative, "negative scores")
    neg_sorted = np.sort(neg)[::-1]  # descending
    allowed = math.floor(fpr * neg.size + 1e-9)  # false positives the rate allows
    if allowed >= neg.size:
        return 1.0
    # The threshold must lie strictly above the (allowed+1)-th largest negative.
    cutoff = neg_sorted[allowed]
    return float(np.count_nonzero(pos > cutoff)) / pos.size


def loss_threshold_attack(member_losses: Any, non_member_losses: Any) -> AuditResult:
    """Yeom et al.'s attack from per-example losses (lower loss ⇒ member)."""
    m = _scores(member_losses, "member losses")
    n = _scores(non_member_losses, "non-member losses")
    adv, tau = max_advantage(-m, -n)
    return AuditResult(
        attack="loss_threshold",
        auc=roc_auc(-m, -n),
        advantage=adv,
        threshold=-tau,
        members=m.size,
        non_members=n.size,
        member_loss=float(m.mean()),
        non_member_loss=float(n.mean()),
    )


def per_example_losses(model: TrainableModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The model's loss on each example, through its ``evaluate`` signature
    (batch of one: works for any loss the exporter supports)."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise AuditError(f"{len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise AuditError("no examples to audit")
    expected = tuple(model.manifest.input.shape)
    if tuple(x.shape[1:]) != expected:
        raise AuditError(f"inputs have shape {tuple(x.shape[1:])}, the model expects {expected}")
    losses = np.empty(len(x), dtype=np.float64)
    for i in range(len(x)):
        out = model.evaluate(x[i : i + 1], y[i : i + 1])
        if "loss" not in out:
            raise AuditError(f"the model's evaluate signature returns {sorted(out)}, no 'loss'")
        losses[i] = out["loss"]
    if not np.all(np.isfinite(losses)):
        raise AuditError("the model produced non-finite losses")
    return losses


def audit_model(
    model: TrainableModel,
    members: tuple[np.ndarray, np.ndarray],
    non_members: tuple[np.ndarray, np.ndarray],
) -> AuditResult:
    """Run the loss-threshold attack against ``model``: ``members`` is (x, y)
    it was trained on, ``non_members`` (x, y) from the same distribution that
    it never saw. Use equally sized sets for a meaningful advantage."""
    return loss_threshold_attack(
        per_example_losses(model, *members), per_example_losses(model, *non_members)
    )


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage an (ε, δ)-DP mechanism allows."""
    if epsilon < 0 or not 0 <= delta < 1:
        raise AuditError(f"need ε ≥ 0 and 0 ≤ δ < 1, got {epsilon}, {delta}")
    if math.isinf(epsilon):
        return 1.0
    e = math.exp(min(epsilon, 700.0))
    return min(1.0, (e - 1 + 2 * delta) / (e + 1))
