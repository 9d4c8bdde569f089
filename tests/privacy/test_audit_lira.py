"""LiRA: the score maths on synthetic confidences, TPR at low FPR against
scikit-learn, and the attack on the real TFLite mlp — it separates members
of an overfit model, finds nothing in a model that barely trained, and DP
training lowers it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from privacy.audit import roc_auc, tpr_at_fpr
from privacy.audit_lira import LiraConfig, lira_scores, logit_confidence, run_lira
from privacy.errors import AuditError


@pytest.mark.parametrize("seed", [0, 1])
def test_tpr_at_fpr_matches_the_roc_curve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pos = np.round(rng.normal(1.0, 1.0, 3000), 2)
    neg = np.round(rng.normal(0.0, 1.0, 5000), 2)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(pos.size), np.zeros(neg.size)], np.r_[pos, neg])
    for target in (0.001, 0.01, 0.1):
        assert tpr_at_fpr(pos, neg, target) == pytest.approx(float(tpr[fpr <= target].max()))
    assert tpr_at_fpr(pos, neg, 1.0) == 1.0
    with pytest.raises(AuditError):
        tpr_at_fpr(pos, neg, 1.5)


def test_logit_confidence_survives_saturated_probabilities() -> None:
    p = np.array([[1.0, 1e-20, 0.0], [0.2, 0.5, 0.3]], np.float32)
    phi = logit_confidence(p, np.array([0, 1]))
    assert phi[0] == pytest.approx(np.log(1 / 1e-20), rel=1e-3)  # not inf
    assert phi[1] == pytest.approx(0.0, abs=1e-6)


def _synthetic(shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """64 models × 200 examples: each example has its own difficulty, and
    training on it raises its confidence by ``shift``."""
    rng = np.random.default_rng(seed)
    member = rng.random((64, 200)) < 0.5
    difficulty = rng.normal(0.0, 3.0, 200)  # what a global threshold cannot see past
    phi = difficulty + shift * member + rng.normal(0.0, 1.0, member.shape)
    return phi, member


def test_lira_uses_per_example_calibration() -> None:
    phi, member = _synthetic(1.5)
    scored = lira_scores(phi, member)
    assert scored.online.size == member.size  # 64 models: every example has in and out shadows
    lira = roc_auc(scored.online[scored.member], scored.online[~scored.member])
    # The same statistic with one global threshold: the difficulty drowns the shift.
    raw = phi[scored.target, scored.example]
    threshold = roc_auc(raw[scored.member], raw[~scored.member])
    assert lira > 0.8 > threshold + 0.1
    assert tpr_at_fpr(scored.online[scored.member], scored.online[~scored.member], 0.01) > 0.1


def test_lira_finds_nothing_when_training_changes_nothing() -> None:
    phi, member = _synthetic(0.0)
    scored = lira_scores(phi, member)
    assert abs(roc_auc(scored.online[scored.member], scored.online[~scored.member]) - 0.5) < 0.03


def test_lira_skips_examples_without_in_and_out_shadows() -> None:
    member = np.array([[True, False], [True, True], [True, False]])
    scored = lira_scores(np.zeros((3, 2)) + np.arange(3)[:, None], member)
    # Example 0 is in every model: no "out" shadow for any target.
    assert set(scored.example.tolist()) == {1}
    with pytest.raises(AuditError, match="train more models"):
        lira_scores(np.zeros((3, 1)), np.ones((3, 1), bool))


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def mlp(exported_mlp: Path) -> tuple[object, dict[str, np.ndarray], object]:
    from privacy.audit_setup import digits, open_model

    model = open_model(exported_mlp)
    return model, model.get_weights(), digits(0)


def _run(mlp: tuple[object, dict[str, np.ndarray], object], config: LiraConfig):  # type: ignore[no-untyped-def]
    model, init, data = mlp
    n = 2 * config.train_size
    return run_lira(model, init, (data.x[:n], data.y[:n]),  # type: ignore[attr-defined, arg-type]
                    (data.x[1600:], data.y[1600:]), config)  # type: ignore[attr-defined]


def test_lira_separates_the_members_of_an_overfit_model(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    result = _run(mlp, LiraConfig(models=17, train_size=50, epochs=100, seed=1))
    assert result.train_accuracy > 0.99 and result.test_accuracy < 0.9  # memorised
    assert result.lira_online.auc > 0.8
    assert result.lira_online.auc > result.loss_threshold.auc + 0.05
    assert result.lira_online.tpr_at_1pct_fpr > 0.1 > result.loss_threshold.tpr_at_1pct_fpr
    assert result.scored > 500


def test_membership_shows_after_two_tiny_steps_when_the_initial_weights_are_known(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    """Every model starts from the published initial weights and trains
    deterministically: the only thing that differs between shadow models is
    which examples they saw, so even two SGD steps of lr 1e-4 leave a
    per-example trace LiRA reads (while accuracy has not moved)."""
    result = _run(mlp, LiraConfig(models=9, train_size=50, epochs=1, lr=1e-4, seed=1))
    assert result.test_accuracy < 0.3
    assert result.lira_online.auc > 0.58


def test_dp_fedavg_training_weakens_lira(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    from privacy.audit_fedavg import FedAvgConfig

    def fed(z: float | None) -> LiraConfig:
        return LiraConfig(models=9, train_size=40, seed=2, fedavg=FedAvgConfig(
            rounds=30, clients_per_round=10, local_steps=10, local_lr=0.1, clip_norm=1.0,
            noise_multiplier=z))

    plain = _run(mlp, fed(None))
    private = _run(mlp, fed(2.0))
    assert plain.epsilon is None and private.epsilon is not None and private.epsilon < 20
    assert plain.lira_online.auc > 0.65
    assert private.lira_online.auc < plain.lira_online.auc - 0.08


def test_lira_config_errors() -> None:
    with pytest.raises(AuditError, match="models"):
        LiraConfig(models=2)
    with pytest.raises(AuditError, match="train_size"):
        LiraConfig(train_size=1)
