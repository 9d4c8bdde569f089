"""Optimizer choices (TensorFlow-free; the in-graph update is in optimizer_state)."""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Names accepted by --optimizer (and OptimizerSpec.name after parsing):
# "nesterov" is momentum with nesterov=True, "adamw" Adam with weight decay.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SPEC_NAMES = ("sgd", "momentum", "adam", "rmsprop")
ADAMW_WEIGHT_DECAY = 0.004  # keras.optimizers.AdamW's default


@dataclass(frozen=True)
class OptimizerSpec:
    """``name`` is sgd, momentum (SGD with momentum), adam or rmsprop; the other
    fields are their knobs, with Keras 3's defaults. ``weight_decay`` is Keras's
    decoupled decay (``w ← w − lr·wd·w`` before the update; AdamW is Adam with it)."""

    name: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7
    rho: float = 0.9
    centered: bool = False
    weight_decay: float = 0.0

    @classmethod
    def named(cls, name: str) -> OptimizerSpec:
        """The spec for an --optimizer name (one of OPTIMIZERS)."""
        if name == "nesterov":
            return cls("momentum", nesterov=True)
        if name == "adamw":
            return cls("adam", weight_decay=ADAMW_WEIGHT_DECAY)
        if name == "rmsprop":
            return cls("rmsprop", momentum=0.0)
        return cls(name)

    @property
    def label(self) -> str:
        """A short human description, e.g. ``momentum 0.9 (Nesterov)``."""
        if self.name == "momentum":
            return f"momentum {self.momentum:g}{' (Nesterov)' if self.nesterov else ''}"
        if self.name == "adam" and self.weight_decay:
            return f"adamw (weight decay {self.weight_decay:g})"
        decay = f", weight decay {self.weight_decay:g}" if self.weight_decay else ""
        if self.name == "rmsprop":
            extra = f" momentum {self.momentum:g}" if self.momentum else ""
            return f"rmsprop{extra}{' centered' if self.centered else ''}{decay}"
        return f"{self.name}{decay}"

    def to_manifest(self) -> dict[str, Any]:
        decay = {"weight_decay": self.weight_decay} if self.weight_decay else {}
        if self.name == "sgd":
            return {"name": "sgd", **decay}
        if self.name == "momentum":
            return {"name": "momentum", "momentum": self.momentum, "nesterov": self.nesterov,
                    **decay}
        if self.name == "rmsprop":
            return {"name": "rmsprop", "rho": self.rho, "momentum": self.momentum,
                    "epsilon": self.epsilon, "centered": self.centered, **decay}
        return {"name": "adamw" if self.weight_decay else "adam", "beta_1": self.beta_1,
                "beta_2": self.beta_2, "epsilon": self.epsilon, **decay}

    def keras(self, learning_rate: float) -> Any:
        """The Keras optimizer this spec reproduces (used by the verification)."""
        import keras

        decay = self.weight_decay or None
        if self.name == "adam":
            return keras.optimizers.Adam(learning_rate, beta_1=self.beta_1, beta_2=self.beta_2,
                                         epsilon=self.epsilon, weight_decay=decay)
        if self.name == "rmsprop":
            return keras.optimizers.RMSprop(learning_rate, rho=self.rho, momentum=self.momentum,
                                            epsilon=self.epsilon, centered=self.centered,
                                            weight_decay=decay)
        momentum = self.momentum if self.name == "momentum" else 0.0
        return keras.optimizers.SGD(learning_rate, momentum=momentum,
                                    nesterov=self.nesterov and self.name == "momentum",
                                    weight_decay=decay)
