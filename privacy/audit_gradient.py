"""Gradient-matching inversion (Zhu et al. 2019, "Deep Leakage from
Gradients"; Geiping et al. 2020, "Inverting Gradients — How easy is it to
break privacy in federated learning?"), in TensorFlow.

Why TensorFlow here and nowhere else at run time: matching an update made
by several local SGD steps means differentiating *through* those steps
(second derivatives of the network with respect to its input, for the mlp
and for the cnn's convolutions and pooling). Hand-writing that in numpy
would be a second, unverified autodiff; TensorFlow is already the
exporter's dependency, and this module checks its model of the graph
against the real TFLite training step before it attacks (:func:`make_attack`).
Only the offline inversion audit imports this module; the service and the
edge install never do (tests/privacy/test_edge_import.py).

The attacker knows the initial weights, the learning rate, the local epochs
and the example count (all in the plan or the upload), and simulates the
device: E full-batch SGD steps from the initial weights on dummy images
x̂ = sigmoid(v) (the [0, 1] box of Geiping et al.), summed over the devices
of a secure sum. It minimises

    1 − cos(mask ⊙ Δ(x̂, ŷ), mask ⊙ Δ_observed) + α · TV(x̂)

over v with Adam, the mask being the coordinates the codec sent. Labels ŷ
come first, from the head's bias update: one SGD step moves the bias by
−lr · (mean softmax − label frequencies), so the label counts are
B · (p̄ + Δb / (lr · E)), p̄ the initial model's mean prediction on random
images, rounded to B in total (Geng et al. 2021's estimator; exact for
one example and one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.audit_setup import require
from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.runtime import TrainableModel
    from privacy.audit_inversion import Observation, Setting

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class GradientConfig:
    iterations: int = 500
    step_size: float = 0.1  # Adam
    tv_weight: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise AuditError(f"iterations: {self.iterations} must be ≥ 1")
        if not (self.step_size > 0 and self.tv_weight >= 0):
            raise AuditError("step_size must be > 0 and tv_weight ≥ 0")


@dataclass(frozen=True)
class _Layer:
    kind: str  # dense | conv
    kernel: str
    bias: str
    pool: bool = False
    last: bool = False


def _layers(model: TrainableModel) -> list[_Layer]:
    """The reference mlp / cnn structure, read from the manifest's tensors:
    (kernel, bias) pairs; 2-D kernels are Dense (ReLU except the softmax
    head), 4-D ones 3×3 'same' Conv2D + ReLU + 2×2 max pooling while the
    feature map is at least 2×2."""
    m = model.manifest
    tensors = list(m.trainable)
    if len(tensors) != len(m.tensors) or len(tensors) % 2:
        raise AuditError(f"the gradient-matching attack knows the reference mlp and cnn; "
                         f"{m.name!r} has frozen or unpaired tensors")
    height = m.input.shape[0] if len(m.input.shape) == 3 else 0
    width = m.input.shape[1] if len(m.input.shape) == 3 else 0
    out: list[_Layer] = []
    for i in range(0, len(tensors), 2):
        k, b = tensors[i], tensors[i + 1]
        if len(k.shape) == 4 and len(b.shape) == 1:
            pool = height >= 2 and width >= 2
            if pool:
                height, width = height // 2, width // 2
            out.append(_Layer("conv", k.name, b.name, pool=pool))
        elif len(k.shape) == 2 and len(b.shape) == 1:
            out.append(_Layer("dense", k.name, b.name))
        else:
            raise AuditError(f"the gradient-matching attack knows the reference mlp and cnn; "
                             f"{k.name} {k.shape} / {b.name} {b.shape} is not a layer it models")
    out[-1] = _Layer(out[-1].kind, out[-1].kernel, out[-1].bias, last=True)
    if out[-1].kind != "dense":
        raise AuditError("the gradient-matching attack needs a Dense softmax head")
    return out


class _Simulator:
    """The device's local training, written in TensorFlow ops."""

    def __init__(self, model: TrainableModel, init: Weights, lr: float) -> None:
        import tensorflow as tf  # noqa: PLC0415

        self.tf = tf
        self.layers = _layers(model)
        self.names = [t.name for t in model.manifest.trainable]
        self.init = [tf.constant(init[n], tf.float32) for n in self.names]
        self.input_shape = tuple(model.manifest.input.shape)
        self.classes = int(model.manifest.label.num_classes or 0)
        if self.classes < 2:
            raise AuditError("the gradient-matching attack needs a classifier")
        self.lr = lr

    def logits(self, weights: list[Any], x: Any) -> Any:
        tf = self.tf
        h = tf.reshape(x, (-1, *self.input_shape))
        w = dict(zip(self.names, weights, strict=True))
        for layer in self.layers:
            if layer.kind == "conv":
                h = tf.nn.relu(tf.nn.conv2d(h, w[layer.kernel], 1, "SAME") + w[layer.bias])
                if layer.pool:
                    h = tf.nn.max_pool2d(h, 2, 2, "VALID")
                continue
            if len(h.shape) > 2:
                h = tf.reshape(h, (tf.shape(h)[0], -1))
            h = tf.matmul(h, w[layer.kernel]) + w[layer.bias]
            if not layer.last:
                h = tf.nn.relu(h)
        return h

    def delta(self, xs: Any, ys: Any, devices: int, epochs: int) -> list[Any]:
        """Σ over ``devices`` of (weights after ``epochs`` full-batch SGD steps
        − initial); xs (devices·B, features), ys one-hot."""
        tf = self.tf
        xb = tf.split(xs, devices)
        yb = tf.split(ys, devices)
        total = [tf.zeros_like(w) for w in self.init]
        for x, y in zip(xb, yb, strict=True):
            ws = list(self.init)
            for _ in range(epochs):
                with tf.GradientTape() as tape:
                    tape.watch(ws)
                    loss = tf.reduce_mean(
                        tf.nn.softmax_cross_entropy_with_logits(y, self.logits(ws, x)))
                grads = tape.gradient(loss, ws)
                ws = [w - self.lr * g for w, g in zip(ws, grads, strict=True)]
            total = [t + (w - w0) for t, w, w0 in zip(total, ws, self.init, strict=True)]
        return total


def infer_labels(obs: Observation, simulator: _Simulator, count: int, epochs: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Label counts from the head bias update (see the module docstring)."""
    head = simulator.layers[-1].bias
    db = np.asarray(obs.update[head], np.float64)
    dummies = rng.random((64, int(np.prod(simulator.input_shape)))).astype(np.float32)
    probs = simulator.tf.nn.softmax(simulator.logits(simulator.init, dummies)).numpy()
    p_mean = probs.mean(axis=0).astype(np.float64)
    share = np.maximum(obs.devices * p_mean + db / (simulator.lr * epochs), 0.0)
    if share.sum() <= 0:
        share = np.ones_like(share)
    expected = share / share.sum() * count
    counts = np.floor(expected).astype(np.int64)
    for c in np.argsort(-(expected - counts))[: count - int(counts.sum())]:
        counts[c] += 1
    return np.repeat(np.arange(len(counts)), counts)


def make_attack(model: TrainableModel, init: Weights, *, lr: float,
                image_shape: tuple[int, int], config: GradientConfig) -> Any:
    """Build the attack for ``model`` (checking first that the TensorFlow
    simulation reproduces the TFLite training step) and return a callable
    (observation, count, setting) → (images (count, features), labels).
    ``image_shape`` is how a flat example is drawn (for the TV prior)."""
    require("tensorflow", "the gradient-matching inversion attack")
    import tensorflow as tf  # noqa: PLC0415

    # Two shared cores: one thread each for TensorFlow's pools.
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this process
    sim = _Simulator(model, init, lr)
    _check_simulation(model, init, sim, lr)
    compiled: dict[tuple[int, int, int], _Matcher] = {}

    def attack(obs: Observation, count: int, setting: Setting) -> tuple[np.ndarray, np.ndarray]:
        epochs, devices = setting.epochs, obs.devices
        rng = np.random.default_rng([config.seed, count, epochs])
        labels = infer_labels(obs, sim, count, epochs, rng)
        features = int(np.prod(sim.input_shape))
        key = (count, epochs, devices)
        if key not in compiled:
            compiled[key] = _Matcher(sim, count, epochs=epochs, devices=devices,
                                     image_shape=image_shape, config=config)
        target = [tf.constant(obs.update[n], tf.float32) for n in sim.names]
        mask = [tf.ones_like(t) if obs.mask is None else
                tf.constant(obs.mask[n], tf.float32) for n, t in zip(sim.names, target,
                                                                     strict=True)]
        v = rng.normal(0.0, 0.5, (count, features)).astype(np.float32)
        images = compiled[key](v, tf.one_hot(labels, sim.classes), target, mask)
        return images, labels

    return attack


def _tv(images: Any, shape: tuple[int, int]) -> Any:
    """Anisotropic total variation of the images drawn as ``shape``."""
    import tensorflow as tf  # noqa: PLC0415

    img = tf.reshape(images, (-1, shape[0], shape[1]))
    return (tf.reduce_mean(tf.abs(img[:, 1:, :] - img[:, :-1, :]))
            + tf.reduce_mean(tf.abs(img[:, :, 1:] - img[:, :, :-1])))


class _Matcher:
    """One compiled optimisation for a shape (examples, epochs, devices),
    reused across trials: Adam written out in TensorFlow ops so that its
    state is reset by assignment, not by building a new graph."""

    def __init__(self, sim: _Simulator, count: int, *, epochs: int, devices: int,
                 image_shape: tuple[int, int], config: GradientConfig) -> None:
        import tensorflow as tf  # noqa: PLC0415

        features = int(np.prod(sim.input_shape))
        self.config = config
        self.v = tf.Variable(tf.zeros((count, features)))
        self.m = tf.Variable(tf.zeros((count, features)))
        self.s = tf.Variable(tf.zeros((count, features)))
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        @tf.function  # type: ignore[untyped-decorator]
        def step(t: Any, ys: Any, target: list[Any], mask: list[Any], t_norm: Any) -> Any:
            with tf.GradientTape() as tape:
                x = tf.sigmoid(self.v)
                d = sim.delta(x, ys, devices, epochs)
                dot = tf.add_n([tf.reduce_sum(a * b * m)
                                for a, b, m in zip(d, target, mask, strict=True)])
                d_norm = tf.sqrt(tf.add_n([tf.reduce_sum((a * m) ** 2)
                                           for a, m in zip(d, mask, strict=True)]))
                loss = (1.0 - dot / (d_norm * t_norm + 1e-12)
                         + config.tv_weight * _tv(x, image_shape))
            g = tape.gradient(loss, self.v)
            self.m.assign(beta1 * self.m + (1 - beta1) * g)
            self.s.assign(beta2 * self.s + (1 - beta2) * g * g)
            m_hat = self.m / (1 - beta1**t)
            s_hat = self.s / (1 - beta2**t)
            self.v.assign_sub(config.step_size * m_hat / (tf.sqrt(s_hat) + eps))
            return loss

        self._step = step

    def __call__(self, v0: np.ndarray, ys: Any, target: list[Any], mask: list[Any]) -> np.ndarray:
        import tensorflow as tf  # noqa: PLC0415

        self.v.assign(v0)
        self.m.assign(tf.zeros_like(self.m))
        self.s.assign(tf.zeros_like(self.s))
        t_norm = tf.sqrt(tf.add_n([tf.reduce_sum((t * m) ** 2)
                                   for t, m in zip(target, mask, strict=True)]))
        for i in range(self.config.iterations):
            self._step(tf.constant(i + 1, tf.float32), ys, target, mask, t_norm)
        return np.asarray(tf.sigmoid(self.v).numpy(), np.float64)


def _check_simulation(model: TrainableModel, init: Weights, sim: _Simulator, lr: float) -> None:
    """Refuse to attack a graph the simulation does not reproduce."""
    import tensorflow as tf  # noqa: PLC0415

    rng = np.random.default_rng(12345)
    features = int(np.prod(sim.input_shape))
    x = rng.random((3, features)).astype(np.float32)
    y = rng.integers(0, sim.classes, 3).astype(np.int32)
    model.set_weights(init)
    for _ in range(2):
        model.train_step(x.reshape((3, *sim.input_shape)), y, lr)
    after = model.get_weights()
    simulated = sim.delta(tf.constant(x), tf.one_hot(y, sim.classes), 1, 2)
    worst = max(float(np.abs((after[n] - init[n]) - s.numpy()).max())
                for n, s in zip(sim.names, simulated, strict=True))
    scale = max(float(np.abs(after[n] - init[n]).max()) for n in sim.names)
    if not worst <= 1e-3 * scale + 1e-7:
        raise AuditError(
            f"the gradient-matching attack's TensorFlow model of {model.manifest.name!r} does "
            f"not reproduce its TFLite training step (max difference {worst:.3g} against "
            f"updates of {scale:.3g}); it knows the reference mlp and cnn without dropout"
        )
