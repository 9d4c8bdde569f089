"""Fleet files: valid mixes, and bad or impossible ones refused before a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from device_profiles import DatasetError, FleetError, ProfileError
from device_profiles.datasets import Scheme
from device_profiles.fleet import builtin_fleet, load_fleet
from device_profiles.sim.runner import SimOptions, export_model, load_dataset, prepare


def _fleet(tmp_path: Path, **changes: object) -> Path:
    data: dict[str, object] = {
        "name": "t", "seed": 1, "duration_h": 2,
        "devices": [{"profile": "raspberry-pi-4", "count": 3},
                    {"profile": "android-midrange", "share": 0.5},
                    {"profile": "android-lowend", "share": 0.5}],
        "total": 10,
        "dataset": {"name": "digits"},
        "partition": {"scheme": "dirichlet", "alpha": 0.5},
        "codec": {"density": 0.1, "bits": 8},
        "server": {"buffer_size": 4},
        "policy": {"require_power": True},
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_counts_and_shares_add_up_to_the_total(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path))
    assert fleet.total == 10
    assert [(e.profile.name, e.count) for e in fleet.entries] == [
        ("raspberry-pi-4", 3), ("android-midrange", 4), ("android-lowend", 3)]
    assert fleet.partition.scheme is Scheme.DIRICHLET


def test_the_demo_fleet_is_valid() -> None:
    fleet = load_fleet(builtin_fleet("demo"))
    assert 200 <= fleet.total <= 1000
    assert len({e.profile.name for e in fleet.entries}) >= 5


def test_a_profile_file_next_to_the_fleet_is_found(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "device_profiles" / "profiles"
    custom = yaml.safe_load((src / "raspberry-pi-5.yaml").read_text())
    custom["name"] = "my-board"
    (tmp_path / "my-board.yaml").write_text(yaml.safe_dump(custom))
    fleet = load_fleet(_fleet(tmp_path, devices=[{"profile": "my-board.yaml", "count": 2}],
                              total=None))
    assert fleet.entries[0].profile.name == "my-board"


BAD = [
    ("unknown-profile", {"devices": [{"profile": "nokia-3310", "count": 1}], "total": None},
     "devices[0].profile", "unknown profile"),
    ("count-and-share", {"devices": [{"profile": "raspberry-pi-4", "count": 1, "share": 0.5}]},
     "devices[0]", "exactly one"),
    ("share-without-total", {"total": None}, "total", "required when"),
    ("total-below-counts", {"total": 2}, "total", "less than"),
    ("no-devices", {"devices": []}, "devices", "non-empty list"),
    ("negative-count", {"devices": [{"profile": "raspberry-pi-4", "count": -1}], "total": None},
     "devices[0].count", "integer ≥ 0"),
    ("bad-scheme", {"partition": {"scheme": "random"}}, "partition.scheme", "expected one of"),
    ("alpha-with-iid", {"partition": {"scheme": "iid", "alpha": 1}}, "partition.alpha",
     "only the dirichlet"),
    ("bad-dataset", {"dataset": {"name": "mnist"}}, "dataset.name", "'digits' or 'synthetic'"),
    ("missing-npz", {"dataset": {"path": "nope.npz"}}, "dataset.path", "does not exist"),
    ("negative-duration", {"duration_h": -1}, "duration_h", "expected a number"),
    ("target-above-one", {"target_accuracy": 1.5}, "target_accuracy", "in [0, 1]"),
    ("unknown-key", {"colour": "red"}, "colour", "unknown key"),
    ("bad-codec", {"codec": {"density": 7}}, "codec", "density"),
]


@pytest.mark.parametrize(("changes", "key", "expected"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_invalid_fleet_names_file_and_key(
    tmp_path: Path, changes: dict[str, object], key: str, expected: str
) -> None:
    path = _fleet(tmp_path, **changes)
    with pytest.raises(ProfileError) as info:
        load_fleet(path)
    assert str(info.value).startswith(str(path))
    assert info.value.key == key
    assert expected in str(info.value)


def test_model_input_shape_must_match_the_dataset(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path, model={"reference": "mlp",
                                               "options": {"input_shape": [28, 28, 1]}}))
    with pytest.raises(FleetError, match=r"input_shape \(28, 28, 1\) does not match .*\(64,\)"):
        export_model(fleet, load_dataset(fleet), tmp_path / "model")


def test_a_fleet_nobody_can_train_in_is_refused(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path, server={"eligibility": {"min_memory_mb": 1_000_000}}))
    with pytest.raises(FleetError, match="no device is ever eligible"):
        prepare(fleet, SimOptions(out=tmp_path / "out", workdir=tmp_path / "w",
                                  calibration_step_s=1e-4))


def test_bad_server_and_policy_keys_are_refused_with_their_names(tmp_path: Path) -> None:
    fleet = load_fleet(_fleet(tmp_path, server={"buffer_size": 0}))
    with pytest.raises(FleetError, match=r"fleet\.yaml: .*buffer_size"):
        prepare(fleet, SimOptions(out=tmp_path / "o", workdir=tmp_path / "w",
                                  calibration_step_s=1e-4))
    fleet = load_fleet(_fleet(tmp_path, policy={"min_battery": 20}))
    with pytest.raises(FleetError, match=r"policy\.min_battery"):
        prepare(fleet, SimOptions(out=tmp_path / "o", workdir=tmp_path / "w",
                                  calibration_step_s=1e-4))


def test_npz_dataset_is_loaded_and_checked(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", x=np.zeros((50, 4), np.float32), y=np.arange(50) % 3)
    fleet = load_fleet(_fleet(tmp_path, dataset={"path": "data.npz"}))
    data = load_dataset(fleet)
    assert data.input_shape == (4,) and data.num_classes == 3
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 4)), labels=np.arange(5))
    fleet = load_fleet(_fleet(tmp_path, dataset={"path": "bad.npz"}))
    with pytest.raises(DatasetError, match=r"missing array .y."):
        load_dataset(fleet)
