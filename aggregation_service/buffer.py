"""The running weighted sum of accepted updates: O(model) memory.

A :class:`Buffer` holds one float64 array per trainable tensor, the sum of
weights, and small per-update bookkeeping (idempotency keys, assignment ids:
O(K)). Updates are added strictly in update-log order, so replaying the log
after a crash performs the same floating-point additions in the same order
and rebuilds the buffer bit for bit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from fedge.manifest import TensorSpec


@dataclass
class Buffer:
    sums: dict[str, np.ndarray]
    round_id: str | None = None
    weight_sum: float = 0.0
    count: int = 0
    staleness_sum: int = 0
    devices: set[str] = field(default_factory=set)
    keys: list[tuple[str, str]] = field(default_factory=list)  # (idempotency key, update id)
    assignments: list[str] = field(default_factory=list)
    end_offset: int = 0  # log offset after this buffer's last record
    durable: asyncio.Future[None] | None = None  # the last record's durability

    @classmethod
    def zeros(cls, tensors: tuple[TensorSpec, ...], round_id: str | None = None) -> Buffer:
        return cls({t.name: np.zeros(t.shape, dtype=np.float64) for t in tensors}, round_id)

    def record(
        self,
        *,
        weight: float,
        tau: int,
        device: str,
        key: str,
        update_id: str,
        assignment: str,
        end_offset: int,
    ) -> None:
        """Book an update whose values ``accumulate`` already added to ``sums``."""
        self.weight_sum += weight
        self.count += 1
        self.staleness_sum += tau
        self.devices.add(device)
        self.keys.append((key, update_id))
        self.assignments.append(assignment)
        self.end_offset = end_offset

    def mean(self) -> dict[str, np.ndarray]:
        """The pseudo-gradient: Σ wᵢ·Δᵢ / Σ wᵢ."""
        if self.weight_sum <= 0.0:
            raise ValueError("an empty buffer has no mean")
        return {k: v / self.weight_sum for k, v in self.sums.items()}

    @property
    def mean_staleness(self) -> float | None:
        return self.staleness_sum / self.count if self.count else None
