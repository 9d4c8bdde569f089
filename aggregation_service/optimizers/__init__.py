"""Server optimizers: one file each, one small interface.

The pseudo-gradient Δ is the weighted mean of the accepted updates (trained −
base weights, so it points *towards* better weights); an optimizer turns it
into a step on the model's trainable weights. State (moments) is a dict of
float64 arrays that the service stores as a blob with each version, so a
restart continues with the same moments. Formulas: docs/aggregation.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aggregation_service.config import OptimizerConfig, OptimizerName
from aggregation_service.optimizers.base import ServerOptimizer, State, Weights
from aggregation_service.optimizers.fedadam import FedAdam
from aggregation_service.optimizers.fedavg import FedAvg
from aggregation_service.optimizers.fedavgm import FedAvgM
from aggregation_service.optimizers.fedyogi import FedYogi

__all__ = [
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "ServerOptimizer",
    "State",
    "Weights",
    "make_optimizer",
]


def make_optimizer(config: OptimizerConfig) -> ServerOptimizer:
    if config.name is OptimizerName.FEDAVG:
        return FedAvg(config.learning_rate)
    if config.name is OptimizerName.FEDAVGM:
        return FedAvgM(config.learning_rate, config.momentum)
    if config.name is OptimizerName.FEDADAM:
        return FedAdam(config.learning_rate, config.beta1, config.beta2, config.tau)
    return FedYogi(config.learning_rate, config.beta1, config.beta2, config.tau)


def zeros_like(delta: Mapping[str, np.ndarray]) -> State:
    return {k: np.zeros_like(v, dtype=np.float64) for k, v in delta.items()}
