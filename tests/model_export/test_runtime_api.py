"""fedge.runtime's two ways to run ai-edge-litert: the Interpreter (default) and
LiteRT's CompiledModel, including batch resizing (resize_input_tensor_by_name)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.manifest import load_model_dir
from fedge.runtime import RuntimeUnavailable, TrainableModel


def _batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 64)).astype(np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def test_compiled_model_trains_like_the_interpreter(exported_mlp: Path) -> None:
    manifest, path = load_model_dir(exported_mlp)
    interpreter = TrainableModel(path, manifest, runtime="ai-edge-litert")
    compiled = TrainableModel(path, manifest, runtime="ai-edge-litert", api="compiled")
    assert (interpreter.api, compiled.api) == ("interpreter", "compiled")
    w0 = compiled.get_weights()
    # Batch 32, then 8, then 32 again: every change resizes the inputs.
    losses: dict[str, list[float]] = {"interpreter": [], "compiled": []}
    for n in (32, 8, 32, 8, 32):
        x, y = _batch(n, seed=n)
        for model in (interpreter, compiled):
            losses[model.api].append(model.train_step(x, y, lr=0.1))
    np.testing.assert_allclose(losses["compiled"], losses["interpreter"], rtol=1e-5)
    trained = compiled.get_weights()
    assert all(not np.array_equal(trained[k], w0[k]) for k in w0)
    for name, value in interpreter.get_weights().items():
        np.testing.assert_allclose(trained[name], value, rtol=1e-5, atol=1e-7)
    x, y = _batch(5)
    assert compiled.infer(x).shape == (5, 10)
    np.testing.assert_allclose(compiled.infer(x), interpreter.infer(x), rtol=1e-5, atol=1e-7)
    assert set(compiled.evaluate(x, y)) == {"loss", "accuracy"}
    compiled.set_weights(w0)
    assert all(np.array_equal(compiled.get_weights()[k], w0[k]) for k in w0)


def test_compiled_model_loss_falls_on_one_batch(exported_mlp: Path) -> None:
    manifest, path = load_model_dir(exported_mlp)
    model = TrainableModel(path, manifest, runtime="ai-edge-litert", api="compiled")
    x, y = _batch(32)
    losses = [model.train_step(x, y, lr=0.1) for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0]


def test_api_choice_is_checked(exported_mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, path = load_model_dir(exported_mlp)
    with pytest.raises(RuntimeUnavailable, match="unknown runtime API 'gpu'"):
        TrainableModel(path, manifest, api="gpu")
    with pytest.raises(RuntimeUnavailable, match="CompiledModel API is ai-edge-litert's"):
        TrainableModel(path, manifest, runtime="tensorflow", api="compiled")
    monkeypatch.setenv("FEDGE_TFLITE_API", "compiled")
    assert TrainableModel(path, manifest, runtime="ai-edge-litert").api == "compiled"
