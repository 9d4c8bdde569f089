"""Keras layers fedge adds for models Keras's core layers cannot express.

``AddPositionEmbedding`` adds a trainable position embedding to a sequence
(``x + E[:T]``), the piece of a small transformer (token embedding +
position embedding + attention) that Keras itself leaves to custom layers.
fedge exports it builtin-only like any other layer. Importing this module
imports Keras (the rest of ``model_export`` does so lazily); a saved
``.keras`` file that uses the layer loads once it is imported, which
``fedge export`` does for you.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="fedge")
class AddPositionEmbedding(keras.layers.Layer):  # type: ignore[misc]
    """``[B, T, D]`` → ``x + E[:T]`` with a trainable ``E`` of ``[sequence_length, D]``."""

    def __init__(self, sequence_length: int, initializer: Any = "glorot_uniform",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: Any) -> None:
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.sequence_length, int(input_shape[-1])),
            initializer=self.initializer, trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs: Any) -> Any:
        steps = keras.ops.shape(inputs)[1]
        return inputs + self.embeddings[:steps]

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(sequence_length=self.sequence_length,
                      initializer=keras.initializers.serialize(self.initializer))
        return config


__all__ = ["AddPositionEmbedding"]
