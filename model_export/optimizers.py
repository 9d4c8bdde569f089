"""Optimizer choices (TensorFlow-free; the in-graph update is in optimizer_state)."""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class OptimizerSpec:
    """``name`` is sgd, momentum (SGD with momentum) or adam; other fields are their knobs."""

    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def to_manifest(self) -> dict[str, Any]:
        if self.name == "sgd":
            return {"name": "sgd"}
        if self.name == "momentum":
            return {"name": "momentum", "momentum": self.momentum, "nesterov": self.nesterov}
        return {"name": "adam", "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}

    def keras(self, learning_rate: float) -> Any:
        """The Keras optimizer this spec reproduces (used by the verification)."""
        import keras

        if self.name == "adam":
            return keras.optimizers.Adam(learning_rate, beta_1=self.beta_1, beta_2=self.beta_2,
                                         epsilon=self.epsilon)
        momentum = self.momentum if self.name == "momentum" else 0.0
        return keras.optimizers.SGD(learning_rate, momentum=momentum,
                                    nesterov=self.nesterov and self.name == "momentum")
