"""``fedge export`` errors: every bad input is a clear message and exit code 2.

These fail before any conversion, so they are cheap; the successful CLI
exports are in test_exports.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.cli import main

FACTORIES = """
import keras

def good():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

def deconv():
    return keras.Sequential([keras.Input((5, 3)),
                             keras.layers.Conv1DTranspose(4, 3, name="my_deconv"),
                             keras.layers.Flatten(), keras.layers.Dense(2)], name="deconv")

def frozen_base():
    base = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3),
                             keras.layers.Conv2DTranspose(2, 3, name="upconv")], name="base")
    base.trainable = False
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(2)(x), name="with_base")

def lstm_dropout():
    return keras.Sequential([keras.Input((5, 3)), keras.layers.LSTM(4, dropout=0.1, name="rnn"),
                             keras.layers.Dense(2)], name="lstm_dropout")

def float64_input():
    inputs = keras.Input((4,), dtype="float64")
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))

def int_input():
    inputs = keras.Input((4,), dtype="int32")
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))

def dilated():
    return keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(2, 3, dilation_rate=2, name="wide"),
                             keras.layers.Flatten(), keras.layers.Dense(2)])

def raises():
    raise RuntimeError("boom")

def not_a_model():
    return 42

NOT_CALLABLE = 3
"""


@pytest.fixture
def factories(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(FACTORIES)
    return path


def _export(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["export", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["resnet50"], "neither a reference model"),
        (["mlp", "--input-shape", "a,b"], "--input-shape: expected comma-separated"),
        (["mlp", "--input-shape", "0"], "--input-shape: expected comma-separated"),
        (["mlp", "--hidden", "64,-1"], "--hidden: expected comma-separated"),
        (["cnn", "--input-shape", "64"], "cnn: input_shape must be height,width,channels"),
        (["cnn1d", "--input-shape", "8,8,1"], "cnn1d: input_shape must be steps,channels"),
        (["mlp", "--classes", "1"], "classes: expected an integer ≥ 2"),
        (["mlp", "--optimizer", "adagrad"], "optimizer: unknown 'adagrad'"),
        (["mlp", "--vocabulary", "50"], "--vocabulary applies to charlstm"),
        (["chargru", "--classes", "40", "--vocabulary", "50"], "disagree"),
        (["charlstm", "--input-shape", "8,8"], "input_shape is the sequence length"),
        (["missing.keras"], "missing.keras: no such file"),
        (["mlp", "--loss", "hinge"], "loss: unknown 'hinge'"),
        (["mlp", "--learning-rate", "0"], "learning_rate"),
        (["mlp", "--batch-size", "0"], "batch_size"),
        (["mlp", "--dropout", "1.5"], "dropout: expected a rate"),
        (["missing.py:build"], "is not a Python file"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _export([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("deconv", "layer 'my_deconv' (Conv1DTranspose): this layer type has no builtin-only "
                   "implementation; replace it with a supported layer"),
        ("frozen_base", "layer 'upconv' (Conv2DTranspose) inside the frozen sub-model 'base' "
                        "(only its forward pass is needed): this layer type has no builtin-only"),
        ("lstm_dropout", "layer 'rnn' (LSTM): dropout is not supported inside the recurrence; "
                         "set dropout=0"),
        ("dilated", "layer 'wide' (Conv2D): dilation_rate must be 1"),
        ("float64_input", "input dtype float64 is not supported"),
        ("int_input", "input dtype int32 is not supported"),
        ("raises", "raises() raised RuntimeError: boom"),
        ("not_a_model", "returned int, expected a Keras model"),
        ("NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
        ("nope", "has no function 'nope'"),
    ],
)
def test_bad_factories_exit_2(
    factory: str,
    message: str,
    factories: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = _export([f"{factories}:{factory}", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "out").exists()


def test_unsupported_layer_lists_what_is_supported(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = _export([f"{factories}:deconv", "--out", str(tmp_path / "o")], capsys)
    assert "supported layers: Dense, Conv1D, Conv2D" in err
    assert "LSTM" in err and "MultiHeadAttention" in err
    assert len(err.strip().splitlines()) == 1  # one line


def test_reference_flags_do_not_apply_to_factories(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _export(
        [f"{factories}:good", "--hidden", "8", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert "--hidden applies to reference models only" in err
    code, err = _export(
        [f"{factories}:good", "--classes", "3", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert "--classes applies to reference models only" in err


def test_out_must_not_be_someone_elses_directory(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    code, err = _export([f"{factories}:good", "--no-verify", "--out", str(occupied)], capsys)
    assert code == 2
    assert "is not an export directory" in err
    assert (occupied / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.py", "occupied"]


def test_help_lists_the_reference_models(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    text = "".join(out.split())  # argparse wraps the long NAME help mid-word
    assert "mlp|cnn|cnn1d|transfer|charlstm|chargru|chartransformer" in text
    assert "--verify-python" in text and "--verbose" in text and "model.keras" in text


def test_factory_export_prints_a_summary(
    factories: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "custom"
    code = main(
        [
            "export",
            f"{factories}:good",
            "--out",
            str(out),
            "--loss",
            "mse",
            "--optimizer",
            "adam",
            "--learning-rate",
            "0.002",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "parameters: 10 (10 trainable)" in captured.out
    assert "builtin ops (" in captured.out and "READ_VARIABLE" in captured.out
    assert "ai-edge-litert" in captured.out and ": ok" in captured.out
    from fedge.manifest import load_model_dir

    manifest, _ = load_model_dir(out)
    assert manifest.loss == "mean_squared_error"
    assert manifest.optimizer["name"] == "adam"
    assert manifest.hyperparameters["learning_rate"] == 0.002
    # Exporting again over an earlier export replaces it.
    assert main(["export", f"{factories}:good", "--out", str(out), "--no-verify"]) == 0
    manifest, _ = load_model_dir(out)
    assert manifest.loss == "sparse_categorical_crossentropy"
    assert manifest.verified_runtimes == ()
