"""In-graph optimizers against Keras's own, over several steps (eager TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from model_export.optimizer_state import Optimizer  # noqa: E402
from model_export.optimizers import OptimizerSpec  # noqa: E402
from model_export.options import ExportOptions  # noqa: E402

SPECS = {
    "sgd": OptimizerSpec("sgd"),
    "momentum": OptimizerSpec("momentum", momentum=0.8),
    "nesterov": OptimizerSpec("momentum", momentum=0.9, nesterov=True),
    "adam": OptimizerSpec("adam"),
    "adam_custom": OptimizerSpec("adam", beta_1=0.8, beta_2=0.99, epsilon=1e-5),
    "adamw": OptimizerSpec.named("adamw"),
    "sgd_weight_decay": OptimizerSpec("sgd", weight_decay=0.1),
    "momentum_weight_decay": OptimizerSpec("momentum", momentum=0.9, weight_decay=0.05),
    "rmsprop": OptimizerSpec.named("rmsprop"),
    "rmsprop_momentum_centered": OptimizerSpec("rmsprop", rho=0.8, momentum=0.5, centered=True),
    "rmsprop_weight_decay": OptimizerSpec("rmsprop", momentum=0.0, weight_decay=0.01),
}


@pytest.mark.parametrize("case", list(SPECS))
def test_update_matches_keras_optimizer(case: str) -> None:
    spec = SPECS[case]
    rng = np.random.default_rng(1)
    start = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
    }
    ours = {k: tf.Variable(v) for k, v in start.items()}
    theirs = {k: tf.Variable(v) for k, v in start.items()}
    optimizer = Optimizer(spec, ours)
    keras_optimizer = spec.keras(0.05)
    for _ in range(4):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
        optimizer.apply(ours, {k: tf.constant(g) for k, g in grads.items()}, tf.constant(0.05))
        keras_optimizer.apply_gradients([(tf.constant(grads[k]), theirs[k]) for k in theirs])
    for k, initial in start.items():
        moved = theirs[k].numpy() - initial
        assert np.abs(moved).max() > 1e-3
        np.testing.assert_allclose(ours[k].numpy() - initial, moved, rtol=1e-4, atol=1e-6)


def test_reset_forgets_the_state() -> None:
    var = {"w": tf.Variable(np.ones(3, np.float32))}
    optimizer = Optimizer(OptimizerSpec("adam"), var)
    optimizer.apply(var, {"w": tf.constant([1.0, -2.0, 3.0])}, tf.constant(0.1))
    optimizer.reset()
    assert float(optimizer.iterations.numpy()) == 0.0
    assert all(not s.numpy().any() for s in optimizer.slots.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": "hinge"}, "loss: unknown 'hinge'"),
        ({"optimizer": "adagrad"}, "optimizer: unknown 'adagrad'"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": True}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 1.5}, "epochs"),
        ({"target": "tflite-runtime-2.10"}, "target: unknown"),
        ({"name": "a b"}, "name"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], message: str) -> None:
    from model_export import InvalidOptionError

    with pytest.raises(InvalidOptionError, match=message):
        ExportOptions.parse(**options)  # type: ignore[arg-type]


def test_options_defaults_follow_the_optimizer() -> None:
    from model_export.training import resolve

    class Uncompiled:
        compiled = False

    settings = resolve(Uncompiled(), ExportOptions.parse(optimizer="adam"), binary_head=False)
    assert settings.learning_rate == 0.001
    assert settings.sources == {"loss": "default", "optimizer": "flag",
                                "learning_rate": "default"}
    assert ExportOptions.parse(loss="bce").loss == "binary_crossentropy"
    assert ExportOptions.parse().loss is None and ExportOptions.parse().optimizer is None
    assert OptimizerSpec.named("nesterov") == OptimizerSpec("momentum", nesterov=True)
