"""Pace steering: how many devices should be training right now, and when
should the others come back.

Stateless and probabilistic, after Bonawitz et al. (2019): the only input is
how many plans are outstanding against how many aggregation needs. A device
is admitted with probability (target − outstanding) / target, so a crowd
checking in at once is thinned rather than all admitted or all refused; a
refused device is told to come back after a time that grows with how full the
pipeline is, multiplied by a random jitter so refused devices do not return
together (no thundering herd).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class PaceDecision:
    admit: bool
    retry_after: float  # seconds; meaningful when not admitted
    target: int
    outstanding: int


def async_target(buffer_size: int, over_provisioning: float) -> int:
    """FedBuff needs K reports per version; keep ≈ K × over-provisioning training."""
    return max(1, math.ceil(buffer_size * over_provisioning))


def sync_target(clients_per_round: int, over_selection: float) -> int:
    return max(1, math.ceil(clients_per_round * over_selection))


def steer(
    outstanding: int,
    target: int,
    *,
    report_deadline_s: float,
    min_retry_s: float,
    max_retry_s: float,
    rng: random.Random,
) -> PaceDecision:
    free = target - outstanding
    if free > 0 and rng.random() < free / target:
        return PaceDecision(True, 0.0, target, outstanding)
    # Expected wait for a slot: a plan lasts about one report deadline, and the
    # fuller the pipeline the longer until enough of them finish.
    fullness = min(1.0, outstanding / target)
    base = min(max_retry_s, max(min_retry_s, report_deadline_s * fullness / 2))
    jittered = base * rng.uniform(0.5, 1.5)
    return PaceDecision(False, min(max_retry_s, max(min_retry_s, jittered)), target, outstanding)
