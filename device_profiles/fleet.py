"""Fleet files: which devices, which data, which model, codec and server config.

A fleet YAML is parsed once into a frozen :class:`FleetSpec`; every error
names the file and the key. Example (the demo's, shipped in
``device_profiles/fleets/demo.yaml``)::

    name: demo
    seed: 7
    duration_h: 36
    target_accuracy: 0.85
    devices:
      - {profile: raspberry-pi-4, count: 40}      # a built-in name, or a .yaml path
      - {profile: android-midrange, share: 0.5}   # shares fill total - counts
    total: 300
    dataset: {name: digits}                        # digits | synthetic | {path: x.npz}
    partition: {scheme: dirichlet, alpha: 0.5}     # iid | dirichlet | shards | quantity
    model: {reference: mlp, options: {hidden: [64]}}
    codec: {density: 0.1, bits: 8}                 # quantization.CodecSpec as a dict
    server: {mode: async, buffer_size: 10}         # aggregation_service training config
    policy: {require_power: true, unmetered_only: true}   # edge_client policy config
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_profiles.datasets import PartitionSpec, Scheme
from device_profiles.errors import ProfileError
from device_profiles.profile import DeviceProfile, read_yaml, resolve_profile

_TOP = {
    "name", "seed", "duration_h", "target_accuracy", "devices", "total", "dataset",
    "partition", "model", "codec", "server", "policy", "start_utc_hour", "calibration",
    "metrics_interval_s",
}


@dataclass(frozen=True)
class FleetEntry:
    profile: DeviceProfile
    count: int


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # digits | synthetic | npz
    path: Path | None = None
    test_fraction: float = 0.2
    options: Mapping[str, Any] = field(default_factory=dict)  # synthetic: n_samples, …


@dataclass(frozen=True)
class ModelSpec:
    reference: str = "mlp"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetSpec:
    name: str
    source: str
    seed: int
    duration_h: float
    target_accuracy: float
    entries: tuple[FleetEntry, ...]
    dataset: DatasetSpec
    partition: PartitionSpec
    model: ModelSpec
    codec: Mapping[str, Any]
    server: Mapping[str, Any]  # aggregation_service TrainingConfig keys
    policy: Mapping[str, Any]  # edge_client PolicyConfig keys
    start_utc_hour: float = 0.0  # UTC hour at virtual time 0
    metrics_interval_s: float = 900.0  # how often the simulator samples fleet counters

    @property
    def total(self) -> int:
        return sum(e.count for e in self.entries)

    def with_overrides(self, **changes: Any) -> FleetSpec:
        import dataclasses  # noqa: PLC0415 — keeps the module namespace small

        return dataclasses.replace(self, **changes)


def _num(value: Any, source: str, key: str, *, lo: float, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        bound = f"≥ {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise ProfileError(source, key, f"expected a number {bound}, got {value!r}")
    return float(value)


def _int(value: Any, source: str, key: str, *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ProfileError(source, key, f"expected an integer ≥ {lo}, got {value!r}")
    return value


def _map(value: Any, source: str, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ProfileError(source, key, f"expected a mapping, got {type(value).__name__}")
    return value


def fleet_from_dict(data: Any, source: str, base_dir: Path) -> FleetSpec:
    top = _map(data, source, "<top level>")
    if data is None:
        raise ProfileError(source, "<top level>", "the file is empty")
    for key in top:
        if key not in _TOP:
            raise ProfileError(source, str(key), f"unknown key; expected one of {sorted(_TOP)}")
    name = top.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise ProfileError(source, "name", "expected a non-empty string")
    seed = _int(top.get("seed", 0), source, "seed", lo=0)
    duration = _num(top.get("duration_h", 24), source, "duration_h", lo=1 / 60, hi=24 * 365)
    target = _num(top.get("target_accuracy", 0.8), source, "target_accuracy", lo=0, hi=1)
    start_hour = _num(top.get("start_utc_hour", 0), source, "start_utc_hour", lo=0, hi=24)
    interval = _num(top.get("metrics_interval_s", 900), source, "metrics_interval_s", lo=1)

    entries = _entries(top, source, base_dir)
    dataset = _dataset(_map(top.get("dataset", {"name": "digits"}), source, "dataset"),
                       source, base_dir)
    partition = _partition(_map(top.get("partition", {}), source, "partition"), source)
    model_raw = _map(top.get("model", {}), source, "model")
    for key in model_raw:
        if key not in ("reference", "options"):
            raise ProfileError(source, f"model.{key}",
                               "unknown key; expected 'reference' and 'options'")
    reference = model_raw.get("reference", "mlp")
    if not isinstance(reference, str) or not reference:
        raise ProfileError(source, "model.reference", "expected a reference model name (mlp, …)")
    model = ModelSpec(reference, dict(_map(model_raw.get("options"), source, "model.options")))
    codec = dict(_map(top.get("codec", {}), source, "codec"))
    server = dict(_map(top.get("server", {}), source, "server"))
    policy = dict(_map(top.get("policy", {}), source, "policy"))
    _check_codec(codec, source)
    return FleetSpec(
        name=name, source=source, seed=seed, duration_h=duration, target_accuracy=target,
        entries=entries, dataset=dataset, partition=partition, model=model, codec=codec,
        server=server, policy=policy, start_utc_hour=start_hour, metrics_interval_s=interval,
    )


def _entries(top: Mapping[str, Any], source: str, base_dir: Path) -> tuple[FleetEntry, ...]:
    raw = top.get("devices")
    if not isinstance(raw, list) or not raw:
        raise ProfileError(source, "devices",
                           "expected a non-empty list of {profile: NAME, count: N | share: F}")
    counted: list[tuple[DeviceProfile, int | None, float | None]] = []
    for i, raw_item in enumerate(raw):
        key = f"devices[{i}]"
        item = _map(raw_item, source, key)
        for k in item:
            if k not in ("profile", "count", "share"):
                raise ProfileError(source, f"{key}.{k}",
                                   "unknown key; expected 'profile' and 'count' or 'share'")
        ref = item.get("profile")
        if not isinstance(ref, str):
            raise ProfileError(source, f"{key}.profile", "expected a profile name or .yaml path")
        profile = resolve_profile(ref, base_dir, source, f"{key}.profile")
        if ("count" in item) == ("share" in item):
            raise ProfileError(source, key, "give exactly one of 'count' or 'share'")
        if "count" in item:
            counted.append((profile, _int(item["count"], source, f"{key}.count", lo=0), None))
        else:
            counted.append((profile, None,
                            _num(item["share"], source, f"{key}.share", lo=0, hi=1)))
    fixed = sum(c for _, c, _ in counted if c is not None)
    shares = [s for _, _, s in counted if s is not None]
    if shares:
        if "total" not in top:
            raise ProfileError(source, "total", "required when any device entry uses 'share'")
        total = _int(top["total"], source, "total", lo=1)
        share_sum = sum(shares)
        if share_sum <= 0:
            raise ProfileError(source, "devices", "shares must add up to more than 0")
        remaining = total - fixed
        if remaining < 0:
            raise ProfileError(source, "total",
                               f"{total} is less than the {fixed} devices given by 'count'")
        # Largest remainder, so the shares add up to exactly total − counts.
        quotas = [s / share_sum * remaining for s in shares]
        floors = [math.floor(q) for q in quotas]
        order = sorted(range(len(quotas)), key=lambda j: -(quotas[j] - floors[j]))
        for j in order[: remaining - sum(floors)]:
            floors[j] += 1
        share_counts = iter(floors)
        counts = [c if c is not None else next(share_counts) for _, c, _ in counted]
    else:
        if "total" in top and top["total"] != fixed:
            raise ProfileError(source, "total",
                               f"is {top['total']!r} but the counts add up to {fixed}")
        counts = [c for _, c, _ in counted if c is not None]
    entries = tuple(FleetEntry(p, n) for (p, _, _), n in zip(counted, counts, strict=True))
    if sum(e.count for e in entries) < 1:
        raise ProfileError(source, "devices", "the fleet has no devices")
    return entries


def _dataset(raw: Mapping[str, Any], source: str, base_dir: Path) -> DatasetSpec:
    allowed = {"name", "path", "test_fraction", "n_samples", "n_features", "n_classes",
               "n_informative"}
    for k in raw:
        if k not in allowed:
            raise ProfileError(source, f"dataset.{k}", f"unknown key; expected {sorted(allowed)}")
    test_fraction = _num(raw.get("test_fraction", 0.2), source, "dataset.test_fraction",
                         lo=0.01, hi=0.9)
    if "path" in raw:
        path_raw = raw["path"]
        if not isinstance(path_raw, str):
            raise ProfileError(source, "dataset.path", "expected a path to an .npz file")
        path = Path(path_raw) if Path(path_raw).is_absolute() else base_dir / path_raw
        if not path.is_file():
            raise ProfileError(source, "dataset.path", f"{str(path)!r} does not exist")
        return DatasetSpec("npz", path=path, test_fraction=test_fraction)
    kind = raw.get("name", "digits")
    if kind not in ("digits", "synthetic"):
        raise ProfileError(source, "dataset.name",
                           f"expected 'digits' or 'synthetic' (or give 'path'), got {kind!r}")
    options: dict[str, int] = {}
    for k in ("n_samples", "n_features", "n_classes", "n_informative"):
        if k in raw:
            if kind != "synthetic":
                raise ProfileError(source, f"dataset.{k}", "only the synthetic dataset takes it")
            options[k] = _int(raw[k], source, f"dataset.{k}", lo=2)
    return DatasetSpec(kind, test_fraction=test_fraction, options=options)


def _partition(raw: Mapping[str, Any], source: str) -> PartitionSpec:
    for k in raw:
        if k not in ("scheme", "alpha", "shards_per_device"):
            raise ProfileError(source, f"partition.{k}",
                               "unknown key; expected scheme, alpha, shards_per_device")
    scheme_raw = raw.get("scheme", "iid")
    try:
        scheme = Scheme(scheme_raw)
    except ValueError:
        raise ProfileError(source, "partition.scheme",
                           f"expected one of {[s.value for s in Scheme]}, got {scheme_raw!r}"
                           ) from None
    alpha = _num(raw.get("alpha", 0.5), source, "partition.alpha", lo=1e-3, hi=1e6)
    shards = _int(raw.get("shards_per_device", 2), source, "partition.shards_per_device", lo=1)
    if "alpha" in raw and scheme is not Scheme.DIRICHLET:
        raise ProfileError(source, "partition.alpha", "only the dirichlet scheme takes alpha")
    return PartitionSpec(scheme, alpha, shards)


def _check_codec(codec: Mapping[str, Any], source: str) -> None:
    """Validate the codec with quantization's own parser when it is installed."""
    try:
        from quantization import CodecSpec  # noqa: PLC0415 — optional until a run needs it
    except ImportError:
        return
    try:
        CodecSpec.from_dict(dict(codec))
    except ValueError as exc:
        raise ProfileError(source, "codec", str(exc)) from exc


def load_fleet(path: Path | str) -> FleetSpec:
    path = Path(path)
    return fleet_from_dict(read_yaml(path), str(path), path.parent)


def builtin_fleet(name: str) -> Path:
    return Path(__file__).parent / "fleets" / f"{name}.yaml"
