"""Unit tests of the pieces: update log, blob store, optimizers, pacing,
config parsing, metrics exposition, sync rounds."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from aggregation_service.blobs import BlobStore
from aggregation_service.config import ServiceConfig, TrainingConfig, load_config
from aggregation_service.errors import ConfigError, StorageError
from aggregation_service.metrics import Metrics
from aggregation_service.optimizers import FedAdam, FedAvg, FedAvgM, FedYogi
from aggregation_service.pacing import steer
from aggregation_service.strategies.fedbuff import staleness_weight
from aggregation_service.updatelog import UpdateLog
from tests.aggregation_service.conftest import SHAPES, EnvFactory, frame

# --- update log -----------------------------------------------------------------------------


async def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path / "log")
    log.open()
    futures = [log.append({"i": i}, b"x" * 100)[2] for i in range(200)]
    await asyncio.gather(*futures)
    assert log.records_written == 200
    assert log.fsyncs < 200  # appends queued while an fsync ran share the next one
    assert [r.header["i"] for r in log.replay(0)] == list(range(200))
    log.close()


async def test_segments_roll_and_prune(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path / "log", segment_bytes=1 << 16)
    log.open()
    ends = []
    for i in range(40):
        _, end, fut = log.append({"i": i}, bytes(5000))
        await fut
        ends.append(end)
    assert len(list((tmp_path / "log").glob("*.log"))) > 2
    removed = log.prune(ends[29])
    assert removed >= 1
    assert [r.header["i"] for r in log.replay(ends[29])] == list(range(30, 40))
    log.close()
    reopened = UpdateLog(tmp_path / "log", segment_bytes=1 << 16)
    assert reopened.open() == ends[-1]
    assert [r.header["i"] for r in reopened.replay(ends[29])] == list(range(30, 40))
    reopened.close()


async def test_corruption_before_the_tail_stops_recovery(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path / "log", segment_bytes=1 << 16)
    log.open()
    for i in range(30):
        await log.append({"i": i}, bytes(5000))[2]
    log.close()
    first = sorted((tmp_path / "log").glob("*.log"))[0]
    data = bytearray(first.read_bytes())
    data[100] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="corrupt"):
        UpdateLog(tmp_path / "log").open()


async def test_failed_write_fails_waiters_and_later_appends(tmp_path: Path) -> None:
    log = UpdateLog(tmp_path / "log")
    log.open()

    def broken(batch: object) -> None:
        raise OSError(28, "No space left on device")

    log._write_batch = broken  # type: ignore[method-assign,assignment]
    _, _, fut = log.append({"i": 0}, b"x")
    with pytest.raises(StorageError, match="No space"):
        await fut
    with pytest.raises(StorageError):
        log.append({"i": 1}, b"x")
    log.close()


# --- blobs ------------------------------------------------------------------------------------


def test_blob_corruption_is_detected_on_first_read_after_start(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"weights" * 100)
    assert store.get(digest) == b"weights" * 100
    store.path(digest).write_bytes(b"bit rot")
    assert store.get(digest) == b"bit rot"  # verified once already by this process
    with pytest.raises(StorageError, match="corrupt"):
        BlobStore(tmp_path).get(digest)  # a restarted process checks again
    with pytest.raises(StorageError, match="missing"):
        store.get("0" * 64)


async def test_corrupt_blob_is_a_503_not_a_500(make_env: EnvFactory, tmp_path: Path) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    row = await env.service.version_row("m", 1)
    env.service.blobs.path(row.weights_sha256).write_bytes(b"rot")
    env.service.blobs._verified.clear()  # as after a restart
    r = await env.client.get("/v1/models/m/versions/1/weights", headers=device.auth)
    assert r.status == 503
    assert (await r.json())["error"]["code"] == "storage_unavailable"


# --- optimizers -------------------------------------------------------------------------------

W = {"a": np.array([1.0, -2.0], np.float32)}
D = {"a": np.array([0.5, 0.25])}


def test_fedavg_step() -> None:
    new, state = FedAvg(0.5).step(W, D, {})
    np.testing.assert_allclose(new["a"], [1.25, -1.875])
    assert new["a"].dtype == np.float32 and state == {}


def test_fedavgm_accumulates_momentum() -> None:
    opt = FedAvgM(1.0, 0.9)
    w1, s1 = opt.step(W, D, {})
    w2, s2 = opt.step(w1, D, s1)
    np.testing.assert_allclose(s2["m/a"], 0.9 * D["a"] + D["a"])
    np.testing.assert_allclose(w2["a"], W["a"] + D["a"] + 1.9 * D["a"], rtol=1e-6)


def test_fedadam_and_fedyogi_second_moments() -> None:
    adam, yogi = FedAdam(0.1, 0.9, 0.99, 1e-3), FedYogi(0.1, 0.9, 0.99, 1e-3)
    wa, sa = adam.step(W, D, {})
    m = 0.1 * D["a"]
    v = 0.01 * D["a"] ** 2
    np.testing.assert_allclose(sa["v/a"], v)
    np.testing.assert_allclose(wa["a"], W["a"] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-6)
    _, sy = yogi.step(W, D, {})
    # From v = 0: Yogi adds (1 − β2)·Δ² (sign(0 − Δ²) = −1), same as Adam here …
    np.testing.assert_allclose(sy["v/a"], v)
    # … but with v above Δ² it shrinks additively instead of decaying.
    big = {"v/a": np.array([1.0, 1.0]), "m/a": np.zeros(2)}
    _, sy2 = yogi.step(W, D, big)
    np.testing.assert_allclose(sy2["v/a"], 1.0 - 0.01 * D["a"] ** 2)


def test_staleness_weight() -> None:
    assert staleness_weight(10, 0, 0.5) == 10.0
    assert staleness_weight(10, 3, 0.5) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        staleness_weight(0, 0, 0.5)


# --- pacing -------------------------------------------------------------------------------


def test_pace_steering_admits_in_proportion_and_jitters() -> None:
    rng = random.Random(3)
    kwargs = {"report_deadline_s": 600.0, "min_retry_s": 30.0, "max_retry_s": 900.0, "rng": rng}
    assert all(steer(0, 10, **kwargs).admit for _ in range(50))  # type: ignore[arg-type]
    full = [steer(10, 10, **kwargs) for _ in range(50)]  # type: ignore[arg-type]
    assert not any(d.admit for d in full)
    assert len({d.retry_after for d in full}) == 50
    assert all(150.0 <= d.retry_after <= 450.0 for d in full)  # 300 s × U(0.5, 1.5)
    half = sum(steer(5, 10, **kwargs).admit for _ in range(2000))  # type: ignore[arg-type]
    assert 850 < half < 1150


# --- config -------------------------------------------------------------------------------


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cases = {
        "port: 99999\n": "config.port",
        "training:\n  buffer_size: -1\n": "training.buffer_size",
        "training:\n  optimizer:\n    learning_rate: 0\n": "training.optimizer.learning_rate",
        "rate_limit:\n  burst: x\n": "rate_limit.burst",
        "tls_cert: a.pem\n": "tls_cert/tls_key",
        "bogus: 1\n": "bogus",
        "- a list\n": "top level",
        "training: [1]\n": "training",
        "operator_token: short\n": "operator_token",
        "training:\n  min_reports: 50\n": "min_reports",
    }
    for text, key in cases.items():
        path = tmp_path / "server.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
            load_config(path, data_dir=tmp_path, environ={})
    path.write_text("training: {buffer_size: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, data_dir=tmp_path, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", data_dir=tmp_path, environ={})
    with pytest.raises(ConfigError, match="data_dir"):
        ServiceConfig.from_dict({})


def test_config_env_token_and_round_trip(tmp_path: Path) -> None:
    config = load_config(None, data_dir=tmp_path, environ={"FEDGE_OPERATOR_TOKEN": "t" * 20})
    assert config.operator_token == "t" * 20
    training = TrainingConfig.from_dict({"mode": "sync", "codec": {"density": 0.1, "bits": 4}})
    assert TrainingConfig.from_dict(training.to_dict()) == training
    with pytest.raises(ConfigError):
        training.patched([1, 2])


# --- metrics ------------------------------------------------------------------------------


def test_prometheus_exposition() -> None:
    m = Metrics()
    m.updates_rejected.inc('we"ird\nreason')
    m.ack_seconds.observe(0.003)
    m.ack_seconds.observe(20.0)
    text = m.render()
    assert "# TYPE fedge_ack_seconds histogram" in text
    assert 'fedge_ack_seconds_bucket{le="0.005"} 1' in text
    assert 'fedge_ack_seconds_bucket{le="+Inf"} 2' in text
    assert "fedge_ack_seconds_count 2" in text
    assert 'reason="we\\"ird\\nreason"' in text


# --- sync rounds --------------------------------------------------------------------------


async def test_sync_round_over_selects_aggregates_and_abandons(make_env: EnvFactory) -> None:
    env = await make_env(
        mode="sync", clients_per_round=2, over_selection=1.5, min_reports=2, report_deadline_s=100.0
    )
    devices = await env.enroll(5)
    selected = devices[:3]
    plans = [await env.plan(d) for d in selected]  # ⌈2 × 1.5⌉ selected
    answer = await env.checkin(devices[3])
    assert answer["action"] == "wait" and answer["retry_after"] >= 100.0 - 1e-6
    assert len({p["deadline_at"] for p in plans}) == 1  # one round, one deadline
    delta = {k: np.full(s, 0.3, np.float32) for k, s in SHAPES.items()}
    for d, p in zip(selected[:2], plans[:2], strict=True):
        assert (await env.upload(d, p, frame(delta)))[0] == 202
    await env.service.wait_idle()
    assert env.service.runtime("m").training.version == 2  # closed early: enough reports
    # The third selected device is late: its round has closed.
    status, body = await env.upload(selected[2], plans[2], frame(delta))
    assert (status, body["error"]["code"]) == (409, "deadline_passed")
    # Next round: one report only, then the deadline passes → abandoned.
    plan = await env.plan(devices[4])
    assert plan["version"] == 2
    assert (await env.upload(devices[4], plan, frame(delta)))[0] == 202
    env.clock.advance(101.0)
    for _ in range(20):
        await asyncio.sleep(0.01)
    await env.service.wait_idle()
    info = await (await env.client.get("/v1/models/m", headers=env.op)).json()
    assert info["training_version"] == 2 and info["rounds_abandoned"] == 1
    text = await (await env.client.get("/metrics")).text()
    assert 'fedge_rounds_abandoned_total{model="m"} 1' in text
