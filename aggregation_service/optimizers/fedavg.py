"""FedAvg with a server learning rate: w ← w + η·Δ (η = 1 is plain FedAvg)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aggregation_service.optimizers.base import State, Weights, cast_like


class FedAvg:
    name = "fedavg"

    def __init__(self, learning_rate: float = 1.0) -> None:
        self.learning_rate = learning_rate

    def step(
        self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: State
    ) -> tuple[Weights, State]:
        out = {
            k: cast_like(weights[k].astype(np.float64) + self.learning_rate * d, weights[k])
            for k, d in delta.items()
        }
        return out, {}
