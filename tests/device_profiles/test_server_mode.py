"""`--server URL`: the simulated fleet drives a real `fedge serve` process on
loopback over HTTP (real sockets, the service on its own real clock) instead
of the in-process app."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml

from device_profiles.fleet import load_fleet
from device_profiles.sim.runner import SimOptions
from device_profiles.simulate import simulate
from edge_client.transport import HttpTransport
from tests.aggregation_service.conftest import OPERATOR
from tests.aggregation_service.realserver import start_server, stop_server, write_config

FLEET = {
    "name": "over-http",
    "seed": 3,
    "duration_h": 1.0,
    "devices": [{"profile": "raspberry-pi-4", "count": 3}],
    "dataset": {"name": "digits"},
    "partition": {"scheme": "iid"},
    "codec": {"density": 0.25, "bits": 8},
    "server": {"buffer_size": 2, "pace_min_retry_s": 5, "pace_max_retry_s": 60,
               "client": {"epochs": 1, "batch_size": 16, "learning_rate": 0.1,
                          "max_examples": 64}},
    # Always allowed to train: the test is about the transport, not the profile.
    "policy": {"require_power": True, "max_cpu_load": 100, "recheck_interval_s": 300},
    "metrics_interval_s": 900,
}


async def _model(url: str, name: str) -> dict[str, object]:
    transport = HttpTransport(url)
    try:
        resp = await transport.request("GET", f"/v1/models/{name}",
                                       headers={"Authorization": f"Bearer {OPERATOR}"})
        assert resp.status == 200, resp.body
        return dict(json.loads(resp.body))
    finally:
        await transport.close()


@pytest.mark.slow
def test_a_fleet_trains_against_a_real_fedge_serve_process(tmp_path: Path,
                                                          exported_mlp: Path) -> None:
    data = tmp_path / "service"
    server = start_server(data, write_config(tmp_path / "serve.yaml", data), tmp_path)
    try:
        path = tmp_path / "fleet.yaml"
        path.write_text(yaml.safe_dump(FLEET))
        report = simulate(load_fleet(path), SimOptions(
            out=tmp_path / "out", workdir=tmp_path / "work", model_dir=exported_mlp,
            server_url=server.url, operator_token=OPERATOR, progress=False,
            calibration_step_s=2e-4))
        rec = report.results[0].recorder
        accepted = [u for u in rec.uploads if u.status == 202]
        assert len(accepted) >= 2 and rec.checkins > 0
        assert {u.device for u in accepted} <= {f"raspberry-pi-4-{i:05d}" for i in range(3)}
        # The process aggregated them (buffer_size 2): a new version, published
        # on the server's own schedule.
        for _ in range(100):
            info = asyncio.run(_model(server.url, "over-http"))
            if int(str(info["training_version"])) >= 2:
                break
            time.sleep(0.1)
        assert int(str(info["training_version"])) >= 2, info
        assert (tmp_path / "out" / "summary.md").is_file()
    finally:
        assert stop_server(server) == 0
