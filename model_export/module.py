"""The tf.Module whose five signatures become the exported model's.

``train`` is forward → loss → hand-written backward → optimizer update; no
GradientTape is involved, so no TensorFlow gradient op reaches the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from model_export.graph import Graph
from model_export.layers.base import Context
from model_export.losses import Loss
from model_export.optimizer_state import Optimizer
from model_export.optimizers import OptimizerSpec


@dataclass(frozen=True)
class TrainingSpec:
    graph: Graph
    loss: Loss
    optimizer: OptimizerSpec
    fedprox: bool
    input_shape: tuple[int, ...]
    input_dtype: str
    label_shape: tuple[int, ...]
    label_dtype: str

    @property
    def train_graph(self) -> Graph:
        return self.graph.without_last() if self.loss.fused else self.graph


class TrainingModule(tf.Module):  # type: ignore[misc]
    def __init__(self, spec: TrainingSpec) -> None:
        super().__init__(name="fedge_model")
        self.spec = spec
        refs = spec.graph.weights()
        self.names = [r.tensor_name for r in refs]
        self.trainable_names = [r.tensor_name for r in refs if r.param.trainable]
        self.weights = {
            r.tensor_name: tf.Variable(np.asarray(r.param.value, np.float32),
                                       trainable=False, name=r.tensor_name)
            for r in refs
        }
        trainable = {n: self.weights[n] for n in self.trainable_names}
        self.optimizer = Optimizer(spec.optimizer, trainable)
        self.anchors = {
            n: tf.Variable(self.weights[n].read_value(), trainable=False, name=f"anchor_{n}")
            for n in self.trainable_names
        } if spec.fedprox else {}
        # Dropout's hash counter: one per train call, never reset.
        self.step = tf.Variable(0, dtype=tf.int32, trainable=False, name="train_step")

        x_spec = tf.TensorSpec([None, *spec.input_shape], spec.input_dtype, name="x")
        y_spec = tf.TensorSpec([None, *spec.label_shape], spec.label_dtype, name="y")
        lr_spec = tf.TensorSpec([], tf.float32, name="lr")
        train_specs = [x_spec, y_spec, lr_spec]
        if spec.fedprox:
            train_specs.append(tf.TensorSpec([], tf.float32, name="mu"))
            self.train = tf.function(
                self._train_prox, input_signature=train_specs, autograph=False
            )
        else:
            self.train = tf.function(self._train, input_signature=train_specs, autograph=False)
        self.evaluate = tf.function(
            self._evaluate, input_signature=[x_spec, y_spec], autograph=False
        )
        self.infer = tf.function(self._infer, input_signature=[x_spec], autograph=False)
        self.get_weights = tf.function(self._get_weights, input_signature=[], autograph=False)
        weight_specs = [
            tf.TensorSpec(r.param.value.shape, tf.float32, name=r.tensor_name) for r in refs
        ]
        self.set_weights = tf.function(
            self._set_weights, input_signature=weight_specs, autograph=False
        )

    def signatures(self) -> dict[str, Any]:
        return {
            "train": self.train.get_concrete_function(),
            "evaluate": self.evaluate.get_concrete_function(),
            "infer": self.infer.get_concrete_function(),
            "get_weights": self.get_weights.get_concrete_function(),
            "set_weights": self.set_weights.get_concrete_function(),
        }

    def _values(self) -> dict[str, Any]:
        return {n: v.read_value() for n, v in self.weights.items()}

    def _step(self, x: Any, y: Any, lr: Any, mu: Any | None) -> dict[str, Any]:
        values = self._values()
        graph = self.spec.train_graph
        out, caches = graph.forward(values, x, Context(training=True, step=self.step.read_value()))
        loss, dout = self.spec.loss.value_and_grad(out, y)
        grads = graph.backward(values, caches, dout)
        if mu is not None:
            # FedProx: ∇ μ/2·‖w − w_anchor‖² = μ·(w − w_anchor). The reported
            # loss is the data loss alone, comparable across μ.
            grads = {n: g + mu * (values[n] - self.anchors[n]) for n, g in grads.items()}
        self.optimizer.apply(self.weights, grads, lr)
        self.step.assign_add(1)
        return {"loss": loss}

    def _train(self, x: Any, y: Any, lr: Any) -> dict[str, Any]:
        return self._step(x, y, lr, None)

    def _train_prox(self, x: Any, y: Any, lr: Any, mu: Any) -> dict[str, Any]:
        return self._step(x, y, lr, mu)

    def _evaluate(self, x: Any, y: Any) -> dict[str, Any]:
        values = self._values()
        ctx = Context(training=False)
        graph = self.spec.train_graph
        head, _ = graph.forward(values, x, ctx)
        loss, _ = self.spec.loss.value_and_grad(head, y)
        result = {"loss": loss}
        if self.spec.loss.has_accuracy:
            # The final activation matters for the threshold only when it was
            # fused into the loss; otherwise the head is the model's output.
            output = head
            if self.spec.loss.fused:
                output, _ = self.spec.graph.nodes[-1].layer.forward([], [head], ctx)
            result["accuracy"] = self.spec.loss.accuracy(output, y)
        return result

    def _infer(self, x: Any) -> dict[str, Any]:
        output, _ = self.spec.graph.forward(self._values(), x, Context(training=False))
        return {"output": output}

    def _get_weights(self) -> dict[str, Any]:
        return {n: tf.identity(v.read_value()) for n, v in self.weights.items()}

    def _set_weights(self, *tensors: Any) -> dict[str, Any]:
        for name, value in zip(self.names, tensors, strict=True):
            self.weights[name].assign(value)
            if name in self.anchors:
                self.anchors[name].assign(value)
        self.optimizer.reset()
        return {"num_tensors": tf.constant(len(self.names), tf.int32)}
