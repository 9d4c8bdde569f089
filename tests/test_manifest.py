from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fedge.manifest import Manifest, ManifestError

VALID: dict[str, Any] = {
    "format_version": 1,
    "name": "mlp",
    "tensors": [
        {"name": "dense_0_kernel", "shape": [64, 10], "dtype": "float32", "trainable": True},
        {"name": "bn_mean", "shape": [10], "dtype": "float32", "trainable": False},
    ],
    "input": {"shape": [64], "dtype": "float32"},
    "label": {"shape": [], "dtype": "int32", "num_classes": 10},
    "signatures": ["train", "evaluate", "infer", "get_weights", "set_weights"],
    "loss": "sparse_categorical_crossentropy",
    "optimizer": {"name": "sgd"},
    "hyperparameters": {"learning_rate": 0.05, "batch_size": 32},
    "sha256": "0" * 64,
}


def test_round_trip() -> None:
    manifest = Manifest.from_dict(VALID)
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert [t.name for t in manifest.trainable] == ["dense_0_kernel"]
    assert manifest.num_parameters == 650


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("tensors"), "missing key 'tensors'"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["tensors"][0].update(shape=[-1]), "non-negative"),
        (lambda d: d["tensors"][0].update(dtype="complex64"), "unknown dtype"),
        (lambda d: d["tensors"][1].update(name="dense_0_kernel"), "unique"),
        (lambda d: d["tensors"][0].update(name="a/b"), "letters, digits"),
        (lambda d: d.update(sha256="xyz"), "64 lowercase hex"),
        (lambda d: d.update(signatures=["train"]), "missing"),
        (lambda d: d["label"].update(num_classes=0), "positive integer"),
        (lambda d: d.update(name=5), "expected str"),
    ],
)
def test_invalid_manifest_names_the_key(mutate: Any, message: str) -> None:
    data = copy.deepcopy(VALID)
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)


def test_not_json() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(b"{nope")
    with pytest.raises(ManifestError, match="JSON object"):
        Manifest.from_json(json.dumps([1, 2]))


def test_model_bytes_checked() -> None:
    manifest = Manifest.from_dict(VALID)
    with pytest.raises(ManifestError, match="does not match"):
        manifest.check_model_bytes(b"not the model")
