"""The server-optimizer interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

Weights = dict[str, np.ndarray]
State = dict[str, np.ndarray]


class ServerOptimizer(Protocol):
    name: str

    def step(
        self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: State
    ) -> tuple[Weights, State]:
        """New trainable weights and optimizer state from the pseudo-gradient
        ``delta`` (float64, trainable tensors only). Pure: inputs are not modified."""
        ...


def moment(state: State, key: str, like: np.ndarray) -> np.ndarray:
    value = state.get(key)
    if value is None or value.shape != like.shape:
        return np.zeros(like.shape, dtype=np.float64)
    return value


def cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=like.dtype)
