"""The call a translator sees: the graph tensors of a Keras node's inputs, and the node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_export.builder import Builder


@dataclass(frozen=True)
class Call:
    """``inputs``: graph tensor ids of the node's Keras tensors, in Keras's flattened
    order (positional, then keyword arguments); ``node``: the Keras node (None inside
    a Sequential), whose ``arguments`` hold the call's keyword arguments."""

    inputs: list[int]
    node: Any

    def kwarg(self, name: str, default: Any = None) -> Any:
        if self.node is None:
            return default
        return self.node.arguments.kwargs.get(name, default)

    def args(self) -> tuple[Any, ...]:
        if self.node is None:
            return ()
        return tuple(self.node.arguments.args)


Handler = Callable[[Builder, Any, Call], int]
