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
        slots = []
        if spec.name in ("momentum", "adam") or (spec.name == "rmsprop" and spec.momentum > 0):
            slots.append("m")
        if spec.name in ("adam", "rmsprop"):
            slots.append("v")
        if spec.name == "rmsprop" and spec.centered:
            slots.append("g")
        for slot in slots:
            for name, var in variables.items():
                self.slots[f"{slot}_{name}"] = tf.Variable(
                    tf.zeros_like(var), trainable=False, name=f"{slot}_{name}"
                )

    def apply(self, variables: Mapping[str, Any], grads: Mapping[str, Tensor], lr: Tensor) -> None:
        spec = self.spec
        if spec.name == "adam":
            t = self.iterations + 1.0
            # Keras 3 Adam: bias corrections folded into the step size.
            alpha = lr * tf.sqrt(1.0 - tf.pow(spec.beta_2, t)) / (1.0 - tf.pow(spec.beta_1, t))
        for name, grad in grads.items():
            var = variables[name]
            if spec.weight_decay:
                # Keras applies decoupled weight decay before the update.
                var.assign(var - var * (spec.weight_decay * lr))
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
            elif spec.name == "rmsprop":
                self._rmsprop(name, var, grad, lr)
            else:
                m = self.slots[f"m_{name}"]
                v = self.slots[f"v_{name}"]
                m_new = m + (grad - m) * (1.0 - spec.beta_1)
                v_new = v + (grad * grad - v) * (1.0 - spec.beta_2)
                m.assign(m_new)
                v.assign(v_new)
                var.assign_sub(alpha * m_new / (tf.sqrt(v_new) + spec.epsilon))
        self.iterations.assign_add(1.0)

    def _rmsprop(self, name: str, var: Any, grad: Tensor, lr: Tensor) -> None:
        spec = self.spec
        v = self.slots[f"v_{name}"]
        v_new = v * spec.rho + grad * grad * (1.0 - spec.rho)
        v.assign(v_new)
        if spec.centered:
            g = self.slots[f"g_{name}"]
            g_new = g * spec.rho + grad * (1.0 - spec.rho)
            g.assign(g_new)
            denominator = v_new - g_new * g_new + spec.epsilon
        else:
            denominator = v_new + spec.epsilon
        increment = lr * grad / tf.sqrt(denominator)
        if spec.momentum > 0:
            m = self.slots[f"m_{name}"]
            m_new = m * spec.momentum + increment
            m.assign(m_new)
            var.assign_sub(m_new)
        else:
            var.assign_sub(increment)

    def reset(self) -> None:
        """Forget the state: a device starting a round from new global weights starts afresh."""
        for slot in self.slots.values():
            slot.assign(tf.zeros_like(slot))
        self.iterations.assign(0.0)
