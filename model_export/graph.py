"""A model as a DAG of layers with a hand-written backward pass.

Tensor 0 is the model input; node ``i`` reads ``inputs`` and writes
``output``. The backward pass walks the nodes in reverse, sums the
gradients of tensors read by several nodes (residual fan-out) and skips
every node upstream of which nothing trains.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from model_export.layers.base import Cache, Context, Layer, Param, Tensor

INPUT = 0


@dataclass(frozen=True)
class Node:
    layer: Layer
    inputs: tuple[int, ...]
    output: int


@dataclass(frozen=True)
class WeightRef:
    """Where a manifest tensor comes from: node index, parameter index, the parameter."""

    tensor_name: str
    node: int
    index: int
    param: Param


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    output: int

    def weights(self) -> tuple[WeightRef, ...]:
        refs = []
        for n, node in enumerate(self.nodes):
            for i, param in enumerate(node.layer.params()):
                refs.append(WeightRef(f"{node.layer.name}_{param.name}", n, i, param))
        return tuple(refs)

    def without_last(self) -> Graph:
        """The graph minus its final node (a softmax/sigmoid fused into the loss)."""
        last = self.nodes[-1]
        return Graph(self.nodes[:-1], last.inputs[0])

    def _needs_grad(self) -> dict[int, bool]:
        """Tensor id → whether its gradient is needed (something upstream trains)."""
        need = {INPUT: False}
        for node in self.nodes:
            trains = any(p.trainable for p in node.layer.params())
            need[node.output] = trains or any(need[i] for i in node.inputs)
        return need

    def forward(
        self, values: Mapping[str, Tensor], x: Tensor, ctx: Context
    ) -> tuple[Tensor, list[Cache]]:
        tensors = {INPUT: x}
        caches = []
        for node in self.nodes:
            params = [values[f"{node.layer.name}_{p.name}"] for p in node.layer.params()]
            y, cache = node.layer.forward(params, [tensors[i] for i in node.inputs], ctx)
            tensors[node.output] = y
            caches.append(cache)
        return tensors[self.output], caches

    def backward(
        self, values: Mapping[str, Tensor], caches: list[Cache], dy: Tensor
    ) -> dict[str, Tensor]:
        """Gradients of every trainable weight, by manifest tensor name."""
        import tensorflow as tf

        need = self._needs_grad()
        pending: dict[int, list[Tensor]] = {self.output: [dy]}
        grads: dict[str, Tensor] = {}
        for node, cache in zip(reversed(self.nodes), reversed(caches), strict=True):
            incoming = pending.pop(node.output, None)
            if incoming is None or not need[node.output]:
                continue
            total = incoming[0] if len(incoming) == 1 else tf.add_n(incoming)
            layer = node.layer
            params = [values[f"{layer.name}_{p.name}"] for p in layer.params()]
            need_dx = any(need[i] for i in node.inputs)
            result = layer.backward(params, cache, total, need_dx)
            for param, grad in zip(layer.params(), result.params, strict=True):
                if param.trainable and grad is not None:
                    grads[f"{layer.name}_{param.name}"] = grad
            for i, dx in zip(node.inputs, result.inputs, strict=True):
                if dx is not None and need[i]:
                    pending.setdefault(i, []).append(dx)
        return grads
