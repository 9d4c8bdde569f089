"""Shared fixtures.

Two extra Python environments are built by the Makefile and handed to the
tests through environment variables:

- ``FEDGE_EDGE_PYTHON``: ``pip install fedge[edge]`` only (no TensorFlow);
- ``FEDGE_TFLITE_PYTHON``: tflite-runtime 2.14 with ``numpy<2``.

In CI a test that needs one of them fails when it is missing rather than
skipping, so nothing the project promises goes untested.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _python_from_env(var: str) -> Path:
    value = os.environ.get(var)
    if value and Path(value).is_file():
        return Path(value)
    message = f"{var} is not set to a Python interpreter; run the tests through `make test`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def edge_python() -> Path:
    """An interpreter whose environment has fedge[edge] and no TensorFlow."""
    return _python_from_env("FEDGE_EDGE_PYTHON")


@pytest.fixture(scope="session")
def tflite_python() -> Path:
    """An interpreter whose environment has tflite-runtime 2.14 and numpy<2."""
    return _python_from_env("FEDGE_TFLITE_PYTHON")


@pytest.fixture(scope="session")
def exported_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference ``mlp`` for the digits data (64 inputs, 10 classes),
    exported and verified once per test worker. Returns the export directory
    (``model.tflite`` + ``manifest.json``)."""
    from model_export import export_reference

    out = tmp_path_factory.mktemp("export") / "mlp"
    export_reference("mlp", out, input_shape=(64,), classes=10)
    return out
