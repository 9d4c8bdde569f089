"""FedAdam (Reddi et al. 2021):
m ← β1·m + (1−β1)·Δ;  v ← β2·v + (1−β2)·Δ²;  w ← w + η·m / (√v + τ).
No bias correction, as in the paper's Algorithm 2."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aggregation_service.optimizers.base import State, Weights, cast_like, moment


class FedAdam:
    name = "fedadam"

    def __init__(
        self, learning_rate: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * d2

    def step(
        self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: State
    ) -> tuple[Weights, State]:
        out: Weights = {}
        new_state: State = {}
        for k, d in delta.items():
            m = self.beta1 * moment(state, f"m/{k}", d) + (1.0 - self.beta1) * d
            v = self.second_moment(moment(state, f"v/{k}", d), d * d)
            new_state[f"m/{k}"] = m
            new_state[f"v/{k}"] = v
            w = weights[k].astype(np.float64) + self.learning_rate * m / (np.sqrt(v) + self.tau)
            out[k] = cast_like(w, weights[k])
        return out, new_state
