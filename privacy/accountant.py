"""The privacy accountant: (ε, δ) per published version and cumulatively.

All the maths is ``dp-accounting``'s (Google's library; RDP by default, PLD
on request). Each aggregation step that publishes a version is one
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` composed onto the running
total, with z the configured noise multiplier (with adaptive clipping: the
overall z that covers both the update sum and the clipped-count release) and
the neighbouring relation add-or-remove-one *device* (user-level DP).

How participation is modelled — an assumption, not a theorem
--------------------------------------------------------------

Amplification by subsampling needs each device to be in each step
independently with probability q, chosen by a process that does not look at
the data. Synchronous rounds that sample clients uniformly come close to that.
Asynchronous FedBuff does not: a step contains whichever K updates arrive
first, which depends on device speed, charging habits and the server's pace
steering; the same fast device can land in consecutive buffers. No published
analysis gives FedBuff a sampling theorem. fedge therefore offers two
models, chosen by ``DPConfig.participation``:

- ``sampled`` (default): each buffer of K updates is treated as a Poisson
  sample with q = K / N, where N is a **lower bound** on the number of
  devices that could have contributed (the caller passes it; a smaller N
  gives a larger q, i.e. a larger, more conservative ε). This is the usual
  engineering assumption (e.g. Google's DP-FTRL production reports); it is
  only as good as the claim that participation is random and data-independent.
  A device that contributes more than once per step is not covered; the
  service must accept at most one update per device per step.
- ``full``: q = 1 — every device is assumed to be in every step. Valid
  without any assumption on participation; ε grows much faster.

Local DP (``mode: local``) is accounted per device: each upload is a Gaussian
mechanism with std z·C on an input that can move by 2C (any two inputs of a
device are within the clip ball's diameter), i.e. multiplier z/2, with no
amplification (the server sees who uploaded). The accountant charges every
step to the worst-case device that contributed to all of them;
:func:`local_epsilon` gives the figure for a known number of uploads; the
service reports it for the device with the most uploads so far
(``aggregation_service.privacy_hooks.local_report``), which is tighter than
charging every step to one device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import dp_accounting

from privacy.dp import AccountingMethod, DPConfig, DPMode, Participation
from privacy.errors import AccountingError


@dataclass(frozen=True)
class PrivacyReport:
    """The accountant's answer after one published version."""

    version: int
    sampling_probability: float
    # The multiplier charged: dp.noise_multiplier in central mode, half of it
    # in local mode (sensitivity 2C, see the module docstring).
    noise_multiplier: float
    step_epsilon: float  # ε of this step alone, at ``delta``
    epsilon: float  # cumulative ε of every step so far, at ``delta``
    delta: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_q(q: float) -> float:
    if not (math.isfinite(q) and 0.0 < q <= 1.0):
        raise AccountingError(f"sampling probability {q} must be in (0, 1]")
    return float(q)


def _event(q: float, z: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(z)
    return gaussian if q >= 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def _new_accountant(method: AccountingMethod) -> dp_accounting.PrivacyAccountant:
    if method is AccountingMethod.PLD:
        return dp_accounting.pld.PLDAccountant()
    return dp_accounting.rdp.RdpAccountant()


def _epsilon(accountant: dp_accounting.PrivacyAccountant, delta: float) -> float:
    try:
        return float(accountant.get_epsilon(delta))
    except (ValueError, ArithmeticError) as exc:
        raise AccountingError(f"dp-accounting could not compute ε at δ={delta}: {exc}") from exc


def local_epsilon(dp: DPConfig, uploads: int, delta: float | None = None) -> float:
    """ε of a device that made ``uploads`` locally noised uploads."""
    if dp.mode is not DPMode.LOCAL:
        raise AccountingError("local_epsilon: dp.mode is not 'local'")
    if uploads < 0:
        raise AccountingError(f"uploads: {uploads} must be ≥ 0")
    if uploads == 0:
        return 0.0
    accountant = _new_accountant(dp.accounting)
    accountant.compose(dp_accounting.GaussianDpEvent(dp.noise_multiplier / 2), uploads)
    return _epsilon(accountant, dp.delta if delta is None else delta)


class PrivacyAccountant:
    """Records each aggregation step and reports (ε, δ).

    One per model. Not thread-safe. A step with the RDP accountant costs tens
    of milliseconds (dp-accounting evaluates the subsampled Gaussian at many
    orders): call :meth:`record` from an executor on the service. Persist
    :meth:`to_dict` with each published version and rebuild with
    :meth:`from_dict` after a restart.
    """

    def __init__(self, dp: DPConfig) -> None:
        self.dp = dp
        self._accountant = _new_accountant(dp.accounting)
        # Run-length ledger of (q, z, count): compact to persist, fast to replay.
        self._runs: list[list[float]] = []
        self._reports: list[PrivacyReport] = []
        self._step_cache: dict[tuple[float, float], float] = {}

    # ------------------------------------------------------------------ model

    def sampling_probability(self, updates: int, population: int | None) -> float:
        """q for a step of ``updates`` device updates.

        ``population`` must be a lower bound on the devices that could have
        contributed (see the module docstring); it is ignored for
        ``participation: full`` and in local mode, where q = 1.
        """
        if updates < 1:
            raise AccountingError(f"updates: a step needs at least one update, got {updates}")
        if self.dp.participation is Participation.FULL or self.dp.mode is DPMode.LOCAL:
            return 1.0
        if population is None:
            raise AccountingError(
                "population: participation 'sampled' needs a lower bound on the number of "
                "devices that could contribute (or use participation 'full')"
            )
        if population < updates:
            raise AccountingError(
                f"population: {population} is smaller than the {updates} updates in the step; "
                "it must count distinct devices and each device contributes at most once per step"
            )
        return updates / population

    def _z(self) -> float:
        if self.dp.mode is DPMode.LOCAL:
            return self.dp.noise_multiplier / 2
        return self.dp.noise_multiplier

    # ------------------------------------------------------------------ record

    def record(
        self,
        version: int,
        *,
        updates: int | None = None,
        population: int | None = None,
        sampling_probability: float | None = None,
    ) -> PrivacyReport:
        """Charge one aggregation step that published ``version``.

        Give either ``updates`` (+ ``population``) or an explicit
        ``sampling_probability``.
        """
        if self._reports and version <= self._reports[-1].version:
            raise AccountingError(
                f"version {version} is not after the last recorded version "
                f"{self._reports[-1].version}"
            )
        if sampling_probability is not None:
            q = _check_q(sampling_probability)
        elif updates is not None:
            q = self.sampling_probability(updates, population)
        else:
            raise AccountingError("record: give updates (and population) or sampling_probability")
        z = self._z()
        if z > 0:
            try:
                self._accountant.compose(_event(q, z))
            except (ValueError, ArithmeticError) as exc:
                raise AccountingError(f"dp-accounting rejected the step: {exc}") from exc
        if self._runs and self._runs[-1][0] == q and self._runs[-1][1] == z:
            self._runs[-1][2] += 1
        else:
            self._runs.append([q, z, 1])
        report = PrivacyReport(
            version=version,
            sampling_probability=q,
            noise_multiplier=z,
            step_epsilon=self._step_epsilon(q, z),
            epsilon=self.epsilon(),
            delta=self.dp.delta,
            steps=len(self._reports) + 1,
        )
        self._reports.append(report)
        return report

    def _step_epsilon(self, q: float, z: float) -> float:
        if z == 0:
            return math.inf
        key = (q, z)
        if key not in self._step_cache:
            single = _new_accountant(self.dp.accounting)
            single.compose(_event(q, z))
            self._step_cache[key] = _epsilon(single, self.dp.delta)
        return self._step_cache[key]

    # ------------------------------------------------------------------ query

    @property
    def steps(self) -> int:
        return len(self._reports)

    @property
    def reports(self) -> tuple[PrivacyReport, ...]:
        return tuple(self._reports)

    def epsilon(self, delta: float | None = None) -> float:
        """Cumulative ε over every recorded step (0 before any; ∞ without noise)."""
        d = self.dp.delta if delta is None else delta
        if not 0.0 < d < 1.0:
            raise AccountingError(f"delta: {d} must be strictly between 0 and 1")
        if not self._runs:
            return 0.0
        if self._z() == 0:
            return math.inf
        return _epsilon(self._accountant, d)

    def report(self, version: int) -> PrivacyReport:
        for r in self._reports:
            if r.version == version:
                return r
        raise AccountingError(f"no step recorded for version {version}")

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "dp": self.dp.to_dict(),
            "runs": [[q, z, int(n)] for q, z, n in self._runs],
            "reports": [r.to_dict() for r in self._reports],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyAccountant:
        """Rebuild from :meth:`to_dict` (replays the ledger; no step is lost or doubled)."""
        try:
            dp = DPConfig.from_dict(data["dp"])
            runs = [(float(q), float(z), int(n)) for q, z, n in data["runs"]]
            reports = [PrivacyReport(**r) for r in data["reports"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountingError(f"accountant state is malformed: {exc}") from exc
        if sum(n for _, _, n in runs) != len(reports):
            raise AccountingError("accountant state is malformed: ledger and reports disagree")
        acc = cls(dp)
        for q, z, n in runs:
            if z > 0:
                acc._accountant.compose(_event(_check_q(q), z), n)
            acc._runs.append([q, z, n])
        acc._reports = reports
        return acc
