"""In-graph optimizers whose state lives in TFLite resource variables.

The update rules are Keras 3's, so an exported step matches
``keras.optimizers.X.apply_gradients`` (the export verification checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from model_export.layers.base import Tensor
from model_export.optimizers import OptimizerSpec


class Optimizer(tf.Module):  # type: ignore[misc]
    """Slots for a set of variables and the in-graph update (tracked by the model's module)."""

    def __init__(self, spec: OptimizerSpec, variables: Mapping[str, Any]) -> None:
        super().__init__(name="optimizer")
        self.spec = spec
        self.slots: dict[str, Any] = {}
        self.iterations = tf.Variable(0.0, trainable=False, name="optimizer_iterations")
        if spec.name in ("momentum", "adam"):
            for name, var in variables.items():
                self.slots[f"m_{name}"] = tf.Variable(tf.zeros_like(var), trainable=False,
                                                      name=f"m_{name}")
        if spec.name == "adam":
            for name, var in variables.items():
                self.slots[f"v_{name}"] = tf.Variable(tf.zeros_like(var), trainable=False,
                                                      name=f"v_{name}")

    def apply(self, variables: Mapping[str, Any], grads: Mapping[str, Tensor], lr: Tensor) -> None:
        spec = self.spec
        if spec.name == "adam":
            t = self.iterations + 1.0
            # Keras 3 Adam: bias corrections folded into the step size.
            alpha = lr * tf.sqrt(1.0 - tf.pow(spec.beta_2, t)) / (1.0 - tf.pow(spec.beta_1, t))
        for name, grad in grads.items():
            var = variables[name]
            if spec.name == "sgd":
                var.assign_sub(lr * grad)
            elif spec.name == "momentum":
                m = self.slots[f"m_{name}"]
                velocity = m * spec.momentum - lr * grad
                m.assign(velocity)
                if spec.nesterov:
                    var.assign_add(velocity * spec.momentum - lr * grad)
                else:
                    var.assign_add(velocity)
            else:
                m = self.slots[f"m_{name}"]
                v = self.slots[f"v_{name}"]
                m_new = m + (grad - m) * (1.0 - spec.beta_1)
                v_new = v + (grad * grad - v) * (1.0 - spec.beta_2)
                m.assign(m_new)
                v.assign(v_new)
                var.assign_sub(alpha * m_new / (tf.sqrt(v_new) + spec.epsilon))
        self.iterations.assign_add(1.0)

    def reset(self) -> None:
        """Forget the state: a device starting a round from new global weights starts afresh."""
        for slot in self.slots.values():
            slot.assign(tf.zeros_like(slot))
        self.iterations.assign(0.0)
