"""Profile loading: every built-in profile is valid and cited; every kind of
bad input fails before a run, naming the file, the key and what is expected."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from device_profiles import ProfileError, builtin_profiles, load_profile
from device_profiles.dist import parse_dist
from device_profiles.profile import PowerSource

PROFILES_DIR = Path(__file__).resolve().parents[2] / "device_profiles" / "profiles"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "device-profiles.md"

REQUIRED = {
    "raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2w", "industrial-gateway",
    "android-flagship", "android-midrange", "android-lowend",
}


def test_builtin_profiles_cover_the_required_device_classes() -> None:
    profiles = builtin_profiles()
    assert set(profiles) >= REQUIRED
    for profile in profiles.values():
        assert profile.compute_speed.typical > 0
        assert len(profile.idle_by_hour) == 24


def test_battery_and_mains_profiles_are_told_apart() -> None:
    profiles = builtin_profiles()
    assert profiles["android-midrange"].power.source is PowerSource.BATTERY
    assert profiles["raspberry-pi-4"].power.source is PowerSource.MAINS
    assert profiles["android-midrange"].power.charge_start_h is not None


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_cites_its_sources(path: Path) -> None:
    """Each number-bearing section carries a source key [S#] or says it is an estimate."""
    text = path.read_text()
    cited = set(re.findall(r"\[S(\d+)\]", text))
    assert cited, f"{path.name} cites no source"
    assert "estimate" in text  # honest about engineering estimates
    docs = DOCS.read_text()
    for number in cited:
        assert f"S{number}" in docs, f"{path.name} cites S{number}, missing from the docs table"


def _write(tmp_path: Path, data: object, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _valid() -> dict[str, object]:
    return yaml.safe_load((PROFILES_DIR / "android-midrange.yaml").read_text())


def _mains() -> dict[str, object]:
    return yaml.safe_load((PROFILES_DIR / "raspberry-pi-4.yaml").read_text())


def _set(data: dict[str, object], dotted: str, value: object) -> dict[str, object]:
    keys = dotted.split(".")
    node: dict[str, object] = data
    for key in keys[:-1]:
        node = node[key]  # type: ignore[assignment]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()

BAD_CASES = [
    # (case id, base, key to change, value, key named in the error, text in the error)
    ("missing-compute", _valid, "compute", _DELETE, "compute", "missing"),
    ("unknown-top-key", _valid, "colour", "red", "colour", "unknown key"),
    ("unknown-network-key", _valid, "network.jitter_ms", 5, "network.jitter_ms", "unknown key"),
    ("bad-dist-kind", _valid, "compute.speed", {"dist": "gamma", "k": 2}, "compute.speed.dist",
     "expected one of"),
    ("lognormal-median-negative", _valid, "compute.speed",
     {"dist": "lognormal", "median": -1, "sigma": 0.1}, "compute.speed.median", "> 0"),
    ("lognormal-missing-sigma", _valid, "compute.speed", {"dist": "lognormal", "median": 1},
     "compute.speed.sigma", "needs"),
    ("speed-zero", _valid, "compute.speed", 0, "compute.speed", "> 0"),
    ("speed-string", _valid, "compute.speed", "fast", "compute.speed", "finite number"),
    ("loss-above-half", _valid, "network.loss_rate", 0.9, "network.loss_rate", "≤ 0.5"),
    ("loss-unbounded-normal", _valid, "network.loss_rate", {"dist": "normal", "mean": 0.01,
     "sd": 0.01}, "network.loss_rate", "≥ 0"),
    ("metered-above-one", _valid, "network.metered_share", 1.5, "network.metered_share",
     "[0, 1]"),
    ("idle-23-hours", _valid, "availability.idle_by_hour", [0.5] * 23,
     "availability.idle_by_hour", "24 probabilities"),
    ("idle-probability-2", _valid, "availability.idle_by_hour", [0.5] * 23 + [2],
     "availability.idle_by_hour[23]", "[0, 1]"),
    ("bad-power-source", _valid, "power.source", "solar", "power.source", "'mains' or 'battery'"),
    ("battery-without-capacity", _valid, "power.battery_mah", _DELETE, "power.battery_mah",
     "missing"),
    ("mains-with-charging", _mains, "power.charge_hours", 5, "power.charge_hours",
     "only battery-powered"),
    ("choice-weights-mismatch", _valid, "memory_mb",
     {"dist": "choice", "values": [1, 2], "weights": [1]}, "memory_mb.weights", "2 non-negative"),
    ("negative-dropout", _valid, "dropout_per_hour", -1, "dropout_per_hour", "≥ 0"),
    ("bad-name", _valid, "name", "a b", "name", "letters"),
    ("min-above-max", _valid, "network.rtt_ms",
     {"dist": "lognormal", "median": 30, "sigma": 0.5, "min": 10, "max": 5},
     "network.rtt_ms.min", "above max"),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_invalid_profile_names_file_and_key(tmp_path: Path, case: tuple[object, ...]) -> None:
    _, base, key, value, named, expected = case
    path = _write(tmp_path, _set(base(), str(key), value))  # type: ignore[operator]
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert info.value.key == named, message
    assert str(expected) in message, message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ncompute: [unclosed\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml: line \d+: invalid YAML"):
        load_profile(path)


def test_missing_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ProfileError, match="expected a mapping"):
        load_profile(path)


def test_distributions_sample_within_bounds() -> None:
    dist = parse_dist({"dist": "normal", "mean": 5, "sd": 10, "min": 0, "max": 8}, "f", "k")
    rng = np.random.default_rng(0)
    values = [dist.sample(rng) for _ in range(500)]
    assert min(values) >= 0 and max(values) <= 8
    choice = parse_dist({"dist": "choice", "values": [1, 2], "weights": [3, 1]}, "f", "k")
    picks = [choice.sample(rng) for _ in range(2000)]
    assert 0.7 < picks.count(1.0) / len(picks) < 0.8
