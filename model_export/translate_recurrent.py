"""Keras SimpleRNN, GRU, LSTM and Bidirectional → :mod:`model_export.layers.recurrent`."""

from __future__ import annotations

from typing import Any

from model_export.builder import Builder, to_numpy
from model_export.layers.recurrent import RECURRENT_ACTIVATIONS, Bidirectional, Recurrent
from model_export.translate_common import Call, Handler

CELL_OF = {"SimpleRNN": "simple_rnn", "GRU": "gru", "LSTM": "lstm"}


def _rnn_activation(b: Builder, layer: Any, fn: Any, what: str) -> str:
    kind = b.activation_kind(layer, fn)
    if kind not in RECURRENT_ACTIVATIONS:
        raise b.refuse(layer, f"{what} {kind!r} is not supported in a recurrent layer",
                       f"use one of {', '.join(RECURRENT_ACTIVATIONS)}")
    return kind


def recurrent_node(b: Builder, layer: Any, name: str, prefix: str = "") -> Recurrent:
    """The fedge layer for one Keras recurrent layer (checked for what fedge supports)."""
    b.check_common(layer)
    cls = type(layer).__name__
    cell = layer.cell
    b.check_common(cell)
    if getattr(layer, "return_state", False):
        raise b.refuse(layer, "return_state is not supported (one output per layer)",
                       "set return_state=False")
    if getattr(layer, "stateful", False):
        raise b.refuse(layer, "stateful layers are not supported", "set stateful=False")
    for attr in ("dropout", "recurrent_dropout"):
        if float(getattr(cell, attr, 0.0) or 0.0) > 0.0:
            raise b.refuse(layer, f"{attr} is not supported inside the recurrence",
                           f"set {attr}=0 (a Dropout layer between layers works)")
    if cls == "GRU" and getattr(cell, "implementation", 2) not in (1, 2):
        raise b.refuse(layer, "unknown GRU implementation", "use implementation=2")
    bias = to_numpy(cell.bias) if cell.use_bias else None
    return Recurrent(
        name=name,
        cell=CELL_OF[cls],
        kernel=to_numpy(cell.kernel),
        recurrent_kernel=to_numpy(cell.recurrent_kernel),
        bias=bias,
        activation=_rnn_activation(b, layer, cell.activation, "activation"),
        recurrent_activation=(
            _rnn_activation(b, layer, cell.recurrent_activation, "recurrent_activation")
            if cls != "SimpleRNN" else "linear"
        ),
        reset_after=bool(getattr(cell, "reset_after", True)),
        return_sequences=bool(layer.return_sequences),
        go_backwards=bool(layer.go_backwards),
        trainable=bool(layer.trainable),
        prefix=prefix,
    )


def _one_input(b: Builder, layer: Any, call: Call) -> int:
    if call.kwarg("initial_state") is not None or len(call.inputs) != 1:
        raise b.refuse(layer, "an initial_state input is not supported (states start at zero)",
                       "call the layer on the sequence alone")
    if call.kwarg("mask") is not None:
        raise b.refuse(layer, "masks are not supported (sequences have a fixed length)",
                       "remove the mask")
    return call.inputs[0]


def _check_sequence(b: Builder, layer: Any) -> None:
    shape = getattr(layer, "input", None)
    dims = tuple(shape.shape) if shape is not None else ()
    if len(dims) != 3 or any(d is None for d in dims[1:]):
        raise b.refuse(layer, f"expected a fixed-length sequence [batch, steps, features], "
                              f"got {dims}", "give the model a static sequence length")


def _recurrent(b: Builder, layer: Any, call: Call) -> int:
    x = _one_input(b, layer, call)
    _check_sequence(b, layer)
    node = recurrent_node(b, layer, b.unique(layer.name))
    return b.add(node, (x,), layer.cell)


def _bidirectional(b: Builder, layer: Any, call: Call) -> int:
    x = _one_input(b, layer, call)
    _check_sequence(b, layer)
    fwd, bwd = layer.forward_layer, layer.backward_layer
    for inner in (fwd, bwd):
        if type(inner).__name__ not in CELL_OF:
            raise b.refuse(layer, f"wraps {type(inner).__name__}, which is not supported",
                           "wrap SimpleRNN, GRU or LSTM")
    mode = layer.merge_mode
    if mode not in ("concat", "sum", "ave", "mul"):
        raise b.refuse(layer, f"merge_mode {mode!r} is not supported (one output per layer)",
                       "use merge_mode 'concat', 'sum', 'ave' or 'mul'")
    name = b.unique(layer.name)
    forward = recurrent_node(b, fwd, name, "forward_")
    backward = recurrent_node(b, bwd, name, "backward_")
    variables: dict[str, Any] = {}
    for node, keras_layer in ((forward, fwd), (backward, bwd)):
        for param in node.params():
            variables[param.name] = getattr(keras_layer.cell, param.name.removeprefix(node.prefix))
    return b.add(Bidirectional(name, forward, backward, mode), (x,), variables=variables)


HANDLERS: dict[str, Handler] = {
    "SimpleRNN": _recurrent, "GRU": _recurrent, "LSTM": _recurrent,
    "Bidirectional": _bidirectional,
}
