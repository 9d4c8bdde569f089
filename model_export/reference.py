"""The reference models ``fedge export`` knows by name.

- ``mlp``: Dense+ReLU hidden layers (``hidden``, default one of 64: the 64-64-10
  digits model), softmax head.
- ``cnn``: two 3×3 Conv2D+ReLU (``filters``, default 8,16, 'same') each with 2×2
  max pooling, then a softmax Dense; for small images (8×8×1 digits, 28×28×1).
- ``cnn1d``: sensor time series (e.g. 128×3): strided Conv1D, max pooling,
  Conv1D, global average pooling, dropout, softmax Dense.
- ``transfer``: a frozen feature extractor (Conv2D → BatchNorm → ReLU6 →
  strided DepthwiseConv2D → ReLU → Flatten for images; Dense layers for
  vectors) and a trainable head (Dense+ReLU, softmax Dense). Its backbone
  weights are seeded, not pretrained: no weights are downloaded.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from model_export.errors import InvalidOptionError

REFERENCE_MODELS = ("mlp", "cnn", "cnn1d", "transfer")


def _sizes(value: Any, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if value is None:
        return default
    try:
        sizes = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise InvalidOptionError(
            f"{key}: expected a list of positive integers, got {value!r}"
        ) from exc
    if not sizes or any(s < 1 for s in sizes):
        raise InvalidOptionError(f"{key}: expected a list of positive integers, got {value!r}")
    return sizes


def _init(seed: int) -> Callable[[int], Any]:
    import keras

    def make(k: int) -> Any:
        return keras.initializers.GlorotUniform(seed=seed * 1000 + k)

    return make


def build_reference(
    name: str,
    input_shape: tuple[int, ...],
    classes: int,
    *,
    hidden: Any = None,
    filters: Any = None,
    dropout: float | None = None,
    seed: int = 0,
) -> Any:
    """Build (untrained, seeded) the Keras model for a reference name."""
    import keras
    from keras import layers

    if name not in REFERENCE_MODELS:
        raise InvalidOptionError(
            f"unknown reference model {name!r}; expected one of {', '.join(REFERENCE_MODELS)} "
            "or path/to/file.py:factory"
        )
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise InvalidOptionError(f"classes: expected an integer ≥ 2, got {classes!r}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise InvalidOptionError(f"input_shape: expected positive integers, got {input_shape!r}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise InvalidOptionError(f"dropout: expected a rate in [0, 1), got {dropout!r}")
    init = _init(seed)
    head = layers.Dense(classes, activation="softmax", kernel_initializer=init(99), name="head")

    if name == "mlp":
        sizes = _sizes(hidden, "hidden", (64,))
        stack: list[Any] = [keras.Input(shape)]
        if len(shape) > 1:
            stack.append(layers.Flatten(name="flatten"))
        stack += [layers.Dense(n, activation="relu", kernel_initializer=init(i), name=f"dense_{i}")
                  for i, n in enumerate(sizes)]
        if dropout:
            stack.append(layers.Dropout(dropout, name="dropout"))
        return keras.Sequential([*stack, head], name="mlp")

    if name == "cnn":
        if len(shape) != 3:
            raise InvalidOptionError(f"cnn: input_shape must be height,width,channels, got {shape}")
        sizes = _sizes(filters, "filters", (8, 16))
        stack = [keras.Input(shape)]
        height, width = shape[0], shape[1]
        for i, n in enumerate(sizes):
            stack.append(layers.Conv2D(n, 3, padding="same", activation="relu",
                                       kernel_initializer=init(i), name=f"conv_{i}"))
            if height >= 2 and width >= 2:
                stack.append(layers.MaxPooling2D(2, name=f"pool_{i}"))
                height, width = height // 2, width // 2
        stack.append(layers.Flatten(name="flatten"))
        if dropout:
            stack.append(layers.Dropout(dropout, name="dropout"))
        return keras.Sequential([*stack, head], name="cnn")

    if name == "cnn1d":
        if len(shape) != 2:
            raise InvalidOptionError(f"cnn1d: input_shape must be steps,channels, got {shape}")
        sizes = _sizes(filters, "filters", (16, 32))
        stack = [keras.Input(shape)]
        steps = shape[0]
        for i, n in enumerate(sizes):
            strides = 2 if i == 0 and steps >= 16 else 1
            stack.append(layers.Conv1D(n, 5 if i == 0 else 3, strides=strides, padding="same",
                                       activation="relu", kernel_initializer=init(i),
                                       name=f"conv_{i}"))
            steps = -(-steps // strides)
            if i == 0 and steps >= 4:
                stack.append(layers.MaxPooling1D(2, name="pool_0"))
                steps //= 2
        stack += [layers.GlobalAveragePooling1D(name="gap"),
                  layers.Dropout(0.25 if dropout is None else dropout, name="dropout")]
        return keras.Sequential([*stack, head], name="cnn1d")

    # transfer: a frozen backbone (a nested model) and a trainable head.
    sizes = _sizes(hidden, "hidden", (32,))
    if len(shape) == 3:
        width = _sizes(filters, "filters", (8,))[0]
        backbone = keras.Sequential([
            keras.Input(shape),
            layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init(10),
                          name="stem_conv"),
            layers.BatchNormalization(name="stem_bn"),
            layers.ReLU(6.0, name="stem_relu6"),
            layers.DepthwiseConv2D(3, strides=2, padding="same", depthwise_initializer=init(11),
                                   name="block_dw"),
            layers.ReLU(name="block_relu"),
            # Flatten, not global pooling: a seeded (untrained) backbone's
            # spatially pooled features carry too little signal for the head.
            layers.Flatten(name="features"),
        ], name="backbone")
    else:
        backbone = keras.Sequential([
            keras.Input(shape),
            *([layers.Flatten(name="flatten")] if len(shape) > 1 else []),
            layers.Dense(64, activation="tanh", kernel_initializer=init(10), name="feature_0"),
            layers.Dense(32, activation="tanh", kernel_initializer=init(11), name="feature_1"),
        ], name="backbone")
    _seed_batchnorm(backbone, seed)
    backbone.trainable = False
    inputs = keras.Input(shape)
    x = backbone(inputs)
    for i, n in enumerate(sizes):
        x = layers.Dense(n, activation="relu", kernel_initializer=init(20 + i),
                         name=f"head_dense_{i}")(x)
    return keras.Model(inputs, head(x), name="transfer")


def _seed_batchnorm(model: Any, seed: int) -> None:
    """Give BatchNormalization non-trivial statistics, as a trained backbone would have."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.8, 1.2, n).astype("float32"))
            layer.beta.assign(rng.normal(0.0, 0.1, n).astype("float32"))
