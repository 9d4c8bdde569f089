"""The service's calls into :mod:`privacy`: DP noise and accounting at
publication, anomaly screening at intake, robust sync aggregators.

Kept apart from :mod:`aggregation_service.service` so that the default path
(no ``dp``, no ``robust``, ``aggregator: mean``) is unchanged: every hook is a
no-op unless its section is configured.

Persistence (two tables of the service's SQLite file, created here):

- ``privacy_secrets(model, seed)`` — a 128-bit secret per model. The Gaussian
  noise of version v is drawn from ``SeedSequence([seed, v])``, so replaying
  the update log after a crash publishes the identical version. **The seed is
  secret server state**: whoever knows it and the published versions can
  subtract the noise. It never leaves the database (not in any API answer,
  log line or metric).
- ``privacy_versions(model, version, report, accountant)`` — the accountant's
  report for each DP version and its whole state after that step. The report
  also carries ``clip_norm``: the bound devices training *from* that version
  clip with (it moves with adaptive clipping; a restart reads it back).
- ``privacy_uploads(model, version, device, uploads)`` — local DP only: the
  noised releases each device made, for its per-device ε. A publish
  reads the state of its *base* version (so a rollback continues from the
  right ledger), records one step on a copy, writes the row, then commits the
  publication. A crash between the two leaves a row for a version that was
  never committed; the replayed publication overwrites it with the same
  values.
"""

from __future__ import annotations

import copy
import json
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import quantization
from aggregation_service import codec
from aggregation_service.config import Aggregator, DPSettings, TrainingConfig
from aggregation_service.store import Store, VersionRow
from privacy.accountant import PrivacyAccountant, local_epsilon
from privacy.dp import AdaptiveClipper, add_noise
from privacy.robust import (
    Action,
    AnomalyScorer,
    Decision,
    QuarantinePolicy,
    RobustConfig,
    coordinate_median,
    trimmed_mean,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_secrets (
    model TEXT PRIMARY KEY,
    seed TEXT NOT NULL                -- secret: the noise of every DP version derives from it
);
CREATE TABLE IF NOT EXISTS privacy_versions (
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    report TEXT NOT NULL,             -- PrivacyReport.to_dict() of this version's step
    accountant TEXT NOT NULL,         -- PrivacyAccountant.to_dict() after this step
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS privacy_uploads (
    model TEXT NOT NULL,              -- local DP: who released how many noised updates
    version INTEGER NOT NULL,
    device TEXT NOT NULL,
    uploads INTEGER NOT NULL,
    PRIMARY KEY (model, version, device)
);
"""


# --- storage (blocking: call through Store.run) -----------------------------------------


def ensure_schema(store: Store) -> None:
    store.conn.executescript(SCHEMA)


def model_seed(store: Store, model: str) -> int:
    """The model's secret noise seed, created on first use."""
    conn = store.conn
    row = conn.execute("SELECT seed FROM privacy_secrets WHERE model = ?", (model,)).fetchone()
    if row is not None:
        return int(row[0], 16)
    seed = secrets.randbits(128)
    with conn:
        conn.execute(
            "INSERT OR IGNORE INTO privacy_secrets (model, seed) VALUES (?, ?)",
            (model, format(seed, "032x")),
        )
    row = conn.execute("SELECT seed FROM privacy_secrets WHERE model = ?", (model,)).fetchone()
    return int(row[0], 16)


def save_version(
    store: Store, model: str, version: int, report: Mapping[str, Any], state: Mapping[str, Any]
) -> None:
    conn: sqlite3.Connection = store.conn
    with conn:
        conn.execute(
            "INSERT OR REPLACE INTO privacy_versions (model, version, report, accountant) "
            "VALUES (?, ?, ?, ?)",
            (model, version, json.dumps(report), json.dumps(state)),
        )


def accountant_state(store: Store, model: str, version: int) -> dict[str, Any] | None:
    row = store.conn.execute(
        "SELECT accountant FROM privacy_versions WHERE model = ? AND version = ?",
        (model, version),
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def reports(store: Store, model: str) -> dict[int, dict[str, Any]]:
    rows = store.conn.execute(
        "SELECT version, report FROM privacy_versions WHERE model = ?", (model,)
    ).fetchall()
    return {int(v): dict(json.loads(r)) for v, r in rows}


# --- DP at publication ------------------------------------------------------------------


def noise_rng(seed: int, version: int) -> np.random.Generator:
    """Deterministic per (secret seed, version): replay draws the same noise."""
    return np.random.default_rng(np.random.SeedSequence([seed, version]))


def fixed_denominator(config: TrainingConfig) -> int:
    """K in FedBuff, clients per round in sync mode: never the realized count
    or weight sum, which would leak participation."""
    if config.mode.value == "sync":
        return config.clients_per_round
    return config.buffer_size


def count_rng(seed: int, version: int) -> np.random.Generator:
    """The clip-bit count's noise: its own stream, so that turning adaptive
    clipping on does not change the update noise of a version."""
    return np.random.default_rng(np.random.SeedSequence([seed, version, 1]))


def dp_mean(
    sums: Mapping[str, np.ndarray],
    settings: DPSettings,
    rng: np.random.Generator,
    k: int,
    clip_norm: float | None = None,
) -> dict[str, np.ndarray]:
    """(Σ wᵢΔᵢ + N(0, (z_Δ·C)²)) / K, with every ‖wᵢΔᵢ‖ ≤ C (the service
    enforces it at intake). ``clip_norm`` is the step's C (adaptive clipping;
    default: the configured one). In local mode the devices added the noise
    and the service adds none: Σ wᵢΔᵢ / K."""
    if not settings.central:
        return {name: np.asarray(value) / float(k) for name, value in sums.items()}
    c = settings.dp.clip_norm if clip_norm is None else clip_norm
    noised = add_noise(sums, settings.dp, rng, clip_norm=c, max_weight=1.0)
    return {name: value / float(k) for name, value in noised.items()}


# --- adaptive clipping: the bound per version, the clip bits per step ------------------


@dataclass
class StepTally:
    """What a step's records carry for DP beyond their sum (never published
    as is: the raw count of clip bits is not private)."""

    bits: int = 0  # Σ bᵢ: updates that fitted under their bound before clipping
    reported: int = 0  # records carrying a bit
    reference: float = 0.0  # max over records of the bound their weight was scaled to
    devices: dict[str, int] | None = None  # local DP: releases per device in this step

    def add(self, bit: int | None, reference: float | None, device: str) -> None:
        if bit is not None:
            self.bits += int(bit)
            self.reported += 1
        if reference is not None:
            self.reference = max(self.reference, float(reference))
        if self.devices is None:
            self.devices = {}
        self.devices[device] = self.devices.get(device, 0) + 1


class ClipState:
    """Adaptive clipping in the service: the bound of each version (cached
    from the version rows' reports) and each open or sealed buffer's tally.

    A device trains from version v and clips at C_v (the plan says so). The
    service enforces ‖Δ‖ ≤ C_v at decoding and scales the update's weight by
    min(1, C_ref / C_v), C_ref the bound of the training version when the
    update is admitted; the step's noise is calibrated to the largest C_ref
    of its records (one value in sync rounds and whenever no version was
    published while the buffer filled). Bits and C_ref are written to each
    log record, so a replay rebuilds the identical tally."""

    def __init__(self) -> None:
        self._bounds: dict[tuple[str, int], float] = {}
        self._tallies: dict[int, StepTally] = {}

    # bounds
    def load(self, model: str, reports_by_version: Mapping[int, Mapping[str, Any]]) -> None:
        for version, report in reports_by_version.items():
            bound = report.get("clip_norm")
            if isinstance(bound, int | float) and bound > 0:
                self._bounds[(model, version)] = float(bound)

    def put(self, model: str, version: int, bound: float) -> None:
        self._bounds[(model, version)] = bound

    def bound(self, model: str, version: int, settings: DPSettings) -> float:
        """The bound devices training from ``version`` clip with: the adaptive
        value stored with it (kept within the current min/max), else the
        configured ``dp.clip_norm``."""
        configured = settings.dp.clip_norm
        assert configured is not None  # DPSettings requires it
        a = settings.dp.adaptive
        if a is None:
            return configured
        stored = self._bounds.get((model, version))
        if stored is None:
            return configured
        return min(max(stored, a.min_clip_norm), a.max_clip_norm)

    def plan(
        self, model: str, version: int, settings: DPSettings, codec_spec: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The plan's ``dp`` block and the codec the device must use."""
        bound = self.bound(model, version, settings)
        local = not settings.central
        block = {
            "mode": settings.dp.mode.value,
            "clip_norm": bound,
            "noise_multiplier": settings.dp.noise_multiplier if local else 0.0,
            "clip_bit": settings.adaptive,
        }
        codec_out = dict(codec_spec)
        if settings.adaptive:  # the codec's clip stage follows the moving bound
            codec_out["clip_norm"] = bound
        return block, codec_out

    def admit(
        self, model: str, settings: DPSettings, base: int, training: int
    ) -> tuple[float | None, float, float | None]:
        """(the decode bound, the weight factor ≤ 1, C_ref) for an update from ``base``."""
        if not settings.central:
            return None, 1.0, None
        if not settings.adaptive:
            return None, 1.0, settings.dp.clip_norm  # the config's fixed bound applies
        c_base = self.bound(model, base, settings)
        c_ref = self.bound(model, training, settings)
        return c_base, min(1.0, c_ref / c_base), c_ref

    # tallies
    def tally(self, buffer: object) -> StepTally:
        return self._tallies.setdefault(id(buffer), StepTally())

    def take(self, buffer: object) -> StepTally:
        return self._tallies.pop(id(buffer), StepTally())


def adapt(
    settings: DPSettings,
    tally: StepTally,
    *,
    base_bound: float,
    seed: int,
    version: int,
    expected: int,
) -> dict[str, Any]:
    """After a step on top of a version with bound ``base_bound``: the step's
    sensitivity and the bound for devices training from the new version.
    Only noised figures go in the returned dict (it is published)."""
    dp = settings.dp
    assert dp.clip_norm is not None
    if not settings.central:
        return {"clip_norm": dp.clip_norm, "noise_clip_norm": None}
    if dp.adaptive is None:
        return {"clip_norm": dp.clip_norm, "noise_clip_norm": dp.clip_norm}
    clipper = AdaptiveClipper(dp, clip_norm=base_bound)
    step = clipper.update(
        tally.bits, float(expected), count_rng(seed, version), reported=tally.reported
    )
    return {
        "clip_norm": step.clip_after,
        "noise_clip_norm": tally.reference or base_bound,
        "clip_norm_before": step.clip_before,
        "unclipped_fraction": step.noisy_fraction,  # b̄, noised: safe to publish
        "update_noise_multiplier": dp.update_noise_multiplier,
    }


def record_uploads(
    store: Store, model: str, version: int, devices: Mapping[str, int]
) -> int:
    """Local DP: book this step's releases per device (idempotent for a
    replayed step) and return the most releases any device has made."""
    conn = store.conn
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO privacy_uploads (model, version, device, uploads) "
            "VALUES (?, ?, ?, ?)",
            [(model, version, d, n) for d, n in devices.items()],
        )
    row = conn.execute(
        "SELECT MAX(total) FROM (SELECT SUM(uploads) AS total FROM privacy_uploads "
        "WHERE model = ? AND version <= ? GROUP BY device)",
        (model, version),
    ).fetchone()
    return int(row[0] or 0)


def local_report(
    report: Mapping[str, Any], settings: DPSettings, max_uploads: int
) -> dict[str, Any]:
    """Local DP's answer: each upload is the Gaussian mechanism on the device's
    own clipped update (sensitivity 2C between any two inputs, so the charged
    multiplier is z/2, no amplification). ``step_epsilon`` is one release;
    ``epsilon`` is the device with the most releases so far."""
    one = local_epsilon(settings.dp, 1)
    most = local_epsilon(settings.dp, max_uploads)
    return {
        **report,
        "step_epsilon": one,
        "epsilon": most,
        "device_uploads_max": max_uploads,
        "guarantee": "local, per device",
    }


def account(
    state: Mapping[str, Any] | None,
    settings: DPSettings,
    version: int,
    updates: int,
    base: PrivacyAccountant | None = None,
) -> tuple[dict[str, Any], dict[str, Any], PrivacyAccountant]:
    """Charge one step that published ``version`` on a copy of ``base`` (the
    accountant after the base version, from :class:`Ledgers`) or, without it,
    of the persisted ``state``; returns (the step's report, the new state, the
    new accountant). Blocking: one RDP evaluation with ``base``, up to three
    without (tens to hundreds of ms)."""
    if base is not None and base.dp == settings.dp:
        acc = copy.deepcopy(base)
    elif state is None:
        acc = PrivacyAccountant(settings.dp)
    else:
        # Steps already charged keep their own (q, z); the current δ applies.
        acc = PrivacyAccountant.from_dict({**state, "dp": settings.dp.to_dict()})
    if settings.population is None:
        report = acc.record(version, sampling_probability=1.0)  # no lower bound: q = 1
    else:
        # A lower bound below this step's count is impossible: charge q = 1.
        report = acc.record(version, updates=updates, population=max(settings.population, updates))
    # JSON has no infinity: ε = ∞ (noise_multiplier 0, clipping only) is null.
    out = {
        k: (None if isinstance(v, float) and not np.isfinite(v) else v)
        for k, v in report.to_dict().items()
    }
    out["participation"] = settings.dp.participation.value
    out["population"] = settings.population
    return out, acc.to_dict(), acc


class Ledgers:
    """The accountants after the last few published DP versions, so that a
    publish copies its base's accountant instead of replaying the ledger.
    Only a cache: the persisted state is the truth after a restart."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._by_version: OrderedDict[tuple[str, int], PrivacyAccountant] = OrderedDict()

    def get(self, model: str, version: int) -> PrivacyAccountant | None:
        return self._by_version.get((model, version))

    def put(self, model: str, version: int, accountant: PrivacyAccountant) -> None:
        self._by_version[(model, version)] = accountant
        while len(self._by_version) > self._size:
            self._by_version.popitem(last=False)


@dataclass(frozen=True)
class PrivateVersionRow(VersionRow):
    """A version row whose JSON carries its DP report."""

    privacy: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "privacy": None if self.privacy is None else dict(self.privacy),
        }


def with_privacy(row: VersionRow, report: Mapping[str, Any] | None) -> VersionRow:
    if report is None:
        return row
    fields = {f: getattr(row, f) for f in row.__dataclass_fields__}
    return PrivateVersionRow(**fields, privacy=report)


# --- robustness at intake ---------------------------------------------------------------


class Screen:
    """One model's anomaly scorer and quarantine policy (in memory: a restart
    starts a new warm-up and forgets strikes)."""

    def __init__(self, config: RobustConfig) -> None:
        self.config = config
        self.scorer = AnomalyScorer(config)
        self.policy = QuarantinePolicy(config)

    def decide(self, device: str, dense: Mapping[str, np.ndarray], now: float) -> Decision:
        return self.policy.decide(device, self.scorer.score(dense), now)


class Screens:
    """The per-model :class:`Screen`, rebuilt when the ``robust`` section changes."""

    def __init__(self) -> None:
        self._screens: dict[str, Screen] = {}

    def get(self, model: str, config: RobustConfig | None) -> Screen | None:
        if config is None:
            self._screens.pop(model, None)
            return None
        screen = self._screens.get(model)
        if screen is None or screen.config != config:
            screen = self._screens[model] = Screen(config)
        return screen


def decode_dense(
    bodies: Sequence[bytes], expected: Sequence[Mapping[str, tuple[int, ...]]]
) -> list[dict[str, np.ndarray] | str]:
    """Decode each frame once into a scratch dense update (only when robust
    screening is on); a frame that does not decode gives its error message.
    Runs on the decode thread."""
    out: list[dict[str, np.ndarray] | str] = []
    for body, exp in zip(bodies, expected, strict=True):
        try:
            dense = quantization.decode(body, expected=dict(exp))
        except codec.CodecError as exc:
            out.append(str(exc))
            continue
        out.append({k: np.asarray(v, dtype=np.float64) for k, v in dense.items()})
    return out


def is_accept(decision: Decision) -> bool:
    return decision.action is Action.ACCEPT


# --- robust sync aggregators ------------------------------------------------------------


class RoundUpdates:
    """The dense updates of each open or sealed sync buffer, kept only with
    ``aggregator: median | trimmed_mean``: memory O(model × clients_per_round)
    per round, in that mode only. Rebuilt from the update log on recovery."""

    def __init__(self) -> None:
        self._by_buffer: dict[int, list[dict[str, np.ndarray]]] = {}

    def add(self, buffer: object, update: dict[str, np.ndarray]) -> None:
        self._by_buffer.setdefault(id(buffer), []).append(update)

    def take(self, buffer: object) -> list[dict[str, np.ndarray]]:
        return self._by_buffer.pop(id(buffer), [])


def robust_mean(
    updates: Sequence[Mapping[str, np.ndarray]], config: TrainingConfig
) -> dict[str, np.ndarray]:
    """The round's pseudo-gradient with ``aggregator: median | trimmed_mean``."""
    if config.aggregator is Aggregator.MEDIAN:
        return coordinate_median(updates)
    return trimmed_mean(updates, config.trim_fraction)
