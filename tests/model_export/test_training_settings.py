"""A model's own training settings: compile()'s optimizer, learning rate and loss,
overridden by flags, refused with the flag that fixes it; saved models exported
directly (``fedge export my_model.keras``, a Keras 2 SavedModel directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedge.cli import main
from fedge.manifest import load_model_dir
from model_export import InvalidOptionError, UnsupportedModelError, export_keras
from model_export.options import ExportOptions
from model_export.training import resolve

keras = pytest.importorskip("keras")
L = keras.layers


def _model(units: int = 3, activation: str = "softmax", name: str = "settings") -> Any:
    return keras.Sequential(
        [keras.Input((4,)), L.Dense(5, activation="relu"), L.Dense(units, activation=activation)],
        name=name,
    )


def _compiled(optimizer: Any, loss: Any = "sparse_categorical_crossentropy", **kw: Any) -> Any:
    model = _model(**kw)
    model.compile(optimizer=optimizer, loss=loss)
    return model


@pytest.mark.parametrize(
    ("optimizer", "manifest", "lr"),
    [
        (lambda: keras.optimizers.SGD(0.02), {"name": "sgd"}, 0.02),
        (lambda: keras.optimizers.SGD(0.03, momentum=0.9),
         {"name": "momentum", "momentum": 0.9, "nesterov": False}, 0.03),
        (lambda: keras.optimizers.SGD(0.01, momentum=0.8, nesterov=True),
         {"name": "momentum", "momentum": 0.8, "nesterov": True}, 0.01),
        (lambda: keras.optimizers.Adam(0.004, beta_1=0.8),
         {"name": "adam", "beta_1": 0.8, "beta_2": 0.999, "epsilon": 1e-7}, 0.004),
        (lambda: keras.optimizers.AdamW(0.002, weight_decay=0.01),
         {"name": "adamw", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
          "weight_decay": 0.01}, 0.002),
        (lambda: keras.optimizers.RMSprop(0.005, rho=0.8, momentum=0.5, centered=True),
         {"name": "rmsprop", "rho": 0.8, "momentum": 0.5, "epsilon": 1e-7, "centered": True},
         0.005),
        (lambda: "adam", {"name": "adam", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
         0.001),
    ],
    ids=["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adam_by_name"],
)
def test_compiled_optimizer_is_used(optimizer: Any, manifest: dict[str, Any], lr: float) -> None:
    settings = resolve(_compiled(optimizer()), ExportOptions.parse(), binary_head=False)
    got = settings.optimizer.to_manifest()
    assert got.keys() == manifest.keys()
    for key, value in manifest.items():
        assert got[key] == pytest.approx(value), key
    assert settings.learning_rate == pytest.approx(lr)
    assert settings.sources == {"loss": "model.compile", "optimizer": "model.compile",
                                "learning_rate": "model.compile"}


def test_flags_override_compile() -> None:
    model = _compiled(keras.optimizers.SGD(0.03, momentum=0.9), loss="mse")
    settings = resolve(model, ExportOptions.parse(optimizer="adam", loss="scce"),
                       binary_head=False)
    assert settings.optimizer.name == "adam" and settings.learning_rate == 0.001
    assert settings.loss == "sparse_categorical_crossentropy"
    assert settings.sources["optimizer"] == settings.sources["loss"] == "flag"
    # --learning-rate alone keeps the compiled optimizer.
    settings = resolve(model, ExportOptions.parse(learning_rate=0.2), binary_head=False)
    assert settings.optimizer.momentum == pytest.approx(0.9)
    assert settings.learning_rate == 0.2 and settings.sources["learning_rate"] == "flag"
    assert settings.loss == "mean_squared_error"


@pytest.mark.parametrize(
    ("loss", "name", "from_logits"),
    [
        ("binary_crossentropy", "binary_crossentropy", None),
        ("mse", "mean_squared_error", None),
        (lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
         "sparse_categorical_crossentropy", True),
        (keras.losses.BinaryCrossentropy, "binary_crossentropy", False),
        (lambda: keras.losses.sparse_categorical_crossentropy,
         "sparse_categorical_crossentropy", None),
    ],
    ids=["bce_name", "mse_alias", "scce_object_logits", "bce_object", "scce_function"],
)
def test_compiled_loss_is_used(loss: Any, name: str, from_logits: bool | None) -> None:
    model = _compiled("sgd", loss=loss() if callable(loss) else loss)
    settings = resolve(model, ExportOptions.parse(), binary_head=False)
    assert settings.loss == name and settings.from_logits is from_logits


def test_binary_head_defaults_to_binary_crossentropy() -> None:
    class Uncompiled:
        compiled = False

    assert resolve(Uncompiled(), ExportOptions.parse(), binary_head=True).loss == (
        "binary_crossentropy"
    )
    assert resolve(Uncompiled(), ExportOptions.parse(), binary_head=False).loss == (
        "sparse_categorical_crossentropy"
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _compiled(keras.optimizers.Adagrad()),
         r"uses Adagrad.*supported: SGD .*pass --optimizer"),
        (lambda: _compiled(keras.optimizers.SGD(0.1, clipnorm=1.0)),
         r"SGD with clipnorm.*pass --optimizer"),
        (lambda: _compiled(keras.optimizers.Adam(amsgrad=True)), r"amsgrad.*--optimizer"),
        (lambda: _compiled(keras.optimizers.SGD(
            keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9))),
         r"learning-rate schedule.*pass --learning-rate"),
        (lambda: _compiled("sgd", loss="categorical_crossentropy"),
         r"uses 'categorical_crossentropy'.*supported: sparse_categorical_crossentropy.*--loss"),
        (lambda: _compiled("sgd", loss=keras.losses.Huber()), r"uses Huber.*pass --loss"),
        (lambda: _compiled("sgd", loss=keras.losses.BinaryCrossentropy(label_smoothing=0.1)),
         r"label_smoothing.*--loss"),
    ],
    ids=["adagrad", "clipnorm", "amsgrad", "schedule", "categorical_ce", "huber",
         "label_smoothing"],
)
def test_unsupported_settings_name_the_flag(build: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        export_keras(build(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_binary_head_without_bce_says_which_flag(tmp_path: Path) -> None:
    model = _compiled("sgd", loss="sparse_categorical_crossentropy", units=1,
                      activation="sigmoid")
    with pytest.raises(UnsupportedModelError, match=r"from model.compile.*--loss bce"):
        export_keras(model, tmp_path / "out")


def test_keras_default_name_is_refused(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    with pytest.raises(InvalidOptionError, match="Keras's default name: pass --name"):
        export_keras(model, tmp_path / "out")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("saved")
    # A binary sigmoid(1) head compiled with BCE and SGD momentum 0.9, saved as
    # .keras under Keras's default name: the CLI takes the file's name.
    binary = keras.Sequential([keras.Input((4,)), L.Dense(6, activation="tanh"),
                               L.Dense(1, activation="sigmoid")])
    binary.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                   loss="binary_crossentropy")
    binary.save(out / "my_detector.keras")
    # A GRU keyword spotter compiled with Adam, named.
    kws = keras.Sequential([keras.Input((6, 3)), L.Conv1D(4, 3, activation="relu"),
                            L.GRU(5), L.Dense(3, activation="softmax")], name="kws")
    kws.compile(optimizer=keras.optimizers.Adam(0.002), loss="sparse_categorical_crossentropy")
    kws.save(out / "kws.keras")
    return {"binary": out / "my_detector.keras", "kws": out / "kws.keras"}


def test_export_a_keras_file_honours_compile(
    saved_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "detector"
    assert main(["export", str(saved_models["binary"]), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "optimizer: momentum 0.9 (model.compile)" in summary
    manifest, _ = load_model_dir(out)
    assert manifest.name == "my_detector"  # not Keras's "sequential"
    assert manifest.loss == "binary_crossentropy"
    assert manifest.optimizer == {"name": "momentum", "momentum": pytest.approx(0.9),
                                  "nesterov": False}
    assert manifest.hyperparameters["learning_rate"] == pytest.approx(0.05)
    assert manifest.extra["training"]["settings_from"]["optimizer"] == "model.compile"
    assert all(all(r["checks"].values()) for r in manifest.verified_runtimes)


def test_export_a_keras_file_with_flags_and_name(
    saved_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "kws"
    argv = ["export", str(saved_models["kws"]), "--out", str(out), "--name", "spotter",
            "--optimizer", "rmsprop", "--learning-rate", "0.01", "--no-verify"]
    assert main(argv) == 0
    manifest, _ = load_model_dir(out)
    assert manifest.name == "spotter" and manifest.optimizer["name"] == "rmsprop"
    assert manifest.hyperparameters["learning_rate"] == 0.01
    assert main(["export", str(saved_models["kws"]), "--out", str(out), "--no-verify"]) == 0
    manifest, _ = load_model_dir(out)
    assert manifest.name == "kws" and manifest.optimizer["name"] == "adam"


def test_export_keras_2_saved_model_directory(tmp_path: Path) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    legacy = tf_keras.Sequential([tf_keras.Input((5, 3)), tf_keras.layers.LSTM(4),
                                  tf_keras.layers.Dense(3, activation="softmax")],
                                 name="legacy_lstm")
    legacy.compile(optimizer=tf_keras.optimizers.SGD(0.02, momentum=0.9),
                   loss="sparse_categorical_crossentropy")
    saved = tmp_path / "saved_model_dir"
    legacy.save(saved, save_format="tf")
    out = tmp_path / "out"
    assert main(["export", str(saved), "--out", str(out)]) == 0
    manifest, _ = load_model_dir(out)
    assert manifest.name == "legacy_lstm"
    assert manifest.optimizer["name"] == "momentum"
    assert manifest.hyperparameters["learning_rate"] == pytest.approx(0.02)
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    from fedge.runtime import TrainableModel

    manifest, path = load_model_dir(out)
    model = TrainableModel(path, manifest)
    np.testing.assert_allclose(model.infer(x), legacy(x).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("plain_dir", "is a directory but not a SavedModel"),
        ("graph_only", "SavedModel without Keras layers"),
        ("bad_keras", "keras.models.load_model failed"),
    ],
)
def test_unusable_saved_models_exit_2(
    make: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tensorflow as tf

    if make == "plain_dir":
        target = tmp_path / "notes"
        target.mkdir()
    elif make == "graph_only":
        target = tmp_path / "exported"
        module = tf.Module()
        module.v = tf.Variable(1.0)
        tf.saved_model.save(module, str(target))
    else:
        target = tmp_path / "broken.keras"
        target.write_bytes(b"not a zip file")
    code = main(["export", str(target), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_is_quiet_unless_verbose(saved_models: dict[str, Path], tmp_path: Path) -> None:
    """TensorFlow's and CUDA's start-up noise never reaches the user's terminal."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "-m", "fedge", "export", str(saved_models["kws"]), "--no-verify"]
    quiet = subprocess.run([*command, "--out", str(tmp_path / "a")], capture_output=True,
                           text=True, env=env, timeout=600, check=False)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    assert "exported 'kws'" in quiet.stdout
    # --verbose lets TensorFlow's messages through (a refused model: no conversion needed).
    refused = keras.Sequential([keras.Input((5, 3)), L.Conv1DTranspose(2, 3, name="up")],
                               name="refused")
    refused.save(tmp_path / "refused.keras")
    loud = subprocess.run([*command[:-2], str(tmp_path / "refused.keras"), "--out",
                           str(tmp_path / "b"), "--verbose"], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    assert loud.returncode == 2
    lines = loud.stderr.strip().splitlines()
    assert len(lines) > 1, "with --verbose, TensorFlow's messages come through"
    assert lines[-1].startswith("fedge export: error: layer 'up' (Conv1DTranspose)")
    # A user's mistake is still one line on stderr.
    bad = subprocess.run([*command[:-2], str(tmp_path / "missing.keras"), "--out",
                          str(tmp_path / "c")], capture_output=True, text=True, env=env,
                         timeout=600, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"fedge export: error: {tmp_path / 'missing.keras'}: no such file"
    ]
