"""Losses with explicit gradients, matching Keras's reductions (mean over the batch)."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from model_export.layers.base import Tensor

EPSILON = 1e-7  # keras.config.epsilon(): Keras clips probabilities to [ε, 1 − ε]



def _batch(t: Tensor) -> Tensor:
    return tf.cast(tf.shape(t)[0], tf.float32)


def _elements(t: Tensor) -> Tensor:
    """Batch × the static size of one example: Keras's mean over every axis."""
    size = 1
    for d in t.shape[1:]:
        size *= int(d)
    return _batch(t) * float(size)


@dataclass(frozen=True)
class Loss:
    """A loss applied to the training head's output.

    ``fused`` is True when the model's final softmax or sigmoid is folded
    into the cross-entropy, as Keras itself does whatever ``from_logits``
    says; the loss then sees the pre-activation values as logits.
    Otherwise it sees the model's output, as logits if ``from_logits``.
    """

    name: str
    from_logits: bool = False
    fused: bool = False

    @property
    def on_logits(self) -> bool:
        return self.fused or self.from_logits

    @property
    def has_accuracy(self) -> bool:
        return self.name != "mean_squared_error"

    def value_and_grad(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.name == "sparse_categorical_crossentropy":
            return self._sparse_ce(out, y)
        if self.name == "binary_crossentropy":
            return self._bce(out, y)
        diff = out - y
        count = _elements(out)
        return tf.reduce_sum(diff * diff) / count, diff * (2.0 / count)

    def _sparse_ce(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        batch = _batch(out)
        onehot = tf.one_hot(y, int(out.shape[-1]), dtype=tf.float32)
        if self.on_logits:
            log_probs = tf.nn.log_softmax(out, axis=-1)
            loss = -tf.reduce_sum(onehot * log_probs) / batch
            return loss, (tf.exp(log_probs) - onehot) / batch
        # Keras: log(clip(p, ε, 1−ε)) treated as logits.
        clipped = tf.clip_by_value(out, EPSILON, 1.0 - EPSILON)
        inside = tf.cast(tf.logical_and(out >= EPSILON, out <= 1.0 - EPSILON), tf.float32)
        logits = tf.math.log(clipped)
        loss = -tf.reduce_sum(onehot * tf.nn.log_softmax(logits, axis=-1)) / batch
        dlogits = (tf.nn.softmax(logits, axis=-1) - onehot) / batch
        return loss, dlogits / clipped * inside

    def _bce(self, out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        count = _elements(out)
        if self.on_logits:
            # max(z, 0) − z·y + log(1 + e^−|z|), TensorFlow's stable form.
            terms = tf.nn.relu(out) - out * y + tf.math.log(1.0 + tf.exp(-tf.abs(out)))
            return tf.reduce_sum(terms) / count, (tf.sigmoid(out) - y) / count
        clipped = tf.clip_by_value(out, EPSILON, 1.0 - EPSILON)
        inside = tf.cast(tf.logical_and(out >= EPSILON, out <= 1.0 - EPSILON), tf.float32)
        terms = y * tf.math.log(clipped) + (1.0 - y) * tf.math.log(1.0 - clipped)
        dclipped = -(y / clipped - (1.0 - y) / (1.0 - clipped)) / count
        return -tf.reduce_sum(terms) / count, dclipped * inside

    def accuracy(self, output: Tensor, y: Tensor) -> Tensor:
        """Accuracy of the model's final output (probabilities, or logits without a head)."""
        if self.name == "sparse_categorical_crossentropy":
            predicted = tf.argmax(output, axis=-1, output_type=tf.int32)
            return tf.reduce_mean(tf.cast(tf.equal(predicted, y), tf.float32))
        threshold = 0.0 if self.from_logits and not self.fused else 0.5
        predicted = tf.cast(output > threshold, tf.float32)
        return tf.reduce_mean(tf.cast(tf.equal(predicted, y), tf.float32))
