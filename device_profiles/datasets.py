"""Datasets for simulations and how they are split across devices.

Built in: scikit-learn's bundled ``digits`` (8×8 images flattened to 64
features, scaled to [0, 1]; no download) and ``synthetic``
(``make_classification``); or a user's ``.npz`` with arrays ``x`` and ``y``.
Everything is deterministic for a seed.

Partitioners return, for each device, the indices of its training examples.
Every scheme is disjoint and complete: each training example goes to exactly
one device (a device may get none when there are more devices than examples).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device_profiles.errors import DatasetError


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def _split(
    name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> Dataset:
    if not 0 < test_fraction < 1:
        raise DatasetError(f"dataset {name}: test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = max(1, round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    classes = int(y.max()) + 1 if len(y) else 0
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x[train], dtype=np.float32),
        y_train=np.ascontiguousarray(y[train], dtype=np.int32),
        x_test=np.ascontiguousarray(x[test], dtype=np.float32),
        y_test=np.ascontiguousarray(y[test], dtype=np.int32),
        num_classes=classes,
    )


def load_digits_dataset(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    # sklearn is imported lazily: it is slow to import and only simulations need it.
    from sklearn.datasets import load_digits  # noqa: PLC0415

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0  # pixel values are 0..16
    y = np.asarray(bunch.target, dtype=np.int32)
    return _split("digits", x, y, test_fraction, seed)


def synthetic_dataset(
    *,
    n_samples: int = 5000,
    n_features: int = 64,
    n_classes: int = 10,
    n_informative: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    from sklearn.datasets import make_classification  # noqa: PLC0415

    informative = n_informative or max(2, n_features // 2)
    try:
        x, y = make_classification(
            n_samples=n_samples, n_features=n_features, n_informative=informative,
            n_redundant=0, n_classes=n_classes, n_clusters_per_class=1, class_sep=1.5,
            random_state=seed,
        )
    except ValueError as exc:
        raise DatasetError(f"dataset synthetic: {exc}") from exc
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    return _split("synthetic", x, np.asarray(y), test_fraction, seed)


def npz_dataset(path: Path, *, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A user's npz: ``x`` (N, …) and ``y`` (N,) integer labels; optionally
    ``x_test`` / ``y_test`` (otherwise a split of ``test_fraction`` is held out)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read as .npz: {exc}") from exc
    for key in ("x", "y"):
        if key not in arrays:
            raise DatasetError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y) or y.ndim != 1:
        raise DatasetError(f"{path}: y must be 1-D with one label per row of x "
                           f"(x {x.shape}, y {y.shape})")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise DatasetError(f"{path}: y must hold non-negative integer class labels")
    if not np.all(np.isfinite(x)):
        raise DatasetError(f"{path}: x has NaN or infinite values")
    if "x_test" in arrays and "y_test" in arrays:
        xt, yt = arrays["x_test"], arrays["y_test"]
        classes = int(max(y.max(), yt.max())) + 1
        return Dataset(path.name, x.astype(np.float32), y.astype(np.int32),
                       xt.astype(np.float32), yt.astype(np.int32), classes)
    return _split(path.name, x, y, test_fraction, seed)


# -- partitioning -------------------------------------------------------------------


class Scheme(enum.Enum):
    IID = "iid"  # shuffle, equal shares
    DIRICHLET = "dirichlet"  # label skew: class proportions per device ~ Dir(α)
    SHARDS = "shards"  # sort by label, cut into shards, deal k shards per device
    QUANTITY = "quantity"  # IID labels, sizes proportional to per-device weights


@dataclass(frozen=True)
class PartitionSpec:
    scheme: Scheme = Scheme.IID
    alpha: float = 0.5  # dirichlet concentration
    shards_per_device: int = 2


def partition(
    labels: np.ndarray,
    num_devices: int,
    spec: PartitionSpec,
    *,
    seed: int,
    weights: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """Indices of each device's examples. ``weights`` (one per device) set the
    relative sizes for the quantity scheme."""
    if num_devices < 1:
        raise DatasetError("partition: need at least one device")
    n = len(labels)
    rng = np.random.default_rng(seed)
    if spec.scheme is Scheme.IID:
        return [np.sort(p) for p in np.array_split(rng.permutation(n), num_devices)]
    if spec.scheme is Scheme.QUANTITY:
        if weights is None or len(weights) != num_devices:
            raise DatasetError("partition quantity: need one weight per device")
        w = np.asarray(weights, dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise DatasetError("partition quantity: weights must be ≥ 0 with a positive sum")
        counts = _largest_remainder(w / w.sum() * n, n)
        cuts = np.cumsum(counts)[:-1]
        return [np.sort(p) for p in np.split(rng.permutation(n), cuts)]
    if spec.scheme is Scheme.SHARDS:
        k = spec.shards_per_device
        if k < 1:
            raise DatasetError("partition shards: shards_per_device must be ≥ 1")
        # Stable sort by label, then random tie order, so each shard is (mostly) one class.
        order = rng.permutation(n)
        order = order[np.argsort(labels[order], kind="stable")]
        shards = np.array_split(order, num_devices * k)
        deal = rng.permutation(len(shards))
        return [
            np.sort(np.concatenate([shards[j] for j in deal[d * k:(d + 1) * k]]))
            for d in range(num_devices)
        ]
    # Dirichlet label skew (Hsu et al. 2019): for each class, split its examples
    # across devices in proportions drawn from Dir(α).
    if spec.alpha <= 0:
        raise DatasetError("partition dirichlet: alpha must be > 0")
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(num_devices, spec.alpha))
        counts = _largest_remainder(props * len(idx), len(idx))
        for d, chunk in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
            parts[d].append(chunk)
    empty = np.array([], dtype=np.int64)
    return [np.sort(np.concatenate([empty, *p])).astype(np.int64) for p in parts]


def _largest_remainder(quotas: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, each within 1 of its quota."""
    base: np.ndarray = np.floor(quotas).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        order = np.argsort(-(quotas - base), kind="stable")
        base[order[:short]] += 1
    return base
