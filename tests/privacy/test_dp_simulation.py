"""DP through the whole fleet simulator: real agents (clip bits, local noise
from the plan), the real service and real TFLite training. The report's ε
is the service's own, per version and cumulative, in metrics.jsonl,
versions.csv and summary.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_profiles.fleet import load_fleet
from device_profiles.sim.runner import SimOptions
from device_profiles.simulate import simulate
from privacy.accountant import local_epsilon
from privacy.dp import DPConfig

FLEET: dict[str, Any] = {
    "name": "private",
    "seed": 5,
    "duration_h": 1.0,
    "target_accuracy": 0.5,
    "devices": [{"profile": "raspberry-pi-4", "count": 3},
                {"profile": "industrial-gateway", "count": 3}],
    "dataset": {"name": "digits"},
    "partition": {"scheme": "iid"},
    "codec": {"density": 1.0, "bits": 8, "clip_norm": 1.0},
    "server": {
        "buffer_size": 3,
        "client": {"epochs": 2, "batch_size": 16, "learning_rate": 0.1},
        "dp": {
            "noise_multiplier": 0.3, "clip_norm": 1.0, "delta": 1e-5, "population": 6,
            "adaptive": {"target_quantile": 0.5, "learning_rate": 0.2, "count_noise_std": 0.5},
        },
    },
    "policy": {"require_power": True, "recheck_interval_s": 300},
    "metrics_interval_s": 600,
}


def run(tmp_path: Path, model: Path, name: str, fleet: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(fleet))
    out = tmp_path / name
    simulate(load_fleet(path), SimOptions(
        out=out, workdir=tmp_path / f"{name}-work", model_dir=model, progress=False,
        calibration_step_s=2e-4))
    return out


def versions(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == "version"]


@pytest.mark.slow
def test_adaptive_dp_simulation_reports_epsilon_per_version(
    tmp_path: Path, exported_mlp: Path
) -> None:
    out = run(tmp_path, exported_mlp, "adaptive", FLEET)
    rows = versions(out)
    private = [r for r in rows if r["epsilon"] is not None]
    assert rows[0]["epsilon"] is None  # the pushed version spent nothing
    assert len(private) >= 3  # the agents' clip bits were accepted: versions were published
    eps = [r["epsilon"] for r in private]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    assert all(r["step_epsilon"] > 0 and r["delta"] == 1e-5 for r in private)
    assert len({r["clip_norm"] for r in private}) > 1  # adaptive: the bound moved
    with (out / "versions.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert float(csv_rows[-1]["epsilon"]) == pytest.approx(eps[-1])
    summary = (out / "summary.md").read_text()
    assert "## Differential privacy (async)" in summary
    assert f"Cumulative **ε = {eps[-1]:.3g}** at δ = 1e-05" in summary
    assert (out / "privacy.png").stat().st_size > 1000


@pytest.mark.slow
def test_local_dp_simulation_reports_the_per_device_epsilon(
    tmp_path: Path, exported_mlp: Path
) -> None:
    dp = {"noise_multiplier": 0.3, "clip_norm": 1.0, "delta": 1e-5, "mode": "local"}
    fleet = {**FLEET, "codec": {"density": 1.0, "bits": 8},
             "server": {**FLEET["server"], "dp": dp}}
    out = run(tmp_path, exported_mlp, "local", fleet)
    private = [r for r in versions(out) if r["epsilon"] is not None]
    assert len(private) >= 2
    config = DPConfig.from_dict(dp)
    one = local_epsilon(config, 1)
    assert all(r["step_epsilon"] == pytest.approx(one) for r in private)
    # Cumulative ε is the device with the most releases: some k with ε(k) = reported.
    for r in private:
        assert any(r["epsilon"] == pytest.approx(local_epsilon(config, k)) for k in range(1, 40))
    assert "## Differential privacy (async)" in (out / "summary.md").read_text()
