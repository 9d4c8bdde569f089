"""Keras LayerNormalization, MultiHeadAttention and PositionEmbedding."""

from __future__ import annotations

from model_export.translate_common import Handler

HANDLERS: dict[str, Handler] = {}
