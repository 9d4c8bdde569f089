"""Partitioners: disjoint, complete, deterministic, and skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_profiles.datasets import PartitionSpec, Scheme, partition
from device_profiles.errors import DatasetError

SPECS = [
    PartitionSpec(Scheme.IID),
    PartitionSpec(Scheme.DIRICHLET, alpha=0.3),
    PartitionSpec(Scheme.SHARDS, shards_per_device=2),
    PartitionSpec(Scheme.QUANTITY),
]


def _labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 400),
    devices=st.integers(1, 60),
    classes=st.integers(1, 10),
    seed=st.integers(0, 2**16),
    spec=st.sampled_from(SPECS),
)
def test_every_scheme_is_disjoint_and_complete(
    n: int, devices: int, classes: int, seed: int, spec: PartitionSpec
) -> None:
    labels = _labels(n, classes, seed)
    weights = list(np.random.default_rng(seed).lognormal(0, 1, devices))
    parts = partition(labels, devices, spec, seed=seed, weights=weights)
    assert len(parts) == devices
    joined = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    assert len(joined) == n  # complete and, with the next line, disjoint
    assert len(np.unique(joined)) == n
    again = partition(labels, devices, spec, seed=seed, weights=weights)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    entropies = []
    for p in parts:
        if len(p) == 0:
            continue
        counts = np.bincount(labels[p], minlength=10) / len(p)
        nz = counts[counts > 0]
        entropies.append(float(-(nz * np.log(nz)).sum()))
    return float(np.mean(entropies))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = _labels(5000, 10, 0)
    iid = _mean_label_entropy(labels, partition(labels, 50, PartitionSpec(), seed=1))
    mild = _mean_label_entropy(
        labels, partition(labels, 50, PartitionSpec(Scheme.DIRICHLET, alpha=10.0), seed=1))
    strong = _mean_label_entropy(
        labels, partition(labels, 50, PartitionSpec(Scheme.DIRICHLET, alpha=0.1), seed=1))
    assert strong < mild < iid + 1e-9
    assert strong < 0.6 * iid


def test_shards_give_each_device_few_classes() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 50, PartitionSpec(Scheme.SHARDS, shards_per_device=2), seed=3)
    assert max(len(np.unique(labels[p])) for p in parts) <= 4
    assert all(len(p) == 20 for p in parts)


def test_quantity_skew_follows_the_weights() -> None:
    labels = _labels(1000, 10, 2)
    weights = [1.0, 2.0, 3.0, 4.0]
    sizes = [len(p) for p in partition(labels, 4, PartitionSpec(Scheme.QUANTITY), seed=0,
                                       weights=weights)]
    assert sizes == [100, 200, 300, 400]


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        (PartitionSpec(Scheme.QUANTITY), None, "one weight per device"),
        (PartitionSpec(Scheme.QUANTITY), [0.0, 0.0], "positive sum"),
        (PartitionSpec(Scheme.DIRICHLET, alpha=0.0), None, "alpha must be > 0"),
        (PartitionSpec(Scheme.SHARDS, shards_per_device=0), None, "≥ 1"),
    ],
)
def test_bad_partition_arguments_are_refused(
    spec: PartitionSpec, weights: list[float] | None, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        partition(_labels(10, 2, 0), 2, spec, seed=0, weights=weights)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.scheme.value)
def test_no_examples_gives_every_device_an_empty_part(spec: PartitionSpec) -> None:
    # Regression: the dirichlet scheme concatenated an empty list.
    parts = partition(np.array([], dtype=np.int64), 3, spec, seed=0, weights=[1.0, 1.0, 1.0])
    assert [len(p) for p in parts] == [0, 0, 0]
