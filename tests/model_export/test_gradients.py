"""Gradient parity: every layer's hand-written backward pass against TensorFlow
autodiff of the original Keras layer (eager TensorFlow, no conversion).

Each case wraps the layer under test between a trainable layer before it (so
its input gradient is exercised) and a Dense head after it, then compares
the output, the loss and every trainable weight's gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
L = keras.layers

from model_export.layers.base import Context  # noqa: E402
from model_export.layers.structure import dropout_keep_mask_numpy  # noqa: E402
from model_export.losses import Loss  # noqa: E402
from model_export.translate import translate  # noqa: E402

TOLERANCE = 2e-5


def _init(k: int) -> Any:
    return keras.initializers.GlorotUniform(seed=k)


def _wrap(shape: tuple[int, ...], layer: Any, head: int = 3) -> Any:
    """Input → trainable pre-layer → layer under test → Flatten → Dense(head)."""
    inputs = keras.Input(shape)
    if len(shape) == 3:
        pre = L.Conv2D(shape[-1], 1, kernel_initializer=_init(1), bias_initializer="ones")
    elif len(shape) == 2:
        pre = L.Conv1D(shape[-1], 1, kernel_initializer=_init(1), bias_initializer="ones")
    else:
        pre = L.Dense(shape[-1], kernel_initializer=_init(1), bias_initializer="ones")
    x = layer(pre(inputs))
    if len(x.shape) > 2:
        x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(head, kernel_initializer=_init(2))(x))


def _residual() -> Any:
    inputs = keras.Input((6,))
    a = L.Dense(6, activation="tanh", kernel_initializer=_init(3))(inputs)
    b = L.Dense(6, kernel_initializer=_init(4))(a)
    merged = L.Add()([a, b])  # fan-out: `a` feeds both Dense and Add
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(5))(merged))


def _batchnorm(shape: tuple[int, ...]) -> Any:
    layer = L.BatchNormalization()
    model = _wrap(shape, layer)
    rng = np.random.default_rng(3)
    n = layer.moving_mean.shape[0]
    layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
    layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
    return model


def _embedding() -> Any:
    inputs = keras.Input((5,), dtype="int32")
    x = L.Embedding(11, 4, embeddings_initializer=keras.initializers.RandomNormal(seed=6))(inputs)
    x = L.Dense(4, activation="relu", kernel_initializer=_init(7))(x)  # Dense on a 3-D input
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(8))(x))


def _frozen() -> Any:
    inputs = keras.Input((6,))
    backbone = L.Dense(5, activation="relu", kernel_initializer=_init(9))
    backbone.trainable = False
    x = backbone(inputs)
    x = L.Dense(4, activation="sigmoid", kernel_initializer=_init(10))(x)
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(11))(x))


def _merge(layer: Any, sequence: bool = False) -> Any:
    """Two trainable branches of one input, merged by ``layer``."""
    shape = (4, 3) if sequence else (6,)
    inputs = keras.Input(shape)
    a = L.Dense(3, activation="tanh", kernel_initializer=_init(51))(inputs)
    b = L.Dense(3, kernel_initializer=_init(52), bias_initializer="ones")(inputs)
    x = layer([a, b])
    if sequence:
        x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(53))(x))


def _squeeze_excite() -> Any:
    """MobileNetV3's squeeze-and-excite: [B, H, W, C] × [B, 1, 1, C]."""
    inputs = keras.Input((4, 4, 3))
    x = L.Conv2D(3, 1, kernel_initializer=_init(54), bias_initializer="ones")(inputs)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(3, 1, activation="sigmoid", kernel_initializer=_init(55))(s)
    x = L.Multiply()([x, s])
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(56))(L.Flatten()(x)))


def _operations() -> Any:
    """Arithmetic recorded as Keras operations, as MobileNetV3's hard sigmoid is."""
    inputs = keras.Input((6,))
    x = L.Dense(6, kernel_initializer=_init(57), bias_initializer="ones")(inputs)
    h = L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    y = x * h - 0.5
    y = 2.0 - y / 4.0
    z = y + x
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(58))(z * x))


def _attention(causal: bool, use_bias: bool = True, value_dim: int | None = None) -> Any:
    inputs = keras.Input((5, 6))
    x = L.Dense(6, kernel_initializer=_init(60))(inputs)
    mha = L.MultiHeadAttention(2, 3, value_dim=value_dim, use_bias=use_bias,
                               kernel_initializer=_init(61), bias_initializer=_init(62))
    y = mha(x, x, use_causal_mask=causal)
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(63))(L.Flatten()(y)))


def _transformer_block() -> Any:
    """Token + position embedding, causal attention, layer norms, feed-forward."""
    from model_export.keras_layers import AddPositionEmbedding

    inputs = keras.Input((5,), dtype="int32")
    x = L.Embedding(11, 8, embeddings_initializer=keras.initializers.RandomNormal(seed=64))(
        inputs
    )
    x = AddPositionEmbedding(5, initializer=keras.initializers.RandomNormal(seed=65))(x)
    attn = L.MultiHeadAttention(2, 4, kernel_initializer=_init(66))(x, x, use_causal_mask=True)
    x = L.LayerNormalization()(L.Add()([x, attn]))
    ff = L.Dense(16, activation="relu", kernel_initializer=_init(67))(x)
    ff = L.Dense(8, kernel_initializer=_init(68))(ff)
    x = L.LayerNormalization()(L.Add()([x, ff]))
    x = L.Flatten()(L.Cropping1D((4, 0))(x))  # the last position
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(69))(x))


def _lstm_autoencoder() -> Any:
    """An LSTM anomaly model: encode, repeat, decode every step (a rank-3 MSE target)."""
    inputs = keras.Input((5, 2))
    x = L.LSTM(4, kernel_initializer=_init(70))(inputs)
    x = L.RepeatVector(5)(x)
    x = L.LSTM(4, return_sequences=True, kernel_initializer=_init(71))(x)
    return keras.Model(inputs, L.TimeDistributed(L.Dense(2, kernel_initializer=_init(72)))(x))


def _stacked() -> Any:
    """Two recurrent layers on top of each other: the second reads every step of the first."""
    inputs = keras.Input((6, 3))
    x = L.LSTM(5, return_sequences=True, kernel_initializer=_init(42))(inputs)
    x = L.GRU(4, return_sequences=True, bias_initializer=_init(43))(x)
    x = L.SimpleRNN(3)(x)
    return keras.Model(inputs, L.Dense(3, kernel_initializer=_init(44))(x))


CASES: dict[str, Callable[[], Any]] = {
    "dense_relu": lambda: _wrap((6,), L.Dense(5, activation="relu", kernel_initializer=_init(20))),
    "dense_relu6": lambda: _wrap(
        (6,), L.Dense(5, activation="relu6", kernel_initializer=_init(20))
    ),
    "dense_leaky_relu": lambda: _wrap(
        (6,), L.Dense(5, activation="leaky_relu", kernel_initializer=_init(20))
    ),
    "dense_tanh_no_bias": lambda: _wrap(
        (6,), L.Dense(5, activation="tanh", use_bias=False, kernel_initializer=_init(20))
    ),
    "dense_sigmoid": lambda: _wrap(
        (6,), L.Dense(5, activation="sigmoid", kernel_initializer=_init(20))
    ),
    "relu_layer": lambda: _wrap((6,), L.ReLU()),
    "relu_layer_max6": lambda: _wrap((6,), L.ReLU(max_value=6.0)),
    "leaky_relu_layer": lambda: _wrap((6,), L.LeakyReLU(negative_slope=0.1)),
    "activation_tanh": lambda: _wrap((6,), L.Activation("tanh")),
    "softmax_hidden": lambda: _wrap((6,), L.Softmax()),
    "conv2d_valid_s1": lambda: _wrap((6, 6, 2), L.Conv2D(3, 3, kernel_initializer=_init(21))),
    "conv2d_same_s1_relu": lambda: _wrap(
        (5, 5, 2), L.Conv2D(3, 3, padding="same", activation="relu", kernel_initializer=_init(21))
    ),
    "conv2d_valid_s2": lambda: _wrap(
        (7, 7, 2), L.Conv2D(3, 3, strides=2, kernel_initializer=_init(21))
    ),
    "conv2d_same_s2": lambda: _wrap(
        (6, 6, 2), L.Conv2D(3, 3, strides=2, padding="same", kernel_initializer=_init(21))
    ),
    "conv2d_same_s2_odd": lambda: _wrap(
        (5, 5, 1), L.Conv2D(2, (3, 2), strides=(2, 1), padding="same", kernel_initializer=_init(21))
    ),
    "conv2d_1x1_no_bias": lambda: _wrap(
        (4, 4, 3), L.Conv2D(2, 1, use_bias=False, kernel_initializer=_init(21))
    ),
    "conv1d_valid_s1": lambda: _wrap((9, 2), L.Conv1D(3, 3, kernel_initializer=_init(22))),
    "conv1d_same_s2_tanh": lambda: _wrap(
        (9, 2),
        L.Conv1D(3, 4, strides=2, padding="same", activation="tanh", kernel_initializer=_init(22)),
    ),
    "conv1d_valid_s2": lambda: _wrap(
        (10, 2), L.Conv1D(3, 3, strides=2, kernel_initializer=_init(22))
    ),
    "depthwise_same_s1": lambda: _wrap(
        (5, 5, 3), L.DepthwiseConv2D(3, padding="same", depthwise_initializer=_init(23))
    ),
    "depthwise_valid_s2_m2": lambda: _wrap(
        (7, 7, 2),
        L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, depthwise_initializer=_init(23)),
    ),
    "maxpool2d_valid": lambda: _wrap((6, 6, 2), L.MaxPooling2D(2)),
    "maxpool2d_remainder": lambda: _wrap((5, 5, 2), L.MaxPooling2D(2)),
    "depthwise_k2_s2": lambda: _wrap(
        (5, 5, 2), L.DepthwiseConv2D(2, strides=2, depthwise_initializer=_init(23))
    ),
    "maxpool2d_same_s1": lambda: _wrap((5, 5, 2), L.MaxPooling2D(3, strides=1, padding="same")),
    "maxpool2d_overlap": lambda: _wrap((7, 7, 1), L.MaxPooling2D(3, strides=2)),
    "avgpool2d_valid": lambda: _wrap((6, 6, 2), L.AveragePooling2D(2)),
    "avgpool2d_same": lambda: _wrap((5, 5, 2), L.AveragePooling2D(2, padding="same")),
    "maxpool1d": lambda: _wrap((8, 2), L.MaxPooling1D(2)),
    "avgpool1d_same": lambda: _wrap((7, 2), L.AveragePooling1D(3, strides=2, padding="same")),
    "gap2d": lambda: _wrap((4, 4, 3), L.GlobalAveragePooling2D()),
    "gap2d_keepdims": lambda: _wrap((4, 4, 3), L.GlobalAveragePooling2D(keepdims=True)),
    "gap1d": lambda: _wrap((6, 3), L.GlobalAveragePooling1D()),
    "flatten": lambda: _wrap((3, 3, 2), L.Flatten()),
    "reshape": lambda: _wrap((12,), L.Reshape((3, -1))),
    "batchnorm_dense": lambda: _batchnorm((6,)),
    "batchnorm_conv": lambda: _batchnorm((4, 4, 3)),
    "dropout": lambda: _wrap((8,), L.Dropout(0.4)),
    "add_residual": _residual,
    "embedding": _embedding,
    "frozen_layer": _frozen,
    # --- recurrent -------------------------------------------------------------------------
    "simple_rnn": lambda: _wrap((5, 3), L.SimpleRNN(4, kernel_initializer=_init(40))),
    "simple_rnn_relu_sequences": lambda: _wrap(
        (5, 3), L.SimpleRNN(4, activation="relu", return_sequences=True,
                            kernel_initializer=_init(40))
    ),
    "simple_rnn_go_backwards": lambda: _wrap((5, 3), L.SimpleRNN(4, go_backwards=True)),
    "gru_reset_after": lambda: _wrap((5, 3), L.GRU(4, bias_initializer=_init(41))),
    "gru_reset_before": lambda: _wrap(
        (5, 3), L.GRU(4, reset_after=False, bias_initializer=_init(41))
    ),
    "gru_sequences_go_backwards": lambda: _wrap(
        (5, 3), L.GRU(4, return_sequences=True, go_backwards=True, bias_initializer=_init(41))
    ),
    "gru_no_bias": lambda: _wrap((5, 3), L.GRU(4, use_bias=False)),
    "gru_reset_before_sequences_hard_sigmoid": lambda: _wrap(
        (5, 3), L.GRU(4, reset_after=False, return_sequences=True,
                      recurrent_activation="hard_sigmoid", bias_initializer=_init(41))
    ),
    "lstm": lambda: _wrap((5, 3), L.LSTM(4)),
    "lstm_sequences": lambda: _wrap((5, 3), L.LSTM(4, return_sequences=True)),
    "lstm_go_backwards_hard_sigmoid": lambda: _wrap(
        (5, 3), L.LSTM(4, go_backwards=True, recurrent_activation="hard_sigmoid")
    ),
    "lstm_two_steps": lambda: _wrap((2, 3), L.LSTM(4)),
    "stacked_lstm_gru": _stacked,
    "bidirectional_lstm_concat_sequences": lambda: _wrap(
        (5, 3), L.Bidirectional(L.LSTM(4, return_sequences=True))
    ),
    "bidirectional_gru_sum": lambda: _wrap(
        (5, 3), L.Bidirectional(L.GRU(4, bias_initializer=_init(41)), merge_mode="sum")
    ),
    "bidirectional_simple_rnn_mul_sequences": lambda: _wrap(
        (5, 3), L.Bidirectional(L.SimpleRNN(4, return_sequences=True), merge_mode="mul")
    ),
    "bidirectional_lstm_ave": lambda: _wrap(
        (5, 3), L.Bidirectional(L.LSTM(3), merge_mode="ave")
    ),
    # --- structure ---------------------------------------------------------------------------
    "zero_padding1d": lambda: _wrap((5, 2), L.ZeroPadding1D((1, 2))),
    "zero_padding2d": lambda: _wrap((4, 4, 2), L.ZeroPadding2D(((0, 1), (2, 1)))),
    "cropping1d": lambda: _wrap((6, 2), L.Cropping1D((1, 2))),
    "cropping2d": lambda: _wrap((5, 5, 2), L.Cropping2D(((1, 0), (1, 2)))),
    "upsampling1d": lambda: _wrap((4, 2), L.UpSampling1D(3)),
    "upsampling2d": lambda: _wrap((3, 3, 2), L.UpSampling2D((2, 3))),
    "global_max_pooling1d": lambda: _wrap((6, 3), L.GlobalMaxPooling1D()),
    "global_max_pooling2d": lambda: _wrap((4, 4, 3), L.GlobalMaxPooling2D()),
    "global_max_pooling2d_keepdims": lambda: _wrap(
        (4, 4, 3), L.GlobalMaxPooling2D(keepdims=True)
    ),
    "time_distributed_dense": lambda: _wrap(
        (4, 3), L.TimeDistributed(L.Dense(5, activation="tanh", kernel_initializer=_init(50)))
    ),
    "rescaling": lambda: _wrap((6,), L.Rescaling(1.0 / 127.5, offset=-1.0)),
    "repeat_vector": lambda: _wrap((4,), L.RepeatVector(3)),
    "lstm_autoencoder_sequence_output": _lstm_autoencoder,
    "activation_silu": lambda: _wrap((6,), L.Activation("silu")),
    "activation_hard_sigmoid": lambda: _wrap((6,), L.Activation("hard_sigmoid")),
    "activation_hard_silu": lambda: _wrap((6,), L.Activation("hard_silu")),
    "concatenate": lambda: _merge(L.Concatenate()),
    "concatenate_axis1": lambda: _merge(L.Concatenate(axis=1), sequence=True),
    "multiply": lambda: _merge(L.Multiply()),
    "multiply_broadcast_squeeze_excite": _squeeze_excite,
    "subtract": lambda: _merge(L.Subtract()),
    "average": lambda: _merge(L.Average()),
    "maximum": lambda: _merge(L.Maximum()),
    "operations_hard_sigmoid": _operations,
    # --- normalization and attention --------------------------------------------------------
    "layer_normalization": lambda: _wrap((6,), L.LayerNormalization()),
    "layer_normalization_sequence_no_center": lambda: _wrap(
        (4, 5), L.LayerNormalization(epsilon=1e-5, center=False)
    ),
    "multi_head_attention": lambda: _attention(causal=False),
    "multi_head_attention_causal": lambda: _attention(causal=True),
    "multi_head_attention_no_bias_value_dim": lambda: _attention(
        causal=True, use_bias=False, value_dim=2
    ),
    "transformer_block": _transformer_block,
}


def _batch(model: Any, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    shape = tuple(model.inputs[0].shape[1:])
    if "int" in str(model.inputs[0].dtype):
        x = rng.integers(0, 11, size=(n, *shape)).astype(np.int32)
    else:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.standard_normal((n, *model.outputs[0].shape[1:])).astype(np.float32)
    return x, y


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def gradients(
    model: Any, loss: Loss, keras_loss: Any, x: np.ndarray, y: np.ndarray, *, step: int = 0
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """(fedge gradients, Keras autodiff gradients, fedge loss, Keras loss)."""
    translated = translate(model)
    graph = translated.graph.without_last() if loss.fused else translated.graph
    values = {n: tf.constant(v.numpy()) for n, v in translated.sources.items()}
    out, caches = graph.forward(values, tf.constant(x), Context(True, tf.constant(step)))
    value, dout = loss.value_and_grad(out, tf.constant(y))
    ours = graph.backward(values, caches, dout)
    originals = [(layer, layer.call) for layer, _, _ in translated.dropouts]
    for layer, seed, rate in translated.dropouts:
        shape = tuple(int(d) for d in layer.input.shape[1:])
        mask = dropout_keep_mask_numpy(step, seed, shape, x.shape[0], rate) / (1.0 - rate)
        layer.call = lambda inputs, training=None, _m=mask: inputs * _m
    try:
        names = [r.tensor_name for r in translated.graph.weights() if r.param.trainable]
        variables = [translated.sources[n] for n in names]

        @tf.function
        def reference() -> Any:
            with tf.GradientTape() as tape:
                ref_loss = keras_loss(y, model(x, training=False))
            return ref_loss, tape.gradient(ref_loss, variables)

        ref_loss, ref_grads = reference()
    finally:
        for layer, call in originals:
            layer.call = call
    ref = {n: tf.convert_to_tensor(g) for n, g in zip(names, ref_grads, strict=True)}
    return ours, ref, float(value), float(ref_loss)


@pytest.mark.parametrize("case", list(CASES))
def test_layer_gradients_match_keras_autodiff(case: str) -> None:
    model = CASES[case]()
    x, y = _batch(model)
    translated = translate(model)
    output, _ = translated.graph.forward(
        {n: tf.constant(v.numpy()) for n, v in translated.sources.items()},
        tf.constant(x),
        Context(training=False),
    )
    assert _rel(output, model(x, training=False)) < TOLERANCE
    ours, ref, loss, ref_loss = gradients(
        model, Loss("mean_squared_error"), keras.losses.MeanSquaredError(), x, y
    )
    assert abs(loss - ref_loss) <= TOLERANCE * abs(ref_loss)
    assert set(ours) == set(ref), "every trainable weight gets a gradient"
    for name, grad in ref.items():
        assert np.asarray(grad).any(), f"{name}: the reference gradient is zero (weak case)"
        assert _rel(ours[name], grad) < TOLERANCE, name


def test_frozen_layers_get_no_gradient() -> None:
    model = _frozen()
    translated = translate(model)
    frozen = [r.tensor_name for r in translated.graph.weights() if not r.param.trainable]
    assert frozen == ["dense_kernel", "dense_bias"] or len(frozen) == 2
    x, y = _batch(model)
    ours, _, _, _ = gradients(
        model, Loss("mean_squared_error"), keras.losses.MeanSquaredError(), x, y
    )
    assert not set(frozen) & set(ours)


def test_dropout_mask_changes_with_step_and_keeps_the_rate() -> None:
    a = dropout_keep_mask_numpy(0, 1009, (1000,), 8, 0.3)
    b = dropout_keep_mask_numpy(1, 1009, (1000,), 8, 0.3)
    assert 0.65 < a.mean() < 0.75
    assert (a != b).mean() > 0.3
    same_in_tf = tf.reshape(tf.cast(tf.constant(0), tf.int32), [])
    from model_export.layers.structure import dropout_keep_mask

    mask = dropout_keep_mask(same_in_tf, 1009, (1000,), tf.constant(8), 0.3)
    np.testing.assert_array_equal(mask.numpy(), a)


LOSS_CASES = {
    # name: (final activation, loss, from_logits, fused, keras loss)
    "sparse_ce_logits": ("linear", "sparse_categorical_crossentropy", True, False),
    "sparse_ce_softmax_head": ("softmax", "sparse_categorical_crossentropy", False, True),
    # Keras takes the pre-activation values of *any* final softmax or sigmoid as
    # logits (its `_keras_logits`), whichever cross-entropy is used.
    "sparse_ce_sigmoid_head": ("sigmoid", "sparse_categorical_crossentropy", False, True),
    "sparse_ce_probabilities": ("linear", "sparse_categorical_crossentropy", False, False),
    "bce_logits": ("linear", "binary_crossentropy", True, False),
    "bce_sigmoid_head": ("sigmoid", "binary_crossentropy", False, True),
    "bce_softmax_head": ("softmax", "binary_crossentropy", False, True),
    "bce_probabilities": ("linear", "binary_crossentropy", False, False),
    "mse": ("tanh", "mean_squared_error", False, False),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_gradients_match_keras(case: str) -> None:
    activation, name, from_logits, fused = LOSS_CASES[case]
    model = keras.Sequential(
        [
            keras.Input((5,)),
            L.Dense(4, activation="relu", kernel_initializer=_init(30)),
            L.Dense(
                3,
                activation=activation,
                bias_initializer=keras.initializers.Constant(0.4),
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.2, seed=31),
            ),
        ]
    )
    rng = np.random.default_rng(5)
    if name == "sparse_categorical_crossentropy":
        y = rng.integers(0, 3, size=8).astype(np.int32)
        keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    elif name == "binary_crossentropy":
        y = rng.integers(0, 2, size=(8, 3)).astype(np.float32)
        keras_loss = keras.losses.BinaryCrossentropy(from_logits=from_logits)
    else:
        y = rng.standard_normal((8, 3)).astype(np.float32)
        keras_loss = keras.losses.MeanSquaredError()
    # Small inputs keep linear "probabilities" partly inside (ε, 1 − ε), so the
    # clipped path has a non-zero gradient.
    x = (0.3 * rng.standard_normal((8, 5)) + 0.5).astype(np.float32)
    ours, ref, loss, ref_loss = gradients(
        model, Loss(name, from_logits=from_logits, fused=fused), keras_loss, x, y
    )
    assert abs(loss - ref_loss) <= TOLERANCE * abs(ref_loss)
    for key, grad in ref.items():
        assert np.asarray(grad).any(), f"{key}: the reference gradient is zero (weak case)"
        assert _rel(ours[key], grad) < TOLERANCE, key
