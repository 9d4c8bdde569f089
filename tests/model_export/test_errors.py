"""API-level refusals: each fails before conversion, with a message naming the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model_export import (
    ExportError,
    InvalidOptionError,
    UnsupportedLayerError,
    UnsupportedModelError,
    export_keras,
    export_reference,
)

keras = pytest.importorskip("keras")
L = keras.layers


def _two_inputs() -> Any:
    a, b = keras.Input((3,)), keras.Input((3,))
    return keras.Model([a, b], L.Dense(2)(L.Add()([a, b])), name="two_inputs")


def _all_frozen() -> Any:
    model = keras.Sequential([keras.Input((3,)), L.Dense(2)], name="frozen")
    model.trainable = False
    return model


def _regularized() -> Any:
    return keras.Sequential(
        [keras.Input((3,)), L.Dense(2, kernel_regularizer="l2", name="reg")], name="regularized"
    )


def _causal() -> Any:
    return keras.Sequential(
        [
            keras.Input((8, 2)),
            L.Conv1D(2, 3, padding="causal", name="causal"),
            L.Flatten(),
            L.Dense(2),
        ],
        name="causal_model",
    )


def _unknown_activation() -> Any:
    return keras.Sequential(
        [keras.Input((3,)), L.Dense(2, activation="gelu", name="gelu_dense")], name="gelu"
    )


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (_two_inputs, UnsupportedModelError, "must have exactly one input"),
        (_all_frozen, UnsupportedModelError, "no trainable weights"),
        (_regularized, UnsupportedLayerError, r"layer 'reg' \(Dense\): kernel_regularizer"),
        (_causal, UnsupportedLayerError, "padding 'causal' is not supported"),
        (_unknown_activation, UnsupportedLayerError, "activation 'gelu' is not supported"),
    ],
)
def test_model_is_refused(
    build: Any, error: type[ExportError], message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        export_keras(build(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sparse_ce_needs_class_scores(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((3,)), L.Dense(1)], name="one_unit")
    with pytest.raises(UnsupportedModelError, match="classes ≥ 2"):
        export_keras(model, tmp_path / "out")


def test_not_a_keras_model(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="expected a Keras model, got dict"):
        export_keras({"layers": []}, tmp_path / "out")


def test_unknown_reference_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="unknown reference model 'vgg'"):
        export_reference("vgg", tmp_path / "o", input_shape=(4,), classes=2)
    with pytest.raises(InvalidOptionError, match="input_shape"):
        export_reference("mlp", tmp_path / "o", input_shape=(0,), classes=2)
    with pytest.raises(InvalidOptionError, match="hidden"):
        export_reference("mlp", tmp_path / "o", input_shape=(4,), classes=2, hidden=[])
    with pytest.raises(InvalidOptionError, match="optimizer"):
        export_reference("mlp", tmp_path / "o", input_shape=(4,), classes=2, optimizer="lbfgs")
