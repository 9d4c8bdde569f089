"""Gradient inversion: reconstruct a device's training examples from its
update, as the service would see it.

Threat model: an honest-but-curious server (or anyone who reads the
uploads) knows the model it sent (graph and weights), the plan (learning
rate, local epochs) and the upload's example count, and sees the update
after the device's protections. It does not tamper with the model — the
malicious-server attacks of Fowl et al. ("Robbing the Fed", 2021), which
plant a layer that makes every example separable, would do better still.

The update is made the way a device makes it: the exported TFLite graph
trains the device's examples with its ``train`` signature
(:class:`fedge.runtime.TrainableModel`) for the plan's local epochs
(one full batch per epoch), delta = trained − initial; then one protection:

- ``dense``: the lossless float32 frame (``quantization``);
- ``topk:D[:B]``: ``quantization.encode`` with top-D sparsification and
  B-bit stochastic quantization (8 by default), then ``decode`` — a first
  upload, so no error-feedback residual yet;
- ``ldp:Z[:C]``: local DP, :func:`privacy.dp.add_local_noise` (clip to C,
  add N(0, (Z·C)²) per coordinate), sent dense; C defaults to the median
  norm of the undefended updates in that setting (a well-tuned clip);
- ``secsum:N``: secure aggregation of N devices' updates with
  :func:`privacy.secagg.run_local_round`; the server sees only the sum. The
  clip is set above every update so that clipping changes nothing: what is
  measured is the summation.

Two attacks:

- **analytic** (numpy; Phong et al. 2017, Geiping et al. 2020 §3, Fowl et
  al. 2021): for a fully connected first layer y = Wx + b, a single
  example's gradient gives ∂L/∂W_j = (∂L/∂b_j) x for every unit j, so
  x = ΔW_j / Δb_j exactly — for any number of local SGD steps, since every
  step's row is a multiple of the same x. With a batch, unit j's ratio is
  a mixture of the examples that activate it; a unit that only one example
  activates gives that example exactly. The attack forms every unit's
  ratio, groups the ratios that agree, weights each unit by Δb_j² (a
  least-squares fit when the update is noisy, which also uses only the
  coordinates the codec sent), and returns the best-supported groups.
- **gradient matching** (TensorFlow, :mod:`privacy.audit_gradient`; Zhu et
  al. 2019, Geiping et al. 2020): optimise dummy images so that simulating
  the device's local training on them reproduces the observed update
  (cosine distance on the sent coordinates, a total-variation prior, a
  [0, 1] box), labels inferred from the head's bias update. Works for the
  cnn too, whose first layer is a convolution.

Quality (:mod:`privacy.audit_images`): the attacker outputs as many images
as there are examples; each original is matched one to one to a
reconstruction, and scored by PSNR, SSIM and whether its nearest
neighbour in the whole data set is the original ("identified").
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from privacy.audit_images import Quality, match, quality
from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.manifest import Manifest
    from fedge.runtime import TrainableModel
    from privacy.audit_setup import ImageData

Weights = dict[str, np.ndarray]

ATTACKS = ("analytic", "gradient")


# --------------------------------------------------------------------------- protections


@dataclass(frozen=True)
class Protection:
    """What stands between a device's update and the server."""

    kind: str  # dense | codec | local_dp | secure_sum
    density: float = 1.0
    bits: int | None = None
    noise_multiplier: float = 0.0
    clip_norm: float | None = None
    devices: int = 1

    @property
    def label(self) -> str:
        if self.kind == "codec":
            return f"top-{self.density * 100:g}%/{self.bits}-bit"
        if self.kind == "local_dp":
            clip = "" if self.clip_norm is None else f", C={self.clip_norm:g}"
            return f"local DP z={self.noise_multiplier:g}{clip}"
        if self.kind == "secure_sum":
            return f"secure sum of {self.devices}"
        return "dense float32"


_NUMBER = r"(\d+(?:\.\d*)?(?:e-?\d+)?|\.\d+(?:e-?\d+)?)"


def parse_protection(text: str) -> Protection:
    """``dense``, ``topk:D[:BITS]``, ``ldp:Z[:C]`` or ``secsum:N``."""
    t = text.strip().lower()
    if t == "dense":
        return Protection("dense")
    if m := re.fullmatch(rf"topk:{_NUMBER}(?::(\d+))?", t):
        density, bits = float(m.group(1)), int(m.group(2) or 8)
        if not 0 < density <= 1 or not 1 <= bits <= 8:
            raise AuditError(f"protection {text!r}: topk:D[:BITS] needs 0 < D ≤ 1 and "
                             "1 ≤ BITS ≤ 8")
        return Protection("codec", density=density, bits=bits)
    if m := re.fullmatch(rf"ldp:{_NUMBER}(?::{_NUMBER})?", t):
        z = float(m.group(1))
        clip = float(m.group(2)) if m.group(2) else None
        if not z > 0 or (clip is not None and not clip > 0):
            raise AuditError(f"protection {text!r}: ldp:Z[:C] needs Z > 0 and C > 0")
        return Protection("local_dp", noise_multiplier=z, clip_norm=clip)
    if m := re.fullmatch(r"secsum:(\d+)", t):
        n = int(m.group(1))
        if n < 3:
            raise AuditError(f"protection {text!r}: secure aggregation needs at least 3 devices "
                             "(secagg min_clients)")
        return Protection("secure_sum", devices=n)
    raise AuditError(
        f"protection {text!r}: expected dense, topk:DENSITY[:BITS] (e.g. topk:0.1), "
        "ldp:Z[:CLIP] (e.g. ldp:0.01) or secsum:N (e.g. secsum:10)"
    )


@dataclass
class Observation:
    """The update as the server sees it, and what the attacker knows about it."""

    update: Weights  # dense float32, trainable tensors
    mask: Weights | None  # True where a value was sent (codec); None: everything
    noise_std: float  # per-coordinate std of added noise (local DP), else 0
    devices: int  # updates summed into it
    payload_bytes: int
    epsilon: float | None = None  # local DP: ε of this upload (δ = 1e-5)


def device_update(model: TrainableModel, init: Weights, x: np.ndarray, y: np.ndarray, *,
                  epochs: int, lr: float) -> Weights:
    """Train (x, y) as one batch for ``epochs`` steps from ``init`` with the
    TFLite ``train`` signature; return trained − initial (trainable tensors)."""
    model.set_weights(init)
    for _ in range(epochs):
        model.train_step(x, y, lr)
    after = model.get_weights()
    return {t.name: after[t.name] - init[t.name] for t in model.manifest.trainable}


def _norm(update: Weights) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in update.values()))


def observe(protection: Protection, updates: Sequence[Weights], rng: np.random.Generator, *,
            seed: int, clip_norm: float | None = None) -> Observation:
    """Apply ``protection`` to the devices' ``updates`` (one, or N for the
    secure sum) and return what the server receives. ``clip_norm`` is the
    local-DP clip when the protection does not fix one."""
    import quantization  # noqa: PLC0415

    shapes = {n: tuple(v.shape) for n, v in updates[0].items()}
    if protection.kind == "secure_sum":
        return _secure_sum(updates, shapes)
    (update,) = updates
    if protection.kind == "local_dp":
        from privacy.accountant import local_epsilon  # noqa: PLC0415
        from privacy.dp import DPConfig, DPMode, add_local_noise  # noqa: PLC0415

        clip = protection.clip_norm or clip_norm
        if clip is None:
            raise AuditError("local DP needs a clip norm")
        dp = DPConfig(protection.noise_multiplier, clip, mode=DPMode.LOCAL)
        noised = add_local_noise(update, dp, rng)
        frame = quantization.encode(noised.update, quantization.CodecSpec.lossless())
        return Observation(quantization.decode(frame.payload, expected=shapes), None,
                           noised.noise_std, 1, len(frame.payload), local_epsilon(dp, 1))
    if protection.kind == "codec":
        spec = quantization.CodecSpec(density=protection.density, bits=protection.bits)
    else:
        spec = quantization.CodecSpec.lossless()
    frame = quantization.encode(update, spec, seed=seed)
    decoded = quantization.decode(frame.payload, expected=shapes)
    mask = None if protection.kind == "dense" else {n: v != 0 for n, v in decoded.items()}
    return Observation(decoded, mask, 0.0, 1, len(frame.payload))


def _secure_sum(updates: Sequence[Weights], shapes: dict[str, tuple[int, ...]]) -> Observation:
    from privacy import secagg  # noqa: PLC0415

    names = list(shapes)
    flats = {f"device-{i:03d}": np.concatenate([np.asarray(u[n], np.float64).ravel()
                                                for n in names])
             for i, u in enumerate(updates)}
    n = len(flats)
    clip = max(float(np.linalg.norm(v)) for v in flats.values()) * 1.01 + 1e-12
    degree = min(n - 1 - (n - 1) % 2, 2 * math.ceil(math.log2(n)))
    degree = max(degree, 2)
    config = secagg.SecAggConfig(degree=degree, threshold=degree // 2 + 1, clip_norm=clip,
                                 max_clients=n, min_clients=3)
    result, stats, _ = secagg.run_local_round(config, flats)
    total: Weights = {}
    at = 0
    for name in names:
        size = math.prod(shapes[name])
        total[name] = result.total[at : at + size].reshape(shapes[name]).astype(np.float32)
        at += size
    up = int(np.mean(list(stats.bytes_up.values())))
    return Observation(total, None, 0.0, n, up)


# --------------------------------------------------------------------------- analytic attack


def first_dense_layer(manifest: Manifest) -> tuple[str, str] | None:
    """(kernel, bias) of a fully connected first layer taking the flat input,
    or None when the model does not start with one (the cnn)."""
    trainable = manifest.trainable
    if len(trainable) < 2:
        return None
    kernel, bias = trainable[0], trainable[1]
    features = int(np.prod(manifest.input.shape))
    if (len(kernel.shape) == 2 and kernel.shape[0] == features and len(bias.shape) == 1
            and bias.shape[0] == kernel.shape[1]):
        return kernel.name, bias.name
    return None


def analytic_attack(obs: Observation, layer: tuple[str, str], count: int) -> np.ndarray:
    """Reconstruct ``count`` inputs from a fully connected first layer's
    update (see the module docstring). Returns (count, features) in [0, 1]."""
    w = np.asarray(obs.update[layer[0]], np.float64)  # (features, units)
    b = np.asarray(obs.update[layer[1]], np.float64)  # (units,)
    sent_w = np.ones(w.shape, bool) if obs.mask is None else obs.mask[layer[0]]
    sent_b = np.ones(b.shape, bool) if obs.mask is None else obs.mask[layer[1]]
    features = w.shape[0]
    noise = obs.noise_std
    floor = max(1e-9 * float(np.abs(b).max(initial=0.0)), 2.0 * noise)
    units = [j for j in np.argsort(-np.abs(b)) if sent_b[j] and abs(b[j]) > floor]
    # Greedy grouping, strongest units first: a unit joins the group whose
    # estimate its ratio matches (RMS over the pixels both have), else opens
    # one. Noise on a ratio scales as noise / |b_j|, so is the tolerance.
    nums: list[np.ndarray] = []
    dens: list[np.ndarray] = []
    members: list[int] = []
    for j in units:
        valid = sent_w[:, j]
        if not valid.any():
            continue
        ratio = np.where(valid, w[:, j] / b[j], 0.0)
        tol = 0.02 + 3.0 * noise / abs(b[j])
        best, best_dist = -1, math.inf
        for k in range(len(nums)):
            both = valid & (dens[k] > 0)
            if both.sum() < max(3, features // 8):
                continue
            estimate = nums[k][both] / dens[k][both]
            dist = float(np.sqrt(np.mean((ratio[both] - estimate) ** 2)))
            if dist < best_dist:
                best, best_dist = k, dist
        weight = b[j] ** 2 * valid
        if best >= 0 and best_dist < tol:
            nums[best] += w[:, j] * b[j] * valid
            dens[best] += weight
            members[best] += 1
        else:
            nums.append(w[:, j] * b[j] * valid)
            dens.append(weight.astype(np.float64))
            members.append(1)
    if not nums:
        return np.zeros((count, features))
    estimates = [np.where(d > 0, n / np.maximum(d, 1e-300), 0.0) for n, d in zip(nums, dens,
                                                                               strict=True)]
    # Rank: groups several units agree on first (a ratio that repeats is one
    # example's, not a mixture), then plausibility (a mixture with weights of
    # both signs leaves [0, 1]), then the evidence Σ Δb².
    def key(k: int) -> tuple[int, float, float]:
        inside = float(np.mean((estimates[k] >= -0.05) & (estimates[k] <= 1.05)))
        return (min(members[k], 2), inside, float(dens[k].sum()))

    order = sorted(range(len(estimates)), key=key, reverse=True)[:count]
    out: np.ndarray = np.clip(np.array([estimates[k] for k in order]), 0.0, 1.0)
    if len(out) < count:  # fewer groups than examples: repeat the best ones
        out = np.concatenate([out, np.repeat(out[:1], count - len(out), axis=0)])
    return out


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class Setting:
    batch_size: int
    epochs: int
    protection: Protection


@dataclass(frozen=True)
class InversionRow:
    """One setting × attack, over all trials."""

    model: str
    batch_size: int
    epochs: int
    protection: str
    attack: str
    trials: int
    examples: int
    psnr_mean: float
    psnr_median: float
    ssim_mean: float
    identified: float
    payload_bytes: float
    epsilon: float | None  # local DP, per upload
    label_accuracy: float | None  # gradient matching's inferred labels
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InversionResult:
    rows: list[InversionRow]
    prior_psnr: float  # the data set's mean image as the guess (no update seen)
    prior_identified: float
    # Per setting: (victims' originals, the best attack's reconstructions),
    # up to 8 images over the first trials, for the figure.
    examples: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict)


GradientAttack = Callable[[Observation, int, Setting], tuple[np.ndarray, np.ndarray]]


def run_inversion(
    model: TrainableModel,
    init: Weights,
    data: ImageData,
    settings: Sequence[Setting],
    *,
    trials: int,
    lr: float,
    seed: int,
    attacks: Sequence[str] = ATTACKS,
    gradient_attack: GradientAttack | None = None,
    progress: Callable[[str], None] | None = None,
) -> InversionResult:
    """Run every setting ``trials`` times on fresh devices (examples drawn
    from ``data``; the same examples for every setting with the same batch
    size and trial) and score each attack. ``gradient_attack`` is the
    TensorFlow attack (:func:`privacy.audit_gradient.make_attack`), needed
    when ``attacks`` includes "gradient"."""
    if trials < 1:
        raise AuditError(f"trials: {trials} must be ≥ 1")
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise AuditError(f"unknown attack(s) {unknown}; expected some of {list(ATTACKS)}")
    if "gradient" in attacks and gradient_attack is None:
        raise AuditError("the gradient-matching attack was asked for but not given")
    manifest = model.manifest
    layer = first_dense_layer(manifest)
    shape_in = tuple(manifest.input.shape)
    n_all = len(data.x)

    def as_input(rows: np.ndarray) -> np.ndarray:
        return rows.reshape((len(rows), *shape_in))

    result = InversionResult([], 0.0, 0.0)
    mean_image = data.x.mean(axis=0)
    prior = quality([(np.repeat(mean_image[None], 64, axis=0), data.x[:64])], data.image_shape,
                    data.x)
    result.prior_psnr, result.prior_identified = prior.psnr_mean, prior.identified
    for setting in settings:
        b, e, prot = setting.batch_size, setting.epochs, setting.protection
        if b < 1 or e < 1:
            raise AuditError(f"batch size {b} and epochs {e} must be ≥ 1")
        per_attack: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {a: [] for a in attacks}
        labels_ok: list[float] = []
        seconds = dict.fromkeys(attacks, 0.0)
        payload: list[int] = []
        epsilon: float | None = None
        clip_for_ldp: float | None = None
        if prot.kind == "local_dp" and prot.clip_norm is None:
            norms = []
            for t in range(trials):
                idx = _victims(seed, t, b, n_all)
                norms.append(_norm(device_update(model, init, as_input(data.x[idx]),
                                                 data.y[idx], epochs=e, lr=lr)))
            clip_for_ldp = float(np.median(norms))
        for t in range(trials):
            idx = _victims(seed, t, b, n_all)
            groups = [idx]
            if prot.kind == "secure_sum":
                rest = np.random.default_rng([seed, t, b, 1]).choice(
                    np.setdiff1d(np.arange(n_all), idx), (prot.devices - 1) * b, replace=False)
                groups += list(rest.reshape(prot.devices - 1, b))
            updates = [device_update(model, init, as_input(data.x[g]), data.y[g], epochs=e,
                                     lr=lr) for g in groups]
            rng = np.random.default_rng([seed, t, b, e, 2])
            obs = observe(prot, updates, rng, seed=seed * 1000 + t, clip_norm=clip_for_ldp)
            payload.append(obs.payload_bytes)
            epsilon = obs.epsilon
            originals = data.x[np.concatenate(groups)]
            count = len(originals)
            for attack in attacks:
                started = time.perf_counter()
                if attack == "analytic":
                    if layer is None:
                        continue
                    rec = analytic_attack(obs, layer, count)
                else:
                    assert gradient_attack is not None
                    rec, labels = gradient_attack(obs, count, setting)
                    labels_ok.append(_label_accuracy(labels, data.y[np.concatenate(groups)]))
                seconds[attack] += time.perf_counter() - started
                order = match(rec, originals)
                per_attack[attack].append((rec[order], originals))
        best_psnr = -math.inf
        for attack in attacks:
            pairs = per_attack[attack]
            if not pairs:
                continue
            q: Quality = quality(pairs, data.image_shape, data.x)
            result.rows.append(InversionRow(
                model=manifest.name, batch_size=b, epochs=e, protection=prot.label,
                attack=attack, trials=trials, examples=q.examples, psnr_mean=q.psnr_mean,
                psnr_median=q.psnr_median, ssim_mean=q.ssim_mean, identified=q.identified,
                payload_bytes=float(np.mean(payload)), epsilon=epsilon,
                label_accuracy=float(np.mean(labels_ok)) if attack == "gradient" else None,
                seconds=seconds[attack] / trials,
            ))
            if q.psnr_mean > best_psnr:
                best_psnr = q.psnr_mean
                # The victims' examples (the first B of each trial), up to 8
                # images: the same examples for every setting of this batch size.
                orig = np.concatenate([o[:b] for _, o in pairs])[:8]
                rec = np.concatenate([r[:b] for r, _ in pairs])[:8]
                result.examples[(b, e, prot.label)] = (orig, rec)
        if progress is not None:
            progress(f"batch {b}, {e} epoch(s), {prot.label}: done")
    return result


def _victims(seed: int, trial: int, batch: int, n: int) -> np.ndarray:
    # Depends on (seed, trial, batch) only: every protection and epoch count
    # of a batch size attacks the same examples.
    chosen: np.ndarray = np.random.default_rng([seed, trial, batch]).choice(n, batch,
                                                                          replace=False)
    return chosen


def _label_accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Fraction of the true label multiset the attacker inferred."""
    p = np.bincount(np.asarray(predicted, np.int64), minlength=int(actual.max()) + 1)
    a = np.bincount(np.asarray(actual, np.int64), minlength=len(p))
    size = max(len(p), len(a))
    p, a = np.pad(p, (0, size - len(p))), np.pad(a, (0, size - len(a)))
    return float(np.minimum(p, a).sum() / len(actual))
