"""Whole exports: conversion with TFLITE_BUILTINS only, verification in every
runtime (ai-edge-litert and TensorFlow here, tflite-runtime 2.14 and the edge
install in subprocesses), and the reference models training on digits in the
edge and tflite-runtime 2.14 environments.

Conversions are the expensive part (seconds each), so each module-scoped
export covers many layers at once; per-layer gradient parity is in
test_gradients.py.
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
from model_export import ExportReport, VerificationError, export_keras

keras = pytest.importorskip("keras")
L = keras.layers

DIGITS_SHAPES = {"cnn": "8,8,1", "cnn1d": "64,1", "transfer": "8,8,1"}


def _sink_2d() -> Any:
    """Every 2-D layer in one functional model, with a residual connection."""
    inputs = keras.Input((8, 8, 2))
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu6")(inputs)  # 4×4
    x = L.BatchNormalization()(x)
    skip = x
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1, activation="tanh")(x)
    x = L.Add()([x, skip])
    x = L.DepthwiseConv2D(2, depth_multiplier=2)(x)  # 3×3×8, valid
    x = L.AveragePooling2D(2, strides=1, padding="same")(x)
    x = L.MaxPooling2D(2, padding="same")(x)  # 2×2
    x = L.Conv2D(6, 1, activation="sigmoid")(x)
    x = L.Dropout(0.3)(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(4, activation="softmax")(x), name="sink2d")


def _sink_1d() -> Any:
    return keras.Sequential(
        [
            keras.Input((20, 3)),
            L.Conv1D(4, 3, strides=2, activation="linear"),  # 9
            L.LeakyReLU(negative_slope=0.2),
            L.AveragePooling1D(2, padding="same"),  # 5
            L.Conv1D(5, 2, padding="same", activation="relu"),
            L.MaxPooling1D(2, strides=1),  # 4
            L.Flatten(),
            L.Dense(6, activation="tanh"),
            L.Reshape((2, 3)),
            L.GlobalAveragePooling1D(),
            L.Dense(3, activation="sigmoid"),
        ],
        name="sink1d",
    )


def _embedding() -> Any:
    inputs = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 4)(inputs)
    x = L.Dense(5, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(2)(x), name="embedding_regression")


@pytest.fixture(scope="module")
def sink_exports(
    tmp_path_factory: pytest.TempPathFactory, tflite_python: Path, edge_python: Path
) -> dict[str, ExportReport]:
    out = tmp_path_factory.mktemp("sinks")
    return {
        "sink2d": export_keras(
            _sink_2d(),
            out / "sink2d",
            optimizer="adam",
            fedprox=True,
            target="tflite-runtime-2.14",
            verify_pythons=[tflite_python],
        ),
        "sink1d": export_keras(
            _sink_1d(),
            out / "sink1d",
            loss="binary_crossentropy",
            optimizer="momentum",
            verify_pythons=[tflite_python],
        ),
        "embedding": export_keras(
            _embedding(),
            out / "embedding",
            loss="mse",
            verify_pythons=[tflite_python, edge_python],
        ),
    }


@pytest.mark.parametrize("name", ["sink2d", "sink1d", "embedding"])
def test_export_is_builtin_only_and_verified_everywhere(
    sink_exports: dict[str, ExportReport], name: str
) -> None:
    report = sink_exports[name]
    manifest, _ = load_model_dir(report.path)
    assert not any(op.startswith("CUSTOM") for op in report.ops)
    assert set(report.ops) == set(manifest.exporter["ops"])
    runtimes = sorted(check.runtime for check in report.verification)
    expected = ["ai-edge-litert", "tensorflow", "tflite-runtime"]
    if name == "embedding":  # also verified by the edge install (no TensorFlow), in a subprocess
        expected = ["ai-edge-litert", *expected]
    assert runtimes == expected
    for check in report.verification:
        assert check.passed, check.summary()
        assert check.measurements["max_rel_error"] <= 1e-4
        assert check.measurements["loss_last"] < check.measurements["loss_first"]
    assert [r["runtime"] for r in manifest.verified_runtimes] == [
        c.runtime for c in report.verification
    ]
    assert sorted(report.path.iterdir()) == [
        report.path / "manifest.json",
        report.path / "model.tflite",
    ]


def test_signatures_follow_the_contract(sink_exports: dict[str, ExportReport]) -> None:
    from fedge.runtime import TrainableModel

    sink2d = sink_exports["sink2d"].manifest
    assert sink2d.fedprox and sink2d.optimizer["name"] == "adam"
    assert sink2d.label.dtype == "int32" and sink2d.label.shape == ()
    sink1d = sink_exports["sink1d"].manifest
    assert sink1d.label.dtype == "float32" and sink1d.label.shape == (3,)
    emb = sink_exports["embedding"].manifest
    assert emb.input.dtype == "int32" and emb.label.num_classes is None
    assert [t.trainable for t in sink2d.tensors].count(False) == 2  # BN moving statistics

    manifest, path = load_model_dir(sink_exports["sink1d"].path)
    model = TrainableModel(path, manifest, runtime="ai-edge-litert")
    x = np.random.default_rng(0).standard_normal((5, 20, 3)).astype(np.float32)
    y = np.ones((5, 3), np.float32)
    assert set(model.evaluate(x, y)) == {"loss", "accuracy"}
    assert model.infer(x).shape == (5, 3)  # dynamic batch
    manifest, path = load_model_dir(sink_exports["embedding"].path)
    model = TrainableModel(path, manifest, runtime="ai-edge-litert")
    ids = np.arange(12, dtype=np.int32).reshape(2, 6)
    assert set(model.evaluate(ids, np.zeros((2, 2), np.float32))) == {"loss"}


def test_fedprox_mu_pulls_towards_the_anchor(sink_exports: dict[str, ExportReport]) -> None:
    from fedge.runtime import TrainableModel

    manifest, path = load_model_dir(sink_exports["sink2d"].path)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 4, 8).astype(np.int32)
    drift = {}
    for mu in (0.0, 50.0):
        model = TrainableModel(path, manifest, runtime="ai-edge-litert")
        anchor = model.get_weights()
        model.set_weights(anchor)
        for _ in range(10):
            model.train_step(x, y, lr=0.01, mu=mu)
        after = model.get_weights()
        drift[mu] = sum(
            float(np.sum((after[t.name] - anchor[t.name]) ** 2)) for t in manifest.trainable
        )
    assert 0 < drift[50.0] < drift[0.0]


def test_failed_verification_leaves_nothing_behind(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)], name="tiny")
    target = tmp_path / "out"
    with pytest.raises(VerificationError, match="no such interpreter"):
        export_keras(model, target, verify_pythons=[tmp_path / "no-python"])
    assert list(tmp_path.iterdir()) == []


# --- reference models: trained on digits in the edge and tflite-runtime 2.14 environments --

TRAIN_SCRIPT = """
import json, sys
import numpy as np
from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel
manifest, path = load_model_dir(sys.argv[1])
data = np.load(sys.argv[2])
model = TrainableModel(path, manifest)
x = data["x"].reshape((-1, *manifest.input.shape))[:32]
y = data["y"][:32]
w0 = model.get_weights()
losses = [model.train_step(x, y, lr=0.5) for _ in range(30)]
trained = model.get_weights()
model.set_weights(w0)
restored = model.get_weights()
print(json.dumps({
    "runtime": model.runtime.name,
    "losses": losses,
    "moved": sum(not np.array_equal(trained[k], w0[k]) for k in w0),
    "frozen": [t.name for t in manifest.tensors if not t.trainable
               and not np.array_equal(trained[t.name], w0[t.name])],
    "round_trip": all(np.array_equal(restored[k], w0[k]) for k in w0),
    "tensorflow_loaded": "tensorflow" in sys.modules,
}))
"""


@pytest.fixture(scope="module")
def reference_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("reference")
    paths = {}
    for name, shape in DIGITS_SHAPES.items():
        argv = ["export", name, "--out", str(out / name), "--input-shape", shape]
        if name == "cnn":
            argv += ["--filters", "4,8"]
        assert main(argv) == 0
        paths[name] = out / name
    return paths


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_digits

    data = load_digits()
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    x = (data.data - data.data.mean(0)) / (data.data.std(0) + 1.0)  # standardised pixels
    np.savez(path, x=x.astype(np.float32), y=data.target.astype(np.int32))
    return path


def _train_in(python: Path, export: Path, digits: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), "-c", TRAIN_SCRIPT, str(export), str(digits)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("name", list(DIGITS_SHAPES))
@pytest.mark.parametrize("environment", ["edge", "tflite"])
def test_reference_model_trains_on_digits(
    reference_exports: dict[str, Path],
    digits_file: Path,
    name: str,
    environment: str,
    request: pytest.FixtureRequest,
) -> None:
    python = request.getfixturevalue(f"{environment}_python")
    result = _train_in(python, reference_exports[name], digits_file)
    expected = {"edge": "ai-edge-litert", "tflite": "tflite-runtime"}[environment]
    assert result["runtime"] == expected
    assert not result["tensorflow_loaded"]
    losses = result["losses"]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.98 * losses[0]
    assert result["moved"] > 0 and result["frozen"] == []
    assert result["round_trip"]


def test_cli_summary_and_manifest(reference_exports: dict[str, Path]) -> None:
    manifest, _ = load_model_dir(reference_exports["transfer"])
    frozen = [t.name for t in manifest.tensors if not t.trainable]
    assert "stem_conv_kernel" in frozen and "stem_bn_moving_mean" in frozen
    assert all(t.trainable for t in manifest.tensors if t.name.startswith("head"))
    assert manifest.exporter["tensorflow"].startswith("2.")
