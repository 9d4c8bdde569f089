"""A fleet with ``mode: sync`` + ``secagg`` through the simulator: real
agents, the real service app, real TFLite training, virtual time — and two
devices that vanish after every masked input. Its first round publishes the
same aggregate as plain synchronous FedAvg of the same (clipped) updates, and
the model learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import device_profiles as profiles
import quantization
from aggregation_service import codec
from aggregation_service.blobs import BlobStore
from aggregation_service.store import Store
from device_profiles.fleet import load_fleet
from device_profiles.sim.runner import Prepared, SimOptions, prepare, run_mode
from fedge.manifest import Manifest
from privacy.secagg import SecAggClient, unflatten

CLIP = 1.0
FLEET: dict[str, Any] = {
    "name": "secagg",
    "seed": 11,
    "duration_h": 0.75,
    "devices": [{"profile": "lossless-gateway.yaml", "count": 12}],
    "dataset": {"name": "digits"},
    "partition": {"scheme": "iid"},
    # Dense float32 and the same clip as secagg: the plain run sends the same updates.
    "codec": {"density": 1.0, "clip_norm": CLIP},
    "server": {
        "mode": "sync", "clients_per_round": 12, "over_selection": 1.0,
        "report_deadline_s": 300, "deadline_grace_s": 30, "pace_min_retry_s": 5,
        "client": {"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "max_examples": 64},
    },
    # Mains-powered, always allowed to train: every device is in every round.
    "policy": {"require_power": True, "max_cpu_load": 100, "recheck_interval_s": 60},
    "metrics_interval_s": 600,
}
SECAGG = {"degree": 6, "threshold": 4, "clip_norm": CLIP, "max_clients": 16, "min_clients": 6}


def _prepare(tmp_path: Path, exported_mlp: Path, name: str, server: dict[str, Any]
             ) -> tuple[Prepared, SimOptions]:
    # The built-in gateway without packet loss: a lost request makes an agent
    # back off (drawing from its seeded rng), which would shift its training
    # seed between the two runs and so change the updates being compared.
    builtin = Path(profiles.__file__).parent / "profiles" / "industrial-gateway.yaml"
    gateway = yaml.safe_load(builtin.read_text())
    gateway["network"]["loss_rate"] = 0.0
    (tmp_path / "lossless-gateway.yaml").write_text(yaml.safe_dump(gateway))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**FLEET, "server": {**FLEET["server"], **server}}))
    options = SimOptions(out=tmp_path / name, workdir=tmp_path / f"{name}-work",
                         model_dir=exported_mlp, progress=False, calibration_step_s=2e-4,
                         secagg_dropouts=2 if "secagg" in server else 0)
    return prepare(load_fleet(path), options), options


def _weights(prep: Prepared, version: int) -> dict[str, np.ndarray]:
    data = prep.workdir / "sync" / "service"
    store = Store(data / "fedge.sqlite3")
    store.open()
    try:
        row = store.version(prep.fleet.name, version)
    finally:
        store.shutdown()
    assert row is not None, f"version {version} was not published"
    manifest = Manifest.from_json(row.manifest)
    out = codec.decode_weights(BlobStore(data / "blobs").get(row.weights_sha256), manifest)
    return {t.name: out[t.name] for t in manifest.trainable}


@pytest.mark.slow
def test_a_secagg_fleet_matches_plain_fedavg_and_learns(
    tmp_path: Path, exported_mlp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Record what every device masks (its clipped, flattened update), by round.
    sent: dict[bytes, list[np.ndarray]] = {}
    original = SecAggClient.masked_input

    def recording(self: SecAggClient, shares: Any, vector: np.ndarray) -> Any:
        setup = self._setup
        assert setup is not None
        sent.setdefault(setup.round_id, []).append(np.array(vector, dtype=np.float64))
        return original(self, shares, vector)

    monkeypatch.setattr(SecAggClient, "masked_input", recording)
    prep, options = _prepare(tmp_path, exported_mlp, "secagg", {"secagg": SECAGG})
    result = run_mode(prep, "sync", options)
    versions = result.recorder.versions
    assert len(versions) >= 4, versions  # several rounds, each with two dropouts recovered
    assert versions[0].accuracy is not None and versions[-1].accuracy is not None
    assert versions[-1].accuracy > 0.3 > versions[0].accuracy  # chance is 0.1
    uploads = [u for u in result.recorder.uploads if u.status == 202]
    assert len({u.device for u in uploads}) == 12
    # 4 bytes per parameter on the wire, whatever the codec says.
    params = prep.manifest.num_trainable_parameters
    assert all(4 * params < u.payload_bytes < 4 * params + 4096 for u in uploads)

    # Round 1: all twelve inputs are in the sum, the two devices that vanished
    # after their masked input included. Plain synchronous FedAvg of the same
    # updates: each sent as a dense float32 frame, weighed by its 64 examples.
    first = next(iter(sent.values()))
    assert len(first) == 12
    layout = [(t.name, tuple(t.shape)) for t in prep.manifest.trainable]
    spec = quantization.CodecSpec.from_dict(FLEET["codec"])
    sums = {name: np.zeros(shape) for name, shape in layout}
    for vector in first:
        update = {k: v.astype(np.float32) for k, v in unflatten(vector, layout).items()}
        frame = quantization.encode(update, spec, seed=0).payload
        codec.accumulate(frame, sums, 64.0, dict(layout), None)
    before, secure = _weights(prep, 1), _weights(prep, 2)
    for name, _ in layout:
        plain = before[name] + sums[name] / (64.0 * len(first))
        np.testing.assert_allclose(secure[name], plain, rtol=0, atol=2e-6)
