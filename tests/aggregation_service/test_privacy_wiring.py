"""privacy/ wired into the service: config refusals, DP noise + accounting at
publication (and its replay after a crash), robust screening at intake."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import quantization
from aggregation_service import codec, privacy_hooks
from aggregation_service.config import DPSettings
from aggregation_service.service import AggregationService, UpdateRequest
from device_profiles.errors import FleetError
from device_profiles.fleet import load_fleet
from device_profiles.sim.runner import training_config
from fedge.clock import ManualClock
from privacy.accountant import PrivacyAccountant
from privacy.dp import DPConfig
from tests.aggregation_service.conftest import (
    SHAPES,
    EnvFactory,
    frame,
    initial_weights,
    make_config,
    synthetic_manifest,
)

K = 3
CLIP = 1.0
CODEC = {"density": 1.0, "bits": 8, "clip_norm": CLIP}
DP = {"noise_multiplier": 1.0, "clip_norm": CLIP, "delta": 1e-5}


# --- configuration refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"dp": {"noise_multiplier": 1.0}}, "noise without clipping is refused"),
        ({"dp": {**DP, "sigma": 2}}, "unknown key(s) ['sigma']"),
        ({"dp": DP}, "codec.clip_norm: not set"),  # the codec does not clip
        ({"dp": DP, "codec": {**CODEC, "clip_norm": 2.0}}, "is above dp.clip_norm"),
        ({"dp": {**DP, "population": 0}, "codec": CODEC}, "dp.population"),
        ({"dp": DP, "codec": CODEC, "max_update_norm": 5.0}, "max_update_norm: 5 is above"),
        (
            {"secagg": {"degree": 2, "threshold": 2, "clip_norm": 1.0, "max_clients": 8}},
            "secure aggregation needs synchronous rounds",
        ),
        ({"secagg": True, "mode": "sync"}, "secagg: expected a mapping with degree"),
        ({"trim_fraction": 0.6}, "trim_fraction"),
        ({"robust": {"warmup": "ten"}}, "robust.warmup: expected a number"),
        ({"robust": {"bogus": 1}}, "unknown key(s) ['bogus']"),
        ({"aggregator": "median"}, "needs the individual updates of a synchronous round"),
        (
            {"aggregator": "median", "mode": "sync", "dp": DP, "codec": CODEC},
            "does not combine with dp",
        ),
        ({"aggregator": "mode"}, "aggregator: expected one of"),
    ],
)
async def test_bad_privacy_config_is_refused_with_the_reason(
    make_env: EnvFactory, patch: dict[str, Any], message: str
) -> None:
    env = await make_env()
    r = await env.client.patch("/v1/models/m/config", json=patch, headers=env.op)
    assert r.status == 422, await r.text()
    body = await r.json()
    assert message in str(body), body
    r = await env.client.get("/v1/models/m/config", headers=env.op)
    assert (await r.json()).get("dp") is None  # nothing changed


async def test_dp_and_robust_round_trip_through_patch(make_env: EnvFactory) -> None:
    env = await make_env()
    patch = {"dp": {**DP, "population": 50}, "codec": CODEC, "robust": {"warmup": 4}}
    r = await env.client.patch("/v1/models/m/config", json=patch, headers=env.op)
    assert r.status == 200, await r.text()
    r = await env.client.get("/v1/models/m/config", headers=env.op)
    got = await r.json()
    assert got["dp"]["population"] == 50 and got["dp"]["clip_norm"] == CLIP
    assert got["robust"]["warmup"] == 4
    r = await env.client.patch("/v1/models/m/config", json={"dp": None}, headers=env.op)
    assert r.status == 200 and (await r.json()).get("dp") is None


# --- DP at publication ----------------------------------------------------------------------


def updates(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        d = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}
        out.append(d)
    return out


async def new_service(data: Path, *, dp: bool = True) -> AggregationService:
    extra: dict[str, Any] = {"dp": DP, "codec": CODEC} if dp else {"codec": CODEC}
    config = make_config(data, buffer_size=K, over_provisioning=10.0, **extra)
    service = AggregationService(config, clock=ManualClock(), rng=random.Random(0))
    await service.start()
    return service


async def feed(service: AggregationService, deltas: list[dict[str, np.ndarray]]) -> None:
    token = (await service.create_enrollment_token(1, 3600.0))["token"]
    device = str((await service.enroll(token, {}))["device_id"])
    for i, delta in enumerate(deltas):
        answer = await service.checkin(device, {"model": "m", "eligible": True})
        assert answer["action"] == "train"
        plan = answer["plan"]
        body = frame(delta, CODEC)
        await service.accept_update(
            UpdateRequest(device, "m", plan["assignment_id"], plan["version"], 7, f"k-{i}", body)
        )
        if service.runtime("m").sealed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.wait_idle(), 1.0)


async def weights(service: AggregationService, version: int) -> dict[str, np.ndarray]:
    row = await service.version_row("m", version)
    frame_bytes = service.blobs.get(row.weights_sha256)
    return codec.decode_weights(frame_bytes, service.runtime("m").manifest)


async def test_dp_versions_report_growing_epsilon_equal_to_the_accountant(tmp_path: Path) -> None:
    service = await new_service(tmp_path / "d")
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    await feed(service, updates(3 * K))
    await service.wait_idle()
    reports = [(await service.version_row("m", v)).to_json()["privacy"] for v in (2, 3, 4)]
    assert (await service.version_row("m", 1)).to_json().get("privacy") is None  # pushed
    direct = PrivacyAccountant(DPConfig.from_dict(DP))
    for version, report in zip((2, 3, 4), reports, strict=True):
        want = direct.record(version, sampling_probability=1.0)  # no population: q = 1
        assert report["epsilon"] == pytest.approx(want.epsilon, rel=1e-9)
        assert report["step_epsilon"] == pytest.approx(want.step_epsilon, rel=1e-9)
        assert report["delta"] == 1e-5 and report["sampling_probability"] == 1.0
    assert reports[0]["epsilon"] < reports[1]["epsilon"] < reports[2]["epsilon"]
    info = await service.describe_model("m")
    assert info["privacy"]["epsilon"] == reports[2]["epsilon"]
    text = service.metrics.render()
    assert f'fedge_dp_epsilon{{model="m"}} {reports[2]["epsilon"]!r}' in text
    assert 'fedge_dp_delta{model="m"} 1e-05' in text
    await service.stop()


async def test_population_gives_sampled_q(tmp_path: Path) -> None:
    settings = DPSettings.from_dict({**DP, "population": 30}, "dp")
    report, state, _ = privacy_hooks.account(None, settings, 2, K)
    assert report["sampling_probability"] == pytest.approx(K / 30)
    report2, _, _ = privacy_hooks.account(state, settings, 3, K)
    assert report2["epsilon"] > report["epsilon"]


async def test_noise_changes_the_weights_and_matches_the_seeded_mechanism(
    tmp_path: Path,
) -> None:
    deltas = updates(K)
    plain = await new_service(tmp_path / "plain", dp=False)
    await plain.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    await feed(plain, deltas)
    await plain.wait_idle()
    w_plain = await weights(plain, 2)
    await plain.stop()

    noisy = await new_service(tmp_path / "noisy")
    await noisy.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    await feed(noisy, deltas)
    await noisy.wait_idle()
    w_noisy = await weights(noisy, 2)
    seed = await noisy.store.run(privacy_hooks.model_seed, noisy.store, "m")
    await noisy.stop()

    # Recompute: Σ decoded updates (weight 1, τ = 0) + N(0, (z·C)²), / K, FedAvg lr 1.
    sums = {k: np.zeros(s) for k, s in SHAPES.items()}
    for d in deltas:
        dense = quantization.decode(frame(d, CODEC))
        for k in sums:
            sums[k] += dense[k]
    rng = privacy_hooks.noise_rng(seed, 2)
    w0 = initial_weights()
    for k in SHAPES:
        noise = rng.normal(0.0, 1.0 * CLIP, size=SHAPES[k])
        want = w0[k] + (sums[k] + noise) / K
        np.testing.assert_allclose(w_noisy[k], want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(w_noisy[k], w_plain[k], atol=0.05)  # σ/K ≈ 0.33


async def test_replay_after_a_crash_publishes_the_identical_dp_version(tmp_path: Path) -> None:
    deltas = updates(2 * K + 1)
    ref = await new_service(tmp_path / "ref")
    await ref.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    await feed(ref, deltas)
    await ref.wait_idle()
    want = {v: (await ref.version_row("m", v)).to_json() for v in (2, 3)}
    seed = await ref.store.run(privacy_hooks.model_seed, ref.store, "m")
    await ref.stop()

    data = tmp_path / "crash"
    data.mkdir()
    with sqlite3.connect(data / "fedge.sqlite3") as conn:  # the same secret seed
        conn.executescript(privacy_hooks.SCHEMA)
        conn.execute("INSERT INTO privacy_secrets VALUES ('m', ?)", (format(seed, "032x"),))
    service = await new_service(data)
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    calls = {"n": 0}
    real_publish = service.store.publish

    def crash_second(*a: Any, **k: Any) -> None:  # after the privacy row and the blobs
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated kill -9")
        real_publish(*a, **k)

    service.store.publish = crash_second  # type: ignore[method-assign]
    await feed(service, deltas)
    await service.crash_for_tests()

    restarted = await new_service(data)
    await restarted.wait_idle()
    for v in (2, 3):
        got = (await restarted.version_row("m", v)).to_json()
        assert got["weights_sha256"] == want[v]["weights_sha256"]  # bit for bit
        assert got["privacy"] == want[v]["privacy"]
    assert restarted.runtime("m").buffer.count == 1
    await restarted.stop()


# --- robustness at intake -------------------------------------------------------------------


async def test_anomalous_update_is_rejected_and_a_repeat_offender_throttled(
    make_env: EnvFactory,
) -> None:
    env = await make_env(
        buffer_size=20,
        over_provisioning=10.0,
        robust={"warmup": 4, "strikes_to_throttle": 2, "throttle_s": 600},
    )
    honest, bad = await env.enroll(2)
    rng = np.random.default_rng(3)

    def delta(scale: float = 1.0) -> dict[str, np.ndarray]:
        base = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}
        return {k: (v + 0.2) * scale for k, v in base.items()}  # a shared direction

    for _ in range(6):
        status, body = await env.upload(honest, await env.plan(honest), frame(delta()))
        assert status == 202, body
    rt = env.service.runtime("m")
    before = {k: v.copy() for k, v in rt.buffer.sums.items()}
    count = rt.buffer.count

    status, body = await env.upload(bad, await env.plan(bad), frame(delta(100.0)))
    assert status == 422 and body["error"]["code"] == "anomalous_update", body
    assert "norm_outlier" in body["error"]["detail"]
    assert rt.buffer.count == count
    for k, value in before.items():
        np.testing.assert_array_equal(rt.buffer.sums[k], value)

    spare = await env.plan(bad)  # a plan taken before the device is throttled
    status, body = await env.upload(bad, await env.plan(bad), frame(delta(100.0)))
    assert status == 429 and body["error"]["code"] == "throttled", body  # second strike
    answer = await env.checkin(bad)
    assert answer["action"] == "wait" and answer["reason"] == "throttled", answer
    assert 590 <= answer["retry_after"] <= 600
    r = await env.client.post(
        "/v1/devices/updates",
        data=frame(delta()),
        headers={
            **bad.auth,
            "Content-Type": "application/octet-stream",
            "Idempotency-Key": "after-throttle",
            "Fedge-Assignment": spare["assignment_id"],
            "Fedge-Model": "m",
            "Fedge-Base-Version": str(spare["version"]),
            "Fedge-Examples": "5",
        },
    )
    assert r.status == 429 and 590 <= int(r.headers["Retry-After"]) <= 601
    assert rt.buffer.count == count
    status, body = await env.upload(honest, await env.plan(honest), frame(delta()))
    assert status == 202, body  # the honest device is not affected
    text = env.service.metrics.render()
    assert 'fedge_updates_quarantined_total{model="m",reason="norm_outlier"} 1' in text
    assert 'fedge_updates_throttled_total{model="m"} 2' in text


async def test_robust_screening_refuses_an_undecodable_frame(make_env: EnvFactory) -> None:
    env = await make_env(robust={"warmup": 2})
    (device,) = await env.enroll(1)
    status, body = await env.upload(device, await env.plan(device), b"FUL1garbage")
    assert status in (400, 422), body
    assert env.service.runtime("m").buffer.count == 0


# --- sync median / trimmed mean -------------------------------------------------------------


@pytest.mark.parametrize("aggregator", ["mean", "median", "trimmed_mean"])
async def test_median_aggregator_bounds_a_poisoned_update(
    make_env: EnvFactory, aggregator: str
) -> None:
    n = 5
    env = await make_env(
        mode="sync",
        clients_per_round=n,
        over_selection=1.0,
        aggregator=aggregator,
        trim_fraction=0.2,
        codec={"density": 1.0, "bits": 8},
    )
    devices = await env.enroll(n)
    plans = [await env.plan(d) for d in devices]
    rng = np.random.default_rng(11)
    honest = [
        {k: (0.1 + rng.normal(0, 0.01, s)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(n - 1)
    ]
    poisoned = {k: v * -100.0 for k, v in honest[0].items()}
    for device, plan, delta in zip(devices, plans, [*honest, poisoned], strict=True):
        status, body = await env.upload(device, plan, frame(delta, {"density": 1.0, "bits": 8}))
        assert status == 202, body
    await env.service.wait_idle()
    assert env.service.runtime("m").training.version == 2
    new = await weights(env.service, 2)
    w0 = initial_weights()
    for k in SHAPES:
        step = new[k] - w0[k]
        lo = np.min([h[k] for h in honest], axis=0) - 0.01  # 8-bit quantization slack
        hi = np.max([h[k] for h in honest], axis=0) + 0.01
        inside = bool(np.all((step >= lo) & (step <= hi)))
        assert inside is (aggregator != "mean"), (aggregator, k)


async def test_median_round_is_rebuilt_from_the_log_after_a_crash(tmp_path: Path) -> None:
    async def start(data: Path) -> AggregationService:
        config = make_config(
            data,
            mode="sync",
            clients_per_round=3,
            over_selection=1.0,
            aggregator="median",
            codec={"density": 1.0, "bits": 8},
        )
        service = AggregationService(config, clock=ManualClock(), rng=random.Random(0))
        await service.start()
        return service

    service = await start(tmp_path / "d")
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    devices = []
    for _ in range(3):
        token = (await service.create_enrollment_token(1, 3600.0))["token"]
        devices.append(str((await service.enroll(token, {}))["device_id"]))
    plans = []
    for d in devices:
        for _ in range(50):  # pace steering admits at random
            answer = await service.checkin(d, {"model": "m", "eligible": True})
            if answer["action"] == "train":
                break
        plans.append(answer["plan"])
    deltas = [{k: np.full(s, v, np.float32) for k, s in SHAPES.items()} for v in (0.1, 0.2, -50)]
    await service.set_paused("m", True)  # the round completes but is not published
    for i, (d, plan, delta) in enumerate(zip(devices, plans, deltas, strict=True)):
        body = frame(delta, {"density": 1.0, "bits": 8})
        await service.accept_update(
            UpdateRequest(d, "m", plan["assignment_id"], plan["version"], 5, f"r-{i}", body)
        )
    await service.crash_for_tests()
    restarted = await start(tmp_path / "d")
    await restarted.set_paused("m", False)
    await restarted.wait_idle()
    new = await weights(restarted, 2)
    w0 = initial_weights()
    np.testing.assert_allclose(new["w"] - w0["w"], 0.1, atol=0.01)  # median of 0.1, 0.2, −50
    await restarted.stop()


# --- the fleet file ---------------------------------------------------------------------------

FLEET = """
name: private
devices: [{profile: raspberry-pi-4, count: 4}]
codec: {density: 0.25, bits: 8, clip_norm: 0.5}
server:
  mode: async
  buffer_size: 4
  dp: {noise_multiplier: 1.0, clip_norm: 0.5, delta: 1.0e-5, population: 40}
  robust: {warmup: 8, strikes_to_throttle: 3}
"""


def test_fleet_file_passes_dp_and_robust_to_the_training_config(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    cfg = training_config(load_fleet(path), "async")
    assert cfg.dp is not None and cfg.dp.population == 40 and cfg.update_norm_bound == 0.5
    assert cfg.robust is not None and cfg.robust.warmup == 8
    path.write_text(FLEET.replace("clip_norm: 0.5}", "clip_norm: 2.0}", 1), encoding="utf-8")
    with pytest.raises(FleetError, match=r"is above dp\.clip_norm"):
        training_config(load_fleet(path), "async")
