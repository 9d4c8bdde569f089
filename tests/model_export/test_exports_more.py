"""Whole exports of the recurrent, attention and structure layers and of stock
Keras applications with a frozen base: builtin-only conversion, verification
against TensorFlow autodiff under ai-edge-litert, TensorFlow and tflite-runtime
2.14, and training in the edge and tflite-runtime 2.14 environments.

As in test_exports.py, each conversion covers many layers at once; the
per-layer gradient parity is in test_gradients.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedge.cli import main
from fedge.manifest import load_model_dir
from model_export import ExportReport, export_keras

keras = pytest.importorskip("keras")
L = keras.layers


def _keyword_spotter() -> Any:
    """Conv1D + GRU (the keyword-spotting shape), stacked and bidirectional recurrences,
    every return_sequences/go_backwards/reset_after variant, a binary head."""
    inputs = keras.Input((8, 3))
    x = L.Conv1D(4, 3, padding="same", activation="relu")(inputs)
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="concat")(x)
    x = L.GRU(5, reset_after=False, return_sequences=True, go_backwards=True)(x)
    x = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode="sum")(x)
    x = L.SimpleRNN(4, return_sequences=True)(x)
    x = L.TimeDistributed(L.Dense(4, activation="tanh"))(x)
    a = L.GlobalMaxPooling1D()(x)
    b = L.LSTM(3, go_backwards=True)(x)
    x = L.Concatenate()([a, b])
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(x), name="keyword_spotter")


def _lstm_anomaly() -> Any:
    """An LSTM autoencoder for anomaly detection: reconstruct every step (MSE)."""
    return keras.Sequential([
        keras.Input((6, 2)),
        L.LSTM(6),
        L.RepeatVector(6),
        L.LSTM(6, return_sequences=True),
        L.TimeDistributed(L.Dense(2)),
    ], name="lstm_anomaly")


def _structure() -> Any:
    """Padding, cropping, up-sampling, merges, broadcasting multiply, operations,
    layer normalization, global max pooling."""
    inputs = keras.Input((6, 6, 2))
    x = L.Rescaling(0.5, offset=0.1)(inputs)
    x = L.ZeroPadding2D(((1, 0), (0, 1)))(x)  # 7×7
    x = L.Conv2D(4, 3, strides=2, activation="hard_silu")(x)  # 3×3
    x = L.UpSampling2D(2)(x)  # 6×6
    x = L.Cropping2D(((1, 1), (0, 2)))(x)  # 4×4
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(4, 1, activation="relu")(s)
    s = L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard sigmoid, as operations
    x = L.Multiply()([x, s])
    a = L.Conv2D(4, 1, activation="silu")(x)
    b = L.Conv2D(4, 1)(x)
    x = L.Concatenate()([L.Maximum()([a, b]), L.Average()([a, b]), L.Subtract()([a, b])])
    x = L.LayerNormalization()(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Reshape((4, 3))(x)
    x = L.ZeroPadding1D(1)(x)
    x = L.UpSampling1D(2)(x)
    x = L.Cropping1D((2, 1))(x)
    x = L.Flatten()(x)
    x = L.Dense(6, activation="relu")(x)
    x = L.LayerNormalization()(x)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(x), name="structure")


@pytest.fixture(scope="module")
def exports(
    tmp_path_factory: pytest.TempPathFactory, tflite_python: Path
) -> dict[str, ExportReport]:
    out = tmp_path_factory.mktemp("more")
    return {
        "keyword_spotter": export_keras(_keyword_spotter(), out / "kws", optimizer="momentum",
                                        target="tflite-runtime-2.14",
                                        verify_pythons=[tflite_python]),
        "lstm_anomaly": export_keras(_lstm_anomaly(), out / "anomaly", loss="mse",
                                     optimizer="adam", verify_pythons=[tflite_python]),
        "structure": export_keras(_structure(), out / "structure", optimizer="rmsprop",
                                  target="tflite-runtime-2.14", verify_pythons=[tflite_python]),
    }


@pytest.mark.parametrize("name", ["keyword_spotter", "lstm_anomaly", "structure"])
def test_export_is_verified_under_every_runtime(
    exports: dict[str, ExportReport], name: str
) -> None:
    report = exports[name]
    assert not any(op.startswith("CUSTOM") for op in report.ops)
    assert sorted(c.runtime for c in report.verification) == [
        "ai-edge-litert", "tensorflow", "tflite-runtime"
    ]
    for check in report.verification:
        assert check.passed, check.summary()
        assert check.measurements["loss_last"] < check.measurements["loss_first"]
    assert report.operators["train"] > report.operators["infer"] > 0


def test_binary_head_and_sequence_target(exports: dict[str, ExportReport]) -> None:
    kws = exports["keyword_spotter"].manifest
    assert kws.loss == "binary_crossentropy"  # one sigmoid unit: binary by default
    assert kws.label.shape == (1,) and kws.label.dtype == "float32"
    anomaly = exports["lstm_anomaly"].manifest
    assert anomaly.label.shape == (6, 2)


# --- reference models, trained in the edge and tflite-runtime 2.14 environments ----------

TRAIN_TEXT = """
import json, sys
import numpy as np
from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel
manifest, path = load_model_dir(sys.argv[1])
data = np.load(sys.argv[2])
model = TrainableModel(path, manifest)
x, y = data["x"], data["y"]
w0 = model.get_weights()
losses = [model.train_step(x, y, lr=float(sys.argv[3])) for _ in range(25)]
trained = model.get_weights()
print(json.dumps({
    "runtime": model.runtime.name,
    "losses": losses,
    "moved": sorted(k for k in w0 if not np.array_equal(trained[k], w0[k])),
    "frozen_moved": [t.name for t in manifest.tensors if not t.trainable
                     and not np.array_equal(trained[t.name], w0[t.name])],
    "tensorflow_loaded": "tensorflow" in sys.modules,
}))
"""

CHAR_ARGS = {
    "charlstm": ["--input-shape", "12", "--hidden", "16,16", "--vocabulary", "20"],
    "chargru": ["--input-shape", "12", "--hidden", "16", "--vocabulary", "20"],
    "chartransformer": ["--input-shape", "12", "--hidden", "16,32", "--vocabulary", "20"],
}


@pytest.fixture(scope="module")
def char_exports(
    tmp_path_factory: pytest.TempPathFactory, tflite_python: Path
) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("char")
    paths = {}
    for name, extra in CHAR_ARGS.items():
        argv = ["export", name, "--out", str(out / name), *extra,
                "--verify-python", str(tflite_python)]
        assert main(argv) == 0
        paths[name] = out / name
    return paths


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sequences of a repeating 20-character alphabet: the next character is predictable."""
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 20, 32)
    ids = (starts[:, None] + np.arange(13)[None, :]) % 20
    path = tmp_path_factory.mktemp("text") / "text.npz"
    np.savez(path, x=ids[:, :12].astype(np.int32), y=ids[:, 12].astype(np.int32))
    return path


@pytest.mark.parametrize("name", list(CHAR_ARGS))
@pytest.mark.parametrize("environment", ["edge", "tflite"])
def test_char_model_trains_on_device_runtimes(
    char_exports: dict[str, Path], text_file: Path, name: str, environment: str,
    request: pytest.FixtureRequest,
) -> None:
    python = request.getfixturevalue(f"{environment}_python")
    lr = "0.5" if name != "chartransformer" else "0.1"
    done = subprocess.run([str(python), "-c", TRAIN_TEXT, str(char_exports[name]),
                           str(text_file), lr], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == {"edge": "ai-edge-litert", "tflite": "tflite-runtime"}[
        environment]
    assert not result["tensorflow_loaded"]
    losses = result["losses"]
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.95 * losses[0]
    assert result["frozen_moved"] == []
    manifest, _ = load_model_dir(char_exports[name])
    assert result["moved"] == sorted(t.name for t in manifest.tensors if t.trainable)


def test_char_reference_shapes(char_exports: dict[str, Path]) -> None:
    manifest, _ = load_model_dir(char_exports["charlstm"])
    assert manifest.input.shape == (12,) and manifest.input.dtype == "int32"
    assert manifest.label.num_classes == 20
    assert [t.name for t in manifest.tensors][:4] == [
        "embedding_embeddings", "lstm_0_kernel", "lstm_0_recurrent_kernel", "lstm_0_bias"
    ]
    shapes = {t.name: t.shape for t in manifest.tensors}
    assert shapes["embedding_embeddings"] == (20, 8)  # the FedAvg paper's 8-d embedding
    manifest, _ = load_model_dir(char_exports["chartransformer"])
    assert {t.name for t in manifest.tensors if not t.trainable} == {
        "attention_0_key_bias", "attention_1_key_bias"
    }


# --- keras.applications with a frozen base ------------------------------------------------


def _calibrate_batchnorm(model: Any, x: np.ndarray) -> None:
    """Set every BatchNormalization's moving statistics to one batch's, as a trained
    base would have (weights=None leaves them at 0/1, and the features vanish)."""
    norms = [layer for layer in model._flatten_layers() if isinstance(
        layer, L.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)


def _application(build: Any) -> Any:
    base = build(input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg")
    rng = np.random.default_rng(0)
    _calibrate_batchnorm(base, rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32))
    base.trainable = False
    inputs = keras.Input((32, 32, 3))
    x = L.Dropout(0.2)(base(inputs))
    x = L.Dense(16, activation="relu", name="head_hidden")(x)
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="head")(x),
                       name=f"{base.name}_head")


@pytest.mark.slow
@pytest.mark.parametrize("application", ["MobileNetV2", "MobileNetV3Small"])
def test_application_with_frozen_base_trains_on_device(
    application: str, tmp_path: Path, tflite_python: Path
) -> None:
    model = _application(getattr(keras.applications, application))
    report = export_keras(model, tmp_path / "app", name=application.lower(),
                          verify_pythons=[tflite_python])
    for check in report.verification:
        assert check.passed, check.summary()
    manifest = report.manifest
    trainable = [t.name for t in manifest.tensors if t.trainable]
    assert trainable == ["head_hidden_kernel", "head_hidden_bias", "head_kernel", "head_bias"]
    features = int(model.layers[1].output.shape[-1])
    assert report.num_trainable_parameters == features * 16 + 16 + 16 * 4 + 4
    assert report.num_parameters > 900_000  # the whole base travels, frozen
    summary = report.summary()
    assert "frozen: forward pass only" in summary and "operators per signature" in summary
    # The base's forward pass only: the train signature is not much larger than infer.
    assert report.operators["train"] < 1.5 * report.operators["infer"]
    rng = np.random.default_rng(1)
    data = tmp_path / "images.npz"
    np.savez(data, x=rng.uniform(0, 255, (16, 32, 32, 3)).astype(np.float32),
             y=rng.integers(0, 4, 16).astype(np.int32))
    done = subprocess.run([str(tflite_python), "-c", TRAIN_TEXT, str(report.path), str(data),
                           "0.05"], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "tflite-runtime" and result["frozen_moved"] == []
    assert result["moved"] == sorted(trainable)
    assert np.mean(result["losses"][-5:]) < result["losses"][0]
