"""The one-run ε estimate: the ε between two Gaussians against the exact
Gaussian mechanism, the estimator on a Gaussian mechanism with canaries
(a known answer), and the audit on a DP-FedAvg run of the real TFLite mlp
— including a run noised less than the accountant was told, which the
audit must catch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from privacy.audit_epsilon import (
    epsilon_between_gaussians,
    estimate_epsilon,
    gaussian_mechanism_epsilon,
)
from privacy.audit_fedavg import cosines
from privacy.errors import AuditError


def _balle_wang_delta(eps: float, mu: float) -> float:
    """δ(ε) of the Gaussian mechanism with sensitivity/std = mu (Balle and Wang 2018)."""
    def phi(t: float) -> float:
        return 0.5 * math.erfc(-t / math.sqrt(2))

    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0, 4.0])
def test_epsilon_between_gaussians_is_the_gaussian_mechanisms(z: float) -> None:
    import dp_accounting

    eps = gaussian_mechanism_epsilon(z, 1e-5)
    assert _balle_wang_delta(eps, 1 / z) == pytest.approx(1e-5, rel=1e-4)
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(z))
    assert eps == pytest.approx(pld.get_epsilon(1e-5), rel=1e-4)
    # Location and scale do not matter, only the separation in stds.
    assert epsilon_between_gaussians(3.0, 2.0, 3.0 + 2.0 / z, 2.0, 1e-5) == pytest.approx(eps)


def test_epsilon_between_gaussians_edge_cases() -> None:
    assert epsilon_between_gaussians(0.0, 1.0, 0.0, 1.0, 1e-5) == 0.0
    # A wider Gaussian alone costs privacy at small δ (unbounded loss in its tail).
    wider = epsilon_between_gaussians(0.0, 1.1, 0.0, 1.0, 1e-5)
    assert 0.1 < wider < epsilon_between_gaussians(0.0, 1.3, 0.0, 1.0, 1e-5)
    # Symmetric in its two arguments.
    assert epsilon_between_gaussians(1.0, 1.2, 0.0, 1.0, 1e-5) == pytest.approx(
        epsilon_between_gaussians(0.0, 1.0, 1.0, 1.2, 1e-5))
    for bad in [(0.0, 0.0, 0.0, 1.0, 1e-5), (0.0, 1.0, math.nan, 1.0, 1e-5),
                (0.0, 1.0, 1.0, 1.0, 0.0), (0.0, 1.0, 1.0, 1.0, 1.0)]:
        with pytest.raises(AuditError):
            epsilon_between_gaussians(*bad)


def test_the_estimator_recovers_a_gaussian_mechanisms_epsilon_from_samples() -> None:
    rng = np.random.default_rng(0)
    for z in (0.5, 1.0, 2.0):
        seen = rng.normal(1 / z, 1.0, 20_000)
        unseen = rng.normal(0.0, 1.0, 20_000)
        est = estimate_epsilon(seen, unseen, 1e-5, dim=4)
        exact = gaussian_mechanism_epsilon(z, 1e-5)
        assert est.epsilon_equal_variance == pytest.approx(exact, rel=0.05)
        assert est.separation == pytest.approx(1 / z, abs=0.03)


def test_one_round_gaussian_mechanism_with_canaries_gives_its_epsilon() -> None:
    """The known answer: one step of the Gaussian mechanism on a sum that
    holds every canary (q = 1). With orthonormal canaries the cosine of a
    canary with the released sum is (C + N(0, (zC)²)) / ‖sum‖ and a fresh
    direction's is N(0, (zC)²) / ‖sum‖: the mechanism's ε exactly, which the
    estimate must reproduce."""
    rng = np.random.default_rng(42)
    d, k, z, clip = 4000, 600, 1.0, 0.7
    basis, _ = np.linalg.qr(rng.standard_normal((d, 2 * k)))
    seen, unseen = basis[:, :k].T, basis[:, k:].T
    release = clip * seen.sum(axis=0) + rng.normal(0.0, z * clip, d)
    est = estimate_epsilon(cosines(release, seen), cosines(release, unseen), 1e-5, dim=d,
                           analytic_null=True)
    exact = gaussian_mechanism_epsilon(z, 1e-5)  # 4.38
    assert est.epsilon_equal_variance == pytest.approx(exact, rel=0.1)
    assert est.epsilon_analytic_null_equal_variance == pytest.approx(exact, rel=0.1)
    # A mechanism with 4× the noise is recognised as such.
    quiet = clip * seen.sum(axis=0) + rng.normal(0.0, 4 * z * clip, d)
    est4 = estimate_epsilon(cosines(quiet, seen), cosines(quiet, unseen), 1e-5, dim=d)
    assert est4.epsilon_equal_variance == pytest.approx(
        gaussian_mechanism_epsilon(4 * z, 1e-5), rel=0.25)


def test_estimator_input_errors() -> None:
    with pytest.raises(AuditError, match="at least 2"):
        estimate_epsilon([1.0], [0.0, 1.0], 1e-5, dim=10)
    with pytest.raises(AuditError, match="non-finite"):
        estimate_epsilon([1.0, np.inf], [0.0, 1.0], 1e-5, dim=10)
    with pytest.raises(AuditError, match="all statistics are equal"):
        estimate_epsilon([1.0, 1.0], [0.0, 1.0], 1e-5, dim=10)
    with pytest.raises(AuditError, match="zero"):
        cosines(np.zeros(5), np.eye(5))


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def audit_setup(exported_mlp: Path) -> tuple[object, dict[str, np.ndarray], object]:
    from privacy.audit_setup import digits, open_model

    model = open_model(exported_mlp)
    return model, model.get_weights(), digits(0)


def test_dp_fedavg_with_canaries_estimates_at_most_the_accountants_epsilon(
    audit_setup: tuple[object, dict[str, np.ndarray], object],
) -> None:
    from privacy.audit_canary import EpsilonAuditConfig, run_epsilon_audit
    from privacy.audit_fedavg import accountant_epsilon

    model, init, data = audit_setup
    config = EpsilonAuditConfig(noise_multipliers=(1.0, 0.25), devices=150, canaries=300,
                                unseen=300, clients_per_round=90, rounds=12, local_steps=2,
                                bootstrap=40, seed=3)
    honest, quiet = run_epsilon_audit(model, init, (data.x, data.y),  # type: ignore[attr-defined]
                                      (data.x[1500:], data.y[1500:]), config)  # type: ignore[attr-defined]
    # The canaries are found (ε well above 0) and, noised as the accountant
    # was told, stay under its bound.
    assert honest.final_model > 0.5 and honest.every_version > 0.5
    assert honest.within_bound and not honest.significantly_above
    assert honest.epsilon_pld <= honest.epsilon_rdp
    assert honest.canary_updates > 0
    # The same run with a quarter of the noise, charged as if it had z = 1:
    # the estimate exceeds that bound beyond its sampling error.
    claimed = accountant_epsilon(quiet.sampling_probability, 1.0, config.rounds, 1e-5, "pld")
    assert quiet.final_model_interval[0] > claimed
    assert quiet.every_version_interval[0] > claimed


def test_canary_audit_config_errors() -> None:
    from privacy.audit_canary import EpsilonAuditConfig

    with pytest.raises(AuditError, match="noise multipliers"):
        EpsilonAuditConfig(noise_multipliers=(0.0,))
    with pytest.raises(AuditError, match="exceeds the population"):
        EpsilonAuditConfig(devices=10, canaries=10, clients_per_round=50)
