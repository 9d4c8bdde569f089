"""Norm bounds, anomaly scoring, the throttle policy and robust aggregators
against poisoned updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.errors import PrivacyConfigError
from privacy.robust import (
    Action,
    AnomalyScorer,
    QuarantinePolicy,
    Reason,
    RobustConfig,
    check_norm,
    coordinate_median,
    trimmed_mean,
)

SHAPES = {"w": (20, 10), "b": (10,)}


def _honest(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """Non-IID-ish honest updates: a shared direction plus per-device noise."""
    common = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    return [
        {k: (0.1 * common[k] + 0.08 * rng.normal(size=s)).astype(np.float32)
         for k, s in SHAPES.items()}
        for _ in range(n)
    ]


def _dist(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a))


def _mean(updates: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.mean([u[k] for u in updates], axis=0) for k in updates[0]}


# --------------------------------------------------------------------------- aggregators


@pytest.mark.parametrize("attack", ["scaled", "sign_flip"])
@pytest.mark.parametrize("aggregator", ["median", "trimmed"])
def test_robust_aggregators_bound_a_poisoned_minority(attack: str, aggregator: str) -> None:
    rng = np.random.default_rng(0)
    honest = _honest(rng, 16)
    factor = 100.0 if attack == "scaled" else -50.0
    poisoned = [{k: v * factor for k, v in u.items()} for u in _honest(rng, 3)]
    updates = honest + poisoned
    target = _mean(honest)
    spread = max(_dist(u, target) for u in honest)
    plain = _dist(_mean(updates), target)
    robust = (coordinate_median(updates) if aggregator == "median"
              else trimmed_mean(updates, trim_fraction=0.2))
    err = _dist(robust, target)
    assert plain > 5 * spread, "the attack must hurt the plain mean"
    assert err < spread, f"{aggregator} moved {err:.3f}, honest spread {spread:.3f}"
    # Each coordinate stays inside the honest updates' range.
    for k in SHAPES:
        lo = np.min([u[k] for u in honest], axis=0)
        hi = np.max([u[k] for u in honest], axis=0)
        assert np.all(robust[k] >= lo - 1e-6) and np.all(robust[k] <= hi + 1e-6)


def test_trimmed_mean_without_trimming_is_the_mean() -> None:
    updates = _honest(np.random.default_rng(1), 5)
    out = trimmed_mean(updates, 0.0)
    assert _dist(out, _mean(updates)) < 1e-5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: coordinate_median([]), "at least one update"),
        (lambda: trimmed_mean([{"a": np.zeros(2)}], 0.6), "trim_fraction"),
        (lambda: trimmed_mean([{"a": np.zeros(2)}] * 2, 0.49), "none left"),
        (lambda: coordinate_median([{"a": np.zeros(2)}, {"a": np.zeros(3)}]), "disagree"),
        (lambda: coordinate_median([{"a": np.zeros(2)}, {"b": np.zeros(2)}]), "disagree"),
    ],
)
def test_aggregator_input_errors(call: object, message: str) -> None:
    with pytest.raises(PrivacyConfigError, match=message):
        call()  # type: ignore[operator]


# --------------------------------------------------------------------------- norm bound + scoring


def test_norm_check() -> None:
    assert check_norm({"a": np.array([3.0, 4.0])}, 5.0).ok
    assert not check_norm({"a": np.array([3.0, 4.0])}, 4.9).ok
    bad = check_norm({"a": np.array([np.inf])}, None)
    assert not bad.ok and math.isinf(bad.norm)


def test_scorer_flags_scaled_and_flipped_updates_after_warmup() -> None:
    rng = np.random.default_rng(2)
    scorer = AnomalyScorer(RobustConfig(warmup=10))
    honest = _honest(rng, 40)
    early = {k: v * 100 for k, v in honest[0].items()}
    assert not scorer.score(early).anomalous, "nothing is flagged during warm-up"
    for u in honest[:30]:
        assert not scorer.score(u).anomalous or scorer.observed < 10
        scorer.observe(u)
    false_alarms = sum(scorer.score(u).anomalous for u in honest[30:])
    assert false_alarms == 0
    scaled = scorer.score({k: v * 20 for k, v in honest[30].items()})
    assert Reason.NORM_OUTLIER in scaled.reasons and scaled.norm_z > 6
    flipped = scorer.score({k: -v for k, v in honest[31].items()})
    assert flipped.reasons == (Reason.DIRECTION,) and flipped.cosine < -0.2
    nan = scorer.score({"w": np.full(SHAPES["w"], np.nan), "b": np.zeros(10)})
    assert nan.reasons == (Reason.NON_FINITE,)


def test_hard_bound_flags_from_the_first_update() -> None:
    scorer = AnomalyScorer(RobustConfig(max_norm=1.0))
    assert scorer.score({"a": np.array([2.0])}).reasons == (Reason.NORM_BOUND,)


def test_scorer_refuses_a_different_layout() -> None:
    scorer = AnomalyScorer(RobustConfig())
    scorer.observe({"a": np.ones(3)})
    with pytest.raises(PrivacyConfigError, match="differ"):
        scorer.observe({"b": np.ones(3)})


# --------------------------------------------------------------------------- policy


def test_policy_quarantines_then_throttles_with_backoff_and_forgets_old_strikes() -> None:
    cfg = RobustConfig(strikes_to_throttle=3, strike_window_s=100.0, throttle_s=50.0,
                       max_throttle_s=120.0, max_norm=1.0)
    policy = QuarantinePolicy(cfg)
    scorer = AnomalyScorer(cfg)
    bad = scorer.score({"a": np.array([5.0])})
    good = scorer.score({"a": np.array([0.5])})
    assert policy.decide("d", good, 0.0).action is Action.ACCEPT
    assert policy.decide("d", bad, 1.0).action is Action.QUARANTINE
    assert policy.decide("d", bad, 2.0).strikes == 2
    third = policy.decide("d", bad, 3.0)
    assert third.action is Action.THROTTLE and third.until == 53.0 and third.retry_after == 50.0
    # While throttled even good updates are refused.
    during = policy.decide("d", good, 10.0)
    assert during.action is Action.THROTTLE and during.retry_after == pytest.approx(43.0)
    assert policy.throttled("d", 10.0) == pytest.approx(43.0)
    assert policy.decide("d", good, 60.0).action is Action.ACCEPT
    # Second throttle doubles (capped at 120 s).
    for t in (61.0, 62.0):
        policy.decide("d", bad, t)
    again = policy.decide("d", bad, 63.0)
    assert again.action is Action.THROTTLE and again.retry_after == 100.0
    # Strikes older than the window are forgotten.
    policy.decide("e", bad, 0.0)
    policy.decide("e", bad, 1.0)
    assert policy.decide("e", bad, 500.0).action is Action.QUARANTINE
    assert policy.counters("d") == {"accepted": 2, "quarantined": 7, "throttles": 2, "strikes": 0}
    assert policy.counters("other")["accepted"] == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"max_norm": 0}, "robust.max_norm"),
        ({"min_cosine": 2}, "robust.min_cosine"),
        ({"warmup": 0}, "robust.warmup"),
        ({"warmup": 1.5}, "robust.warmup"),
        ({"direction_decay": 1.0}, "robust.direction_decay"),
        ({"throttle_s": -1}, "robust.throttle_s"),
        ({"throttle_s": 100, "max_throttle_s": 10}, "max_throttle_s"),
        ({"norm_z": 3}, "unknown key(s) ['norm_z']"),
        ({"min_cosine": "low"}, "expected a number"),
        ({"norm_z_threshold": 0}, "norm_z_threshold"),
    ],
)
def test_config_refusals(data: dict[str, object], message: str) -> None:
    with pytest.raises(PrivacyConfigError) as info:
        RobustConfig.from_dict(data)
    assert message in str(info.value)


def test_config_round_trip() -> None:
    cfg = RobustConfig.from_dict({"max_norm": None, "warmup": 5, "min_cosine": -0.5})
    assert RobustConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PrivacyConfigError, match="expected a mapping"):
        RobustConfig.from_dict("x")
