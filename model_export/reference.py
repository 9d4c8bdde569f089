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
- ``charlstm``: the FedAvg paper's Shakespeare model (McMahan et al. 2017, as
  LEAF trains it): 80 character ids → 8-dimensional embedding → two LSTMs of
  256 units → softmax over the vocabulary (the next character). ``hidden``
  sets the LSTM sizes, ``input_shape`` the sequence length, ``classes`` the
  vocabulary (default 80).
- ``chargru``: the on-device variant: the same embedding, one GRU of 128.
- ``chartransformer``: a small causal transformer over the same ids: token
  embedding + position embedding (``hidden`` = model width and feed-forward
  width, default 64,128), two blocks of 4-head causal self-attention and a
  ReLU feed-forward, each with a residual and layer normalization (post-norm),
  and a softmax over the vocabulary read at the last position.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from model_export.errors import InvalidOptionError

REFERENCE_MODELS = ("mlp", "cnn", "cnn1d", "transfer", "charlstm", "chargru", "chartransformer")
CHAR_MODELS = ("charlstm", "chargru", "chartransformer")
REFERENCE_DEFAULTS: dict[str, tuple[int, ...]] = {
    "mlp": (64,), "cnn": (28, 28, 1), "cnn1d": (128, 3), "transfer": (8, 8, 1),
    "charlstm": (80,), "chargru": (80,), "chartransformer": (80,),
}
CHAR_EMBEDDING = 8  # the FedAvg paper's character embedding


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

    if name in CHAR_MODELS:
        return _char_model(name, shape, classes, hidden, dropout, seed=seed)

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


def _char_model(
    name: str, shape: tuple[int, ...], vocabulary: int, hidden: Any, dropout: float | None,
    *, seed: int,
) -> Any:
    """charlstm, chargru, chartransformer: next-character models over int32 ids."""
    import keras
    from keras import layers

    from model_export.keras_layers import AddPositionEmbedding

    if len(shape) != 1:
        raise InvalidOptionError(f"{name}: input_shape is the sequence length, got {shape}")
    steps = shape[0]
    init = _init(seed)

    def orthogonal(k: int) -> Any:
        return keras.initializers.Orthogonal(seed=seed * 1000 + k)

    inputs = keras.Input((steps,), dtype="int32", name="ids")
    embed = layers.Embedding(vocabulary, CHAR_EMBEDDING,
                             embeddings_initializer=keras.initializers.RandomUniform(
                                 -0.05, 0.05, seed=seed * 1000 + 1),
                             name="embedding")
    if name in ("charlstm", "chargru"):
        x = embed(inputs)
        cell = layers.LSTM if name == "charlstm" else layers.GRU
        sizes = _sizes(hidden, "hidden", (256, 256) if name == "charlstm" else (128,))
        for i, units in enumerate(sizes):
            x = cell(units, return_sequences=i < len(sizes) - 1, kernel_initializer=init(10 + i),
                     recurrent_initializer=orthogonal(20 + i),
                     name=f"{cell.__name__.lower()}_{i}")(x)
    else:
        sizes = _sizes(hidden, "hidden", (64, 128))
        if len(sizes) != 2:
            raise InvalidOptionError("chartransformer: hidden is model width,feed-forward width")
        width, ff = sizes
        heads = 4 if width % 4 == 0 else 1
        table = keras.initializers.RandomNormal(stddev=0.1, seed=seed * 1000 + 1)
        x = layers.Embedding(vocabulary, width, embeddings_initializer=table,
                             name="embedding")(inputs)
        x = AddPositionEmbedding(steps, initializer=keras.initializers.RandomNormal(
            stddev=0.1, seed=seed * 1000 + 2), name="position")(x)
        for i in range(2):
            attn = layers.MultiHeadAttention(heads, width // heads, kernel_initializer=init(30 + i),
                                             name=f"attention_{i}")(x, x, use_causal_mask=True)
            x = layers.LayerNormalization(epsilon=1e-5, name=f"norm_{i}a")(
                layers.Add(name=f"residual_{i}a")([x, attn]))
            y = layers.Dense(ff, activation="relu", kernel_initializer=init(40 + i),
                             name=f"ff_{i}a")(x)
            y = layers.Dense(width, kernel_initializer=init(50 + i), name=f"ff_{i}b")(y)
            x = layers.LayerNormalization(epsilon=1e-5, name=f"norm_{i}b")(
                layers.Add(name=f"residual_{i}b")([x, y]))
        # The next character is read at the last position (the causal mask lets it
        # see the whole sequence).
        x = layers.Flatten(name="last")(layers.Cropping1D((steps - 1, 0), name="crop")(x))
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(vocabulary, activation="softmax", kernel_initializer=init(99),
                       name="head")(x)
    return keras.Model(inputs, out, name=name)
