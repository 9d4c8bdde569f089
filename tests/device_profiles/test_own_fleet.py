"""`fedge simulate` for a user's own model and data, from outside the
checkout: built-in fleet names, a 2-D dataset reshaped to the model's input
as the agent does, and `--baseline` (central training with the same
sequential steps and with the same examples). Real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from device_profiles.cli import builtin_fleets, resolve_fleet
from device_profiles.errors import SimulationError
from device_profiles.fleet import load_fleet

REPO = Path(__file__).resolve().parents[2]


def fedge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args], cwd=cwd, capture_output=True, text=True,
        timeout=900, check=False, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_builtin_fleets_resolve_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert {"demo", "scale-10k"} <= set(builtin_fleets())
    assert load_fleet(resolve_fleet("demo")).name == "demo"
    (tmp_path / "demo").mkdir()  # a directory of that name is not a fleet file
    assert load_fleet(resolve_fleet("demo")).name == "demo"
    with pytest.raises(SimulationError, match="built in: demo, scale-10k"):
        resolve_fleet("dmeo")


def test_an_unknown_fleet_name_says_which_are_built_in(tmp_path: Path) -> None:
    r = fedge("simulate", "dmeo", "--out", "r", cwd=tmp_path)
    assert r.returncode == 2 and "no built-in fleet of that name" in r.stderr
    assert "demo" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def model_40x1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_export import export_reference

    out = tmp_path_factory.mktemp("export") / "m"
    export_reference("mlp", out, input_shape=(40, 1), classes=3)
    return out


@pytest.mark.slow
def test_a_2d_dataset_trains_a_40x1_model_and_baselines_are_reported(
    tmp_path: Path, model_40x1: Path
) -> None:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=600, n_features=40, n_informative=10, n_classes=3,
                               n_clusters_per_class=1, random_state=0)
    np.savez(tmp_path / "sensors.npz", x=x.astype(np.float32), y=y.astype(np.int64))
    fleet = {
        "name": "sensors", "seed": 3, "duration_h": 1.0, "target_accuracy": 0.6,
        "devices": [{"profile": "industrial-gateway", "count": 4}],
        "dataset": {"path": "sensors.npz"}, "partition": {"scheme": "iid"},
        "server": {"buffer_size": 2, "client": {"epochs": 2, "batch_size": 16,
                                                "learning_rate": 0.1}},
        "policy": {"require_power": True, "recheck_interval_s": 300},
        "metrics_interval_s": 600,
    }
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    r = fedge("simulate", "fleet.yaml", "--model-dir", str(model_40x1), "--out", "report",
              "--baseline", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "## Central baselines" in summary
    steps = re.search(r"central, same sequential steps: ([\d.]+) \((\d+) steps = (\d+) server "
                      r"steps × ([\d.]+) local steps per update", summary)
    examples = re.search(r"central, same examples: ([\d.]+) \((\d+) examples", summary)
    assert steps and examples, summary
    assert int(steps.group(3)) >= 1 and int(steps.group(2)) >= 1
    assert 0.0 <= float(steps.group(1)) <= 1.0 and 0.0 <= float(examples.group(1)) <= 1.0
    assert float(examples.group(1)) > 0.5  # the central model learns the 3 classes
    assert "federated final accuracy" in r.stdout
