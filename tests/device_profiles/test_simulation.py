"""End to end: real agents, the real service app and real TFLite training on
a virtual clock. Small and fast: a handful of mains-powered devices for a
virtual hour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from device_profiles.fleet import load_fleet
from device_profiles.sim.runner import SimOptions
from device_profiles.simulate import simulate

FLEET = {
    "name": "e2e",
    "seed": 5,
    "duration_h": 1.0,
    "target_accuracy": 0.5,
    "devices": [{"profile": "raspberry-pi-4", "count": 3},
                {"profile": "industrial-gateway", "count": 3}],
    "dataset": {"name": "digits"},
    "partition": {"scheme": "iid"},
    "codec": {"density": 0.25, "bits": 8},
    "server": {"buffer_size": 3, "client": {"epochs": 2, "batch_size": 16,
                                            "learning_rate": 0.1}},
    "policy": {"require_power": True, "recheck_interval_s": 300},
    "metrics_interval_s": 600,
}


def _run(tmp_path: Path, exported_mlp: Path, name: str, **options: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(FLEET))
    out = tmp_path / name
    simulate(load_fleet(path), SimOptions(
        out=out, workdir=tmp_path / f"{name}-work", model_dir=exported_mlp, progress=False,
        calibration_step_s=2e-4, **options))  # type: ignore[arg-type]
    return out


@pytest.mark.slow
def test_a_small_fleet_learns_and_repeats_exactly(tmp_path: Path, exported_mlp: Path) -> None:
    first = _run(tmp_path, exported_mlp, "a")
    rows = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    versions = [r for r in rows if r["type"] == "version"]
    uploads = [r for r in rows if r["type"] == "upload" and r["status"] == 202]
    assert len(versions) >= 3 and uploads
    assert versions[0]["accuracy"] < 0.3  # the untrained model is near chance (0.1)
    assert versions[-1]["accuracy"] > 0.5  # real training through the real service
    assert {u["profile"] for u in uploads} == {"raspberry-pi-4", "industrial-gateway"}
    for plot in ("accuracy", "bytes", "devices", "staleness", "contribution"):
        assert (first / f"{plot}.png").stat().st_size > 1000
    summary = (first / "summary.md").read_text()
    assert "time to 50%" in summary

    # Same fleet, same seed: identical metrics (only real-time figures may differ).
    second = _run(tmp_path, exported_mlp, "b")
    for name in ("versions.csv", "uploads.csv", "metrics.csv"):
        assert (first / name).read_text() == (second / name).read_text(), name


@pytest.mark.slow
def test_training_on_a_local_ray_worker_gives_the_same_run(
    tmp_path: Path, exported_mlp: Path
) -> None:
    """The same fleet with training on a local Ray instance (one worker):
    every batch goes through Ray, and the run matches the in-process one."""
    small = {**FLEET, "duration_h": 0.5,
                   "devices": [{"profile": "raspberry-pi-4", "count": 2}]}
    results = []
    for name, ray in (("local", False), ("ray", True)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(small))
        report = simulate(load_fleet(path), SimOptions(
            out=tmp_path / name, workdir=tmp_path / f"{name}-work", model_dir=exported_mlp,
            progress=False, calibration_step_s=2e-4, ray=ray, ray_workers=1))
        results.append(report)
    local, ray_run = (r.results[0].recorder for r in results)
    assert ray_run.extra["ray_calls"] == ray_run.train_steps > 0
    assert "ray_calls" not in local.extra
    assert (tmp_path / "local" / "versions.csv").read_text() == (
        tmp_path / "ray" / "versions.csv").read_text()
