"""The membership-inference audit: AUC and advantage maths against sklearn,
and the attack against the real exported TFLite mlp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from privacy.audit import (
    audit_model,
    dp_advantage_bound,
    loss_threshold_attack,
    max_advantage,
    per_example_losses,
    roc_auc,
)
from privacy.errors import AuditError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_advantage_match_sklearn_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(0.3, 1, size=300), 1)  # rounding makes ties
    neg = np.round(rng.normal(0.0, 1, size=250), 1)
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    scores = np.r_[pos, neg]
    assert roc_auc(pos, neg) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    adv, _ = max_advantage(pos, neg)
    assert adv == pytest.approx(float(np.max(tpr - fpr)), abs=1e-12)


def test_attack_direction_low_loss_means_member() -> None:
    result = loss_threshold_attack([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    assert result.auc == 1.0 and result.advantage == 1.0
    assert 0.3 <= result.threshold < 1.0
    flipped = loss_threshold_attack([1.0, 2.0, 3.0], [0.1, 0.2, 0.3])
    assert flipped.auc == 0.0 and flipped.advantage == 0.0


@pytest.mark.parametrize(
    ("members", "non_members", "message"),
    [
        ([], [1.0], "member losses: no examples"),
        ([1.0], [np.nan], "non-finite"),
    ],
)
def test_attack_input_errors(members: list[float], non_members: list[float], message: str) -> None:
    with pytest.raises(AuditError, match=message):
        loss_threshold_attack(members, non_members)


def test_dp_advantage_bound() -> None:
    assert dp_advantage_bound(0.0, 0.0) == 0.0
    assert dp_advantage_bound(1.0, 1e-5) == pytest.approx((np.e - 1) / (np.e + 1), abs=1e-4)
    assert dp_advantage_bound(float("inf"), 0.0) == 1.0
    with pytest.raises(AuditError):
        dp_advantage_bound(-1.0, 0.0)


# --------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)


def _model(exported_mlp: Path):  # type: ignore[no-untyped-def]
    from fedge.manifest import load_model_dir
    from fedge.runtime import TrainableModel

    manifest, path = load_model_dir(exported_mlp)
    return TrainableModel(path, manifest)


def test_a_model_that_saw_neither_set_gives_auc_near_half(
    exported_mlp: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    model = _model(exported_mlp)
    # Trained on a third disjoint set so the losses are informative, not
    # just those of a random initialisation.
    for _ in range(20):
        for i in range(1000, 1600, 32):
            model.train_step(x[i : i + 32], y[i : i + 32], 0.05)
    result = audit_model(model, (x[:250], y[:250]), (x[250:500], y[250:500]))
    # AUC's standard error with 250 + 250 examples is ≈ 0.026.
    assert abs(result.auc - 0.5) < 0.1
    assert result.members == result.non_members == 250


def test_an_overfit_model_is_caught(
    exported_mlp: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = digits
    model = _model(exported_mlp)
    members, non_members = (x[:48], y[:48]), (x[500:548], y[500:548])
    before = audit_model(model, members, non_members)
    for _ in range(300):
        model.train_step(*members, 0.1)
    after = audit_model(model, members, non_members)
    assert after.auc > 0.75 and after.auc > before.auc + 0.2
    assert after.advantage > 0.4
    assert after.member_loss < after.non_member_loss


def test_per_example_losses_input_errors(exported_mlp: Path) -> None:
    model = _model(exported_mlp)
    with pytest.raises(AuditError, match="3 inputs but 2 labels"):
        per_example_losses(model, np.zeros((3, 64)), np.zeros(2))
    with pytest.raises(AuditError, match="expects"):
        per_example_losses(model, np.zeros((2, 10)), np.zeros(2))
    with pytest.raises(AuditError, match="no examples"):
        per_example_losses(model, np.zeros((0, 64)), np.zeros(0))
