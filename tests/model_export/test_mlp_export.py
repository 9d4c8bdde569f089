"""The reference mlp on the digits data: the shared fixture other packages use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    return x, data.target.astype(np.int32)


def test_manifest_describes_the_model(exported_mlp: Path) -> None:
    manifest, _ = load_model_dir(exported_mlp)
    assert manifest.input.shape == (64,)
    assert manifest.label.dtype == "int32"
    assert manifest.label.num_classes == 10
    assert [t.name for t in manifest.tensors] == [
        "dense_0_kernel",
        "dense_0_bias",
        "head_kernel",
        "head_bias",
    ]
    assert manifest.num_parameters == 64 * 64 + 64 + 64 * 10 + 10  # 64-64-10
    ops = manifest.exporter["ops"]
    assert ops == sorted(ops)
    assert not any(op.startswith("CUSTOM") for op in ops)
    runtimes = {r["runtime"] for r in manifest.verified_runtimes}
    assert {"ai-edge-litert", "tensorflow"} <= runtimes
    for record in manifest.verified_runtimes:
        assert all(record["checks"].values()), record


def test_trains_on_digits(exported_mlp: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    manifest, model_path = load_model_dir(exported_mlp)
    model = TrainableModel(model_path, manifest, runtime="ai-edge-litert")
    x, y = digits
    before = model.evaluate(x[:500], y[:500])
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - 32, 32):
            idx = order[start : start + 32]
            model.train_step(x[idx], y[idx], lr=0.1)
    after = model.evaluate(x[:500], y[:500])
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.85
    assert model.infer(x[:7]).shape == (7, 10)


def test_package_imports_without_tensorflow() -> None:
    code = (
        "import sys, model_export, model_export.runtime_check, model_export.cli\n"
        "assert 'tensorflow' not in sys.modules\n"
        "assert 'keras' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _runtime_check_in(python: Path, export_dir: Path, tmp_path: Path) -> dict[str, object]:
    """Train 30 steps on digits and round-trip the weights in another environment."""
    from sklearn.datasets import load_digits

    data = load_digits()
    np.savez(
        tmp_path / "digits.npz",
        x=(data.data[:64] / 16.0).astype(np.float32),
        y=data.target[:64].astype(np.int32),
    )
    code = f"""
import json, sys, numpy as np
from fedge.manifest import load_model_dir
from fedge.runtime import TrainableModel
manifest, path = load_model_dir({str(export_dir)!r})
model = TrainableModel(path, manifest)
d = np.load({str(tmp_path / "digits.npz")!r})
w0 = model.get_weights()
losses = [model.train_step(d["x"][:32], d["y"][:32], lr=0.1) for _ in range(30)]
trained = model.get_weights()
model.set_weights(w0)
restored = model.get_weights()
print(json.dumps({{
    "runtime": model.runtime.name,
    "first": losses[0], "last": losses[-1],
    "moved": any(not np.array_equal(trained[k], w0[k]) for k in w0),
    "round_trip": all(np.array_equal(restored[k], w0[k]) for k in w0),
    "tf": "tensorflow" in sys.modules,
}}))
"""
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_mlp_trains_under_edge_install(
    exported_mlp: Path, edge_python: Path, tmp_path: Path
) -> None:
    result = _runtime_check_in(edge_python, exported_mlp, tmp_path)
    assert result["runtime"] == "ai-edge-litert"
    assert result["tf"] is False
    assert float(result["last"]) < float(result["first"])  # type: ignore[arg-type]
    assert result["moved"] and result["round_trip"]


def test_mlp_trains_under_tflite_runtime_214(
    exported_mlp: Path, tflite_python: Path, tmp_path: Path
) -> None:
    result = _runtime_check_in(tflite_python, exported_mlp, tmp_path)
    assert result["runtime"] == "tflite-runtime"
    assert float(result["last"]) < float(result["first"])  # type: ignore[arg-type]
    assert result["moved"] and result["round_trip"]
