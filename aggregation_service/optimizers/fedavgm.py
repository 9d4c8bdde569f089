"""FedAvgM (Hsu et al. 2019): server momentum. m ← β·m + Δ; w ← w + η·m."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aggregation_service.optimizers.base import State, Weights, cast_like, moment


class FedAvgM:
    name = "fedavgm"

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.9) -> None:
        self.learning_rate = learning_rate
        self.momentum = momentum

    def step(
        self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: State
    ) -> tuple[Weights, State]:
        out: Weights = {}
        new_state: State = {}
        for k, d in delta.items():
            m = self.momentum * moment(state, f"m/{k}", d) + d
            new_state[f"m/{k}"] = m
            out[k] = cast_like(weights[k].astype(np.float64) + self.learning_rate * m, weights[k])
        return out, new_state
