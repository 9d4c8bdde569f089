"""Keras LayerNormalization, MultiHeadAttention (self-attention) and fedge's
AddPositionEmbedding → :mod:`model_export.layers.attention` / ``normalization``."""

from __future__ import annotations

from typing import Any

from model_export.builder import Builder, to_numpy
from model_export.layers.attention import PositionEmbedding, SelfAttention
from model_export.layers.normalization import LayerNorm
from model_export.translate_common import Call, Handler


def _layer_norm(b: Builder, layer: Any, call: Call) -> int:
    b.check_common(layer)
    x = call.inputs[0]
    rank = len(layer.input.shape)
    axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
    if axis not in (-1, [-1], rank - 1, [rank - 1]):
        raise b.refuse(layer, f"axis {layer.axis} is not supported", "normalize over axis=-1")
    if getattr(layer, "rms_scaling", False):
        raise b.refuse(layer, "rms_scaling is not supported", "use rms_scaling=False")
    node = LayerNorm(
        b.unique(layer.name),
        to_numpy(layer.gamma) if layer.scale else None,
        to_numpy(layer.beta) if layer.center else None,
        float(layer.epsilon),
        bool(layer.trainable),
    )
    return b.add(node, (x,), layer)


def _attention(b: Builder, layer: Any, call: Call) -> int:
    b.check_common(layer)
    if len(set(call.inputs)) != 1:
        raise b.refuse(layer, "only self-attention is supported (query, key and value the "
                              "same tensor)", "call it as mha(x, x)")
    for arg in ("attention_mask", "query_mask", "value_mask", "key_mask"):
        if call.kwarg(arg) is not None:
            raise b.refuse(layer, f"{arg} is not supported (sequences have a fixed length)",
                           "use use_causal_mask=True or no mask")
    if call.kwarg("return_attention_scores", False):
        raise b.refuse(layer, "return_attention_scores is not supported",
                       "return the attention output only")
    if float(getattr(layer, "_dropout", 0.0) or 0.0) > 0.0:
        raise b.refuse(layer, "attention dropout is not supported",
                       "set dropout=0 (a Dropout layer after the attention works)")
    axes = getattr(layer, "_attention_axes", None)
    tensors = list(call.node.arguments.keras_tensors) if call.node is not None else []
    if not tensors or len(tensors[0].shape) != 3:
        raise b.refuse(layer, "expected a sequence [batch, steps, features]",
                       "attend over a rank-3 input")
    if axes not in (None, (1,), [1], 1, (-2,)):
        raise b.refuse(layer, f"attention_axes {axes} is not supported",
                       "attend over the sequence axis (attention_axes=None)")
    parts = {"query": layer._query_dense, "key": layer._key_dense,
             "value": layer._value_dense, "output": layer._output_dense}
    use_bias = bool(getattr(layer, "_use_bias", True))
    def bias(part: str) -> Any:
        return to_numpy(parts[part].bias) if use_bias else None

    node = SelfAttention(
        b.unique(layer.name),
        query_kernel=to_numpy(parts["query"].kernel), key_kernel=to_numpy(parts["key"].kernel),
        value_kernel=to_numpy(parts["value"].kernel),
        output_kernel=to_numpy(parts["output"].kernel),
        query_bias=bias("query"), key_bias=bias("key"), value_bias=bias("value"),
        output_bias=bias("output"),
        causal=bool(call.kwarg("use_causal_mask", False)), trainable=bool(layer.trainable),
    )
    variables = {}
    for part in SelfAttention.PARTS:
        variables[f"{part}_kernel"] = parts[part].kernel
        if use_bias:
            variables[f"{part}_bias"] = parts[part].bias
    return b.add(node, (call.inputs[0],), variables=variables)


def _position(b: Builder, layer: Any, call: Call) -> int:
    if not type(layer).__module__.startswith("model_export"):
        raise b.refuse(layer, "this layer type has no builtin-only implementation",
                       "use model_export.keras_layers.AddPositionEmbedding")
    node = PositionEmbedding(b.unique(layer.name), to_numpy(layer.embeddings),
                             bool(layer.trainable))
    return b.add(node, (call.inputs[0],), layer)


HANDLERS: dict[str, Handler] = {
    "LayerNormalization": _layer_norm, "MultiHeadAttention": _attention,
    "AddPositionEmbedding": _position,
}
