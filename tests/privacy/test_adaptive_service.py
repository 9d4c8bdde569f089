"""Adaptive clipping in the service (Andrew et al. 2021): clip bits on real
uploads through the aiohttp app, the bound moving toward the target quantile,
the bound in plans, versions, the model JSON and /metrics, and the identical
bound after a crash and replay of the update log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from aggregation_service import AggregationService, create_app, privacy_hooks
from aggregation_service.app import SERVICE
from aggregation_service.config import DPSettings
from aggregation_service.service import UpdateRequest
from fedge.clock import ManualClock
from privacy.dp import DPConfig
from tests.aggregation_service.conftest import (
    SHAPES,
    Device,
    Env,
    frame,
    initial_weights,
    make_config,
    synthetic_manifest,
)

K = 10
GAMMA = 0.5  # target quantile
ADAPTIVE = {"target_quantile": GAMMA, "learning_rate": 0.2, "count_noise_std": 0.5}
DP = {"noise_multiplier": 0.5, "clip_norm": 0.2, "delta": 1e-5, "adaptive": ADAPTIVE}
CODEC = {"density": 1.0, "bits": 8, "clip_norm": 0.2}
# Update norms: log-normal with median 1.0; the bound must settle near it.
NORM_SIGMA = 0.5


def synthetic_update(rng: np.random.Generator, norm: float) -> dict[str, np.ndarray]:
    raw = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    scale = norm / math.sqrt(sum(float(np.sum(v**2)) for v in raw.values()))
    return {k: (v * scale).astype(np.float32) for k, v in raw.items()}


EnvMaker = Callable[..., Awaitable[Env]]


@pytest.fixture
async def env_for(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> AsyncIterator[EnvMaker]:
    async def factory(**training: Any) -> Env:
        config = make_config(tmp_path / "data", **training)
        clock = ManualClock()
        service = AggregationService(config, clock=clock, rng=random.Random(1))
        client = await aiohttp_client(create_app(config, service=service))
        env = Env(client, clock, client.app[SERVICE], tmp_path / "data")
        await env.service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
        return env

    yield factory


async def one_step(env: Env, devices: list[Device], rng: np.random.Generator) -> list[float]:
    """Every device trains from the current version and uploads with its clip bit."""
    norms = []
    for device in devices:
        plan = await env.plan(device)
        bound = plan["dp"]["clip_norm"]
        assert plan["dp"]["clip_bit"] is True and plan["codec"]["clip_norm"] == bound
        norm = float(rng.lognormal(0.0, NORM_SIGMA))
        norms.append(norm)
        body = frame(synthetic_update(rng, norm), plan["codec"])  # the device clips at `bound`
        status, answer = await env.upload(
            device, plan, body, headers={"Fedge-Clip-Bit": str(int(norm <= bound))}
        )
        assert status == 202, answer
    await env.service.wait_idle()
    return norms


async def test_the_bound_tracks_the_target_quantile_of_update_norms(env_for: EnvMaker) -> None:
    env = await env_for(buffer_size=K, over_provisioning=10.0, dp=DP, codec=CODEC)
    devices = await env.enroll(K)
    rng = np.random.default_rng(11)
    bounds = []
    for _ in range(45):
        await one_step(env, devices, rng)
        info = await env.service.describe_model("m")
        bounds.append(info["privacy"]["clip_norm"])
    # Every update was clipped at 0.2 at first: the bound grows geometrically,
    # by about exp(η·γ) per step while nearly every bit is 0.
    assert bounds[0] == pytest.approx(0.2 * math.exp(0.2 * GAMMA), rel=0.08)
    assert all(b2 > b1 for b1, b2 in itertools.pairwise(bounds[:9]))
    settled = float(np.mean(bounds[-15:]))
    # The median of a log-normal(0, 0.5) norm is 1.0; its 0.35 and 0.65
    # quantiles are 0.82 and 1.21. b̄'s noise (σ_b/K = 0.05) and η = 0.2 leave
    # the bound wandering a little around the target.
    assert 0.82 < settled < 1.21, bounds[-15:]
    fitted = float(np.mean(rng.lognormal(0.0, NORM_SIGMA, 20_000) <= settled))
    assert abs(fitted - GAMMA) < 0.15

    # The bound of the training version is in the plan, the version JSON and /metrics.
    last = await env.service.version_row("m", 46)
    privacy = last.to_json()["privacy"]
    assert privacy["clip_norm"] == bounds[-1]
    assert privacy["update_noise_multiplier"] == pytest.approx(
        DPConfig.from_dict(DP).update_noise_multiplier
    )
    assert 0.0 < privacy["unclipped_fraction"] + 1 < 3  # the noised b̄, not the raw count
    assert "clip_bits" not in privacy
    plan = await env.plan(devices[0])
    assert plan["dp"]["clip_norm"] == bounds[-1]
    r = await env.client.get("/metrics")
    assert f'fedge_dp_clip_norm{{model="m"}} {bounds[-1]!r}' in await r.text()


async def test_clip_bit_header_is_required_and_validated(env_for: EnvMaker) -> None:
    env = await env_for(buffer_size=K, over_provisioning=10.0, dp=DP, codec=CODEC)
    (device,) = await env.enroll(1)
    plan = await env.plan(device)
    body = frame(synthetic_update(np.random.default_rng(0), 0.1), plan["codec"])
    status, answer = await env.upload(device, plan, body)
    assert status == 400 and answer["error"]["code"] == "clip_bit_required", answer
    assert "Fedge-Clip-Bit" in answer["error"]["detail"]
    for bad in ("2", "yes", "", "01", "1.0"):
        status, answer = await env.upload(device, plan, body, headers={"Fedge-Clip-Bit": bad})
        assert status == 400 and answer["error"]["code"] == "bad_header", (bad, answer)
    status, answer = await env.upload(device, plan, body, headers={"Fedge-Clip-Bit": "1"})
    assert status == 202, answer


async def test_an_update_above_its_versions_bound_is_refused(env_for: EnvMaker) -> None:
    env = await env_for(buffer_size=K, over_provisioning=10.0, dp=DP, codec=CODEC)
    (device,) = await env.enroll(1)
    plan = await env.plan(device)
    # Clipped at 1.0, five times the plan's bound of 0.2: a modified device.
    body = frame(synthetic_update(np.random.default_rng(0), 3.0), {**CODEC, "clip_norm": 1.0})
    status, answer = await env.upload(device, plan, body, headers={"Fedge-Clip-Bit": "0"})
    assert status == 422 and answer["error"]["code"] == "bad_update", answer


def test_a_stale_update_is_scaled_to_the_current_bound() -> None:
    settings = DPSettings.from_dict(DP, "dp")
    state = privacy_hooks.ClipState()
    state.put("m", 2, 0.8)
    state.put("m", 3, 0.4)
    max_norm, factor, reference = state.admit("m", settings, base=2, training=3)
    assert (max_norm, factor, reference) == (0.8, 0.5, 0.4)  # contributes ≤ 0.4
    max_norm, factor, reference = state.admit("m", settings, base=3, training=3)
    assert (max_norm, factor, reference) == (0.4, 1.0, 0.4)
    # Unknown versions (pushed, or before DP) start from the configured bound.
    assert state.bound("m", 1, settings) == 0.2


# --- replay after a crash ---------------------------------------------------------------------


async def start(data: Path) -> AggregationService:
    config = make_config(data, buffer_size=K, over_provisioning=10.0, dp=DP, codec=CODEC)
    service = AggregationService(config, clock=ManualClock(), rng=random.Random(0))
    await service.start()
    return service


async def feed(service: AggregationService, n: int) -> None:
    """n uploads from one device (one assignment each) with norms around 1."""
    rng = np.random.default_rng(5)
    token = (await service.create_enrollment_token(1, 3600.0))["token"]
    device = str((await service.enroll(token, {}))["device_id"])
    for i in range(n):
        for _ in range(50):  # pace steering admits at random
            answer = await service.checkin(device, {"model": "m", "eligible": True})
            if answer["action"] == "train":
                break
        plan = answer["plan"]
        norm = float(rng.lognormal(0.0, NORM_SIGMA))
        body = frame(synthetic_update(rng, norm), plan["codec"])
        bit = int(norm <= plan["dp"]["clip_norm"])
        await service.accept_update(
            UpdateRequest(
                device, "m", plan["assignment_id"], plan["version"], 7, f"k-{i}", body, bit
            )
        )
        if service.runtime("m").sealed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.wait_idle(), 2.0)


async def test_the_bound_is_identical_after_a_crash_and_replay(tmp_path: Path) -> None:
    ref = await start(tmp_path / "ref")
    await ref.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    await feed(ref, 3 * K + 2)
    await ref.wait_idle()
    want = {v: (await ref.version_row("m", v)).to_json() for v in (2, 3, 4)}
    seed = await ref.store.run(privacy_hooks.model_seed, ref.store, "m")
    await ref.stop()
    assert len({w["privacy"]["clip_norm"] for w in want.values()}) == 3  # it moved each step

    data = tmp_path / "crash"
    data.mkdir()
    with sqlite3.connect(data / "fedge.sqlite3") as conn:  # the same secret seed
        conn.executescript(privacy_hooks.SCHEMA)
        conn.execute("INSERT INTO privacy_secrets VALUES ('m', ?)", (format(seed, "032x"),))
    service = await start(data)
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    calls = {"n": 0}
    real_publish = service.store.publish

    def crash_third(*a: Any, **k: Any) -> None:  # after the privacy row and the blobs
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated kill -9")
        real_publish(*a, **k)

    service.store.publish = crash_third  # type: ignore[method-assign]
    await feed(service, 3 * K + 2)
    await service.crash_for_tests()

    restarted = await start(data)
    await restarted.wait_idle()
    for v in (2, 3, 4):
        got = (await restarted.version_row("m", v)).to_json()
        assert got["privacy"] == want[v]["privacy"]  # bound, b̄ and ε alike
        assert got["weights_sha256"] == want[v]["weights_sha256"]  # noise calibrated alike
    # Devices training from the replayed version get the replayed bound.
    token = (await restarted.create_enrollment_token(1, 3600.0))["token"]
    device = str((await restarted.enroll(token, {}))["device_id"])
    for _ in range(50):
        answer = await restarted.checkin(device, {"model": "m", "eligible": True})
        if answer["action"] == "train":
            break
    assert answer["plan"]["dp"]["clip_norm"] == want[4]["privacy"]["clip_norm"]
    await restarted.stop()
