"""The accountant against direct dp-accounting computations."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import pytest

from privacy.accountant import PrivacyAccountant, local_epsilon
from privacy.dp import AdaptiveClipping, DPConfig, DPMode, Participation
from privacy.errors import AccountingError


def _direct(q: float, z: float, steps: int, delta: float) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return float(acc.get_epsilon(delta))


def test_agrees_with_a_direct_dp_accounting_computation() -> None:
    dp = DPConfig(noise_multiplier=1.1, clip_norm=1.0, delta=1e-5)
    accountant = PrivacyAccountant(dp)
    for version in range(2, 7):
        report = accountant.record(version, updates=10, population=1000)
    assert report.sampling_probability == pytest.approx(0.01)
    assert report.steps == 5
    assert report.epsilon == pytest.approx(_direct(0.01, 1.1, 5, 1e-5), rel=1e-9)
    assert report.step_epsilon == pytest.approx(_direct(0.01, 1.1, 1, 1e-5), rel=1e-9)


def test_epsilon_is_monotone_in_steps_and_reports_are_per_version() -> None:
    accountant = PrivacyAccountant(DPConfig(1.0, 1.0))
    eps = [accountant.record(v, updates=20, population=500).epsilon for v in range(1, 9)]
    assert all(b > a for a, b in itertools.pairwise(eps))
    assert accountant.report(4).epsilon == eps[3]
    assert [r.version for r in accountant.reports] == list(range(1, 9))
    # A smaller δ costs more ε.
    assert accountant.epsilon(1e-8) > accountant.epsilon(1e-5)


def test_more_noise_and_less_sampling_give_smaller_epsilon() -> None:
    def eps(z: float, population: int) -> float:
        acc = PrivacyAccountant(DPConfig(z, 1.0))
        acc.record(1, updates=10, population=population)
        return acc.epsilon()

    assert eps(2.0, 1000) < eps(1.0, 1000)
    assert eps(1.0, 10_000) < eps(1.0, 100)


def test_full_participation_is_the_conservative_q1_model() -> None:
    dp = DPConfig(1.0, 1.0, participation=Participation.FULL)
    accountant = PrivacyAccountant(dp)
    report = accountant.record(1, updates=10, population=1_000_000)
    assert report.sampling_probability == 1.0
    direct = dp_accounting.rdp.RdpAccountant()
    direct.compose(dp_accounting.GaussianDpEvent(1.0))
    assert report.epsilon == pytest.approx(direct.get_epsilon(1e-5))
    sampled = PrivacyAccountant(DPConfig(1.0, 1.0)).record(1, updates=10, population=1_000_000)
    assert sampled.epsilon < report.epsilon


def test_pld_accounting_is_close_to_rdp_and_not_larger() -> None:
    rdp = PrivacyAccountant(DPConfig(1.0, 1.0))
    pld = PrivacyAccountant(DPConfig.from_dict(
        {"noise_multiplier": 1.0, "clip_norm": 1.0, "accounting": "pld"}))
    for v in range(1, 4):
        rdp.record(v, updates=5, population=100)
        pld.record(v, updates=5, population=100)
    # PLD is tight; RDP is an upper bound.
    assert pld.epsilon() <= rdp.epsilon() * 1.001
    assert pld.epsilon() > 0.3 * rdp.epsilon()


def test_no_noise_means_infinite_epsilon() -> None:
    accountant = PrivacyAccountant(DPConfig(0.0, 1.0))
    assert accountant.epsilon() == 0.0
    report = accountant.record(1, updates=3, population=10)
    assert math.isinf(report.epsilon) and math.isinf(report.step_epsilon)


def test_adaptive_clipping_is_charged_at_the_overall_multiplier() -> None:
    dp = DPConfig(1.0, 1.0, adaptive=AdaptiveClipping(count_noise_std=3.0))
    report = PrivacyAccountant(dp).record(1, updates=10, population=1000)
    assert report.noise_multiplier == 1.0
    assert report.epsilon == pytest.approx(_direct(0.01, 1.0, 1, 1e-5))


def test_local_mode_charges_every_step_at_half_the_multiplier() -> None:
    dp = DPConfig(4.0, 1.0, mode=DPMode.LOCAL)
    accountant = PrivacyAccountant(dp)
    for v in (1, 2, 3):
        report = accountant.record(v, updates=10, population=1000)
    assert report.sampling_probability == 1.0
    assert report.epsilon == pytest.approx(local_epsilon(dp, 3))
    direct = dp_accounting.rdp.RdpAccountant()
    direct.compose(dp_accounting.GaussianDpEvent(2.0), 3)
    assert local_epsilon(dp, 3) == pytest.approx(direct.get_epsilon(1e-5))
    assert local_epsilon(dp, 0) == 0.0
    with pytest.raises(AccountingError, match="not 'local'"):
        local_epsilon(DPConfig(1.0, 1.0), 1)


def test_state_round_trips_and_keeps_counting() -> None:
    accountant = PrivacyAccountant(DPConfig(1.0, 1.0))
    for v in range(1, 4):
        accountant.record(v, updates=10, population=200)
    accountant.record(4, updates=10, population=400)
    restored = PrivacyAccountant.from_dict(accountant.to_dict())
    assert restored.epsilon() == pytest.approx(accountant.epsilon())
    assert restored.reports == accountant.reports
    a = accountant.record(5, updates=10, population=400)
    b = restored.record(5, updates=10, population=400)
    assert a == b


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"updates": 0, "population": 10}, "at least one update"),
        ({"updates": 20, "population": 10}, "smaller than the 20 updates"),
        ({"updates": 5}, "needs a lower bound"),
        ({}, "give updates"),
        ({"sampling_probability": 0.0}, "must be in (0, 1]"),
        ({"sampling_probability": 1.5}, "must be in (0, 1]"),
    ],
)
def test_bad_steps_are_refused(kwargs: dict[str, float], message: str) -> None:
    accountant = PrivacyAccountant(DPConfig(1.0, 1.0))
    with pytest.raises(AccountingError) as info:
        accountant.record(1, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_versions_must_increase_and_unknown_versions_are_errors() -> None:
    accountant = PrivacyAccountant(DPConfig(1.0, 1.0))
    accountant.record(3, sampling_probability=0.1)
    with pytest.raises(AccountingError, match="not after"):
        accountant.record(3, sampling_probability=0.1)
    with pytest.raises(AccountingError, match="no step recorded"):
        accountant.report(2)
    with pytest.raises(AccountingError, match="delta"):
        accountant.epsilon(0.0)


def test_malformed_state_is_refused() -> None:
    with pytest.raises(AccountingError, match="malformed"):
        PrivacyAccountant.from_dict({"dp": {"noise_multiplier": 1, "clip_norm": 1}})
    good = PrivacyAccountant(DPConfig(1.0, 1.0))
    good.record(1, sampling_probability=0.5)
    state = good.to_dict()
    state["reports"] = []
    with pytest.raises(AccountingError, match="disagree"):
        PrivacyAccountant.from_dict(state)
