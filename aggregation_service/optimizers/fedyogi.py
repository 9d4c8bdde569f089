"""FedYogi (Reddi et al. 2021): FedAdam with Yogi's additive second moment,
v ← v − (1−β2)·Δ²·sign(v − Δ²), which grows v only as fast as Δ² demands."""

from __future__ import annotations

import numpy as np

from aggregation_service.optimizers.fedadam import FedAdam


class FedYogi(FedAdam):
    name = "fedyogi"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        result: np.ndarray = v - (1.0 - self.beta2) * d2 * np.sign(v - d2)
        return result
