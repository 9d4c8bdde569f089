"""Synchronous rounds (FedAvg as in Bonawitz et al. 2019).

A round opens at the first check-in after the previous one closed, from the
current version. It selects up to ``clients_per_round × over_selection``
devices among those checking in, and closes when ``clients_per_round`` have
reported or at its deadline. At close it is aggregated if at least
``min_reports`` reported, otherwise abandoned (its updates are discarded).
Updates weigh their number of examples (τ is always 0 in a round).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RoundOutcome(str, enum.Enum):
    OPEN = "open"
    AGGREGATE = "aggregate"
    ABANDON = "abandon"


@dataclass
class SyncRound:
    round_id: str
    version: int
    deadline_mono: float  # on the clock's monotonic time
    deadline_at: float  # wall time, for the wire
    selected: set[str] = field(default_factory=set)  # assignment ids
    reported: int = 0
    closed: bool = False


def round_outcome(
    reported: int, *, clients_per_round: int, min_reports: int, deadline_passed: bool
) -> RoundOutcome:
    if reported >= clients_per_round:
        return RoundOutcome.AGGREGATE
    if not deadline_passed:
        return RoundOutcome.OPEN
    return RoundOutcome.AGGREGATE if reported >= min_reports else RoundOutcome.ABANDON
