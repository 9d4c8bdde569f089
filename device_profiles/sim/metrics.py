"""What a simulation measures, recorded as it happens.

The simulated links and trainers report into one :class:`Recorder`; the
report module turns its rows into JSONL, CSV, plots and summary.md. Every row
carries virtual time in hours (``t_h``).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """Fleet counters, sampled every ``metrics_interval_s`` of virtual time."""

    t_h: float
    version: int
    accuracy: float | None  # of the newest evaluated version
    eligible: int  # devices whose own policy would let them train now
    training: int  # devices inside a training session right now
    trained: int  # distinct devices with an accepted update since the previous sample
    checkins: int  # cumulative
    plans: int
    updates_accepted: int
    updates_rejected: int
    dropouts: int
    bytes_up: int
    bytes_down: int


@dataclass(frozen=True)
class UploadEvent:
    t_h: float
    device: str
    profile: str
    base_version: int
    version_at_ack: int
    staleness: int
    status: int
    payload_bytes: int
    dense_bytes: int
    examples: int


@dataclass(frozen=True)
class VersionEvent:
    t_h: float
    version: int
    accuracy: float | None
    loss: float | None
    # Differential privacy, as the service's version row reports it (None
    # without DP): this step's ε, the cumulative ε, at δ; the clip bound of
    # devices training from the version (adaptive clipping moves it).
    step_epsilon: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    clip_norm: float | None = None


def privacy_fields(version_json: Any) -> dict[str, float | None]:
    """The :class:`VersionEvent` DP fields from a version's JSON (its
    ``privacy`` report, written by the service's privacy hooks): read, never
    recomputed, so the simulation reports exactly what the service claims."""
    report = version_json.get("privacy") if isinstance(version_json, dict) else None
    if not isinstance(report, dict):
        return {}

    def number(key: str) -> float | None:
        value = report.get(key)
        return float(value) if isinstance(value, int | float) else None

    return {k: number(k) for k in ("step_epsilon", "epsilon", "delta", "clip_norm")}


@dataclass
class Recorder:
    """Mutable counters shared by the simulator's wrappers."""

    mode: str = "async"
    samples: list[Sample] = field(default_factory=list)
    uploads: list[UploadEvent] = field(default_factory=list)
    versions: list[VersionEvent] = field(default_factory=list)
    checkins: int = 0
    plans: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_status: Counter[int] = field(default_factory=Counter)
    dropouts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    training_now: int = 0
    train_steps: int = 0
    examples_by_profile: Counter[str] = field(default_factory=Counter)
    accepted_by_profile: Counter[str] = field(default_factory=Counter)
    bytes_up_by_profile: Counter[str] = field(default_factory=Counter)
    devices_by_profile: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    first_seen: dict[int, float] = field(default_factory=dict)  # version -> t_h first observed

    @property
    def latest_version(self) -> int:
        return self.versions[-1].version if self.versions else 0

    @property
    def latest_accuracy(self) -> float | None:
        for v in reversed(self.versions):
            if v.accuracy is not None:
                return v.accuracy
        return None

    def time_to_accuracy(self, target: float) -> float | None:
        """Virtual hours until a version first reached ``target``."""
        for v in self.versions:
            if v.accuracy is not None and v.accuracy >= target:
                return v.t_h
        return None

    def bytes_up_to(self, t_h: float | None) -> int | None:
        """Update bytes uploaded until virtual hour ``t_h`` (inclusive)."""
        if t_h is None:
            return None
        return sum(u.payload_bytes for u in self.uploads if u.t_h <= t_h)

    def staleness_counts(self) -> dict[int, int]:
        counts: dict[int, int] = defaultdict(int)
        for u in self.uploads:
            if u.status == 202:
                counts[u.staleness] += 1
        return dict(sorted(counts.items()))

    def write(self, out: Path, prefix: str = "") -> list[Path]:
        """metrics JSONL (every row, typed) and CSV (the samples, the versions)."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        jsonl = out / f"{prefix}metrics.jsonl"
        with jsonl.open("w", encoding="utf-8") as fh:
            for kind, rows in (("sample", self.samples), ("version", self.versions),
                               ("upload", self.uploads)):
                for row in rows:
                    fh.write(json.dumps({"type": kind, "mode": self.mode, **asdict(row)}) + "\n")
        written.append(jsonl)
        for name, rows, cls in (("metrics", self.samples, Sample),
                                ("versions", self.versions, VersionEvent),
                                ("uploads", self.uploads, UploadEvent)):
            path = out / f"{prefix}{name}.csv"
            with path.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(cls.__dataclass_fields__))
                writer.writeheader()
                for row in rows:
                    writer.writerow(asdict(row))
            written.append(path)
        return written
