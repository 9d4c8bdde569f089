"""Adaptive clipping in the service (Andrew et al. 2021): clip bits on real
uploads through the aiohttp app, the bound moving toward the target quantile,
the bound in plans, versions, the model JSON and /metrics, and the identical
bound after a crash and replay of the update log, in process and after a
SIGKILL of a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

import quantization
from aggregation_service import AggregationService, create_app, privacy_hooks
from aggregation_service.app import SERVICE
from aggregation_service.blobs import BlobStore
from aggregation_service.config import DPSettings
from aggregation_service.service import UpdateRequest
from aggregation_service.updatelog import UpdateLog
from fedge.clock import ManualClock
from privacy.dp import DPConfig
from tests.aggregation_service.conftest import (
    OPERATOR,
    SHAPES,
    Device,
    Env,
    frame,
    initial_weights,
    make_config,
    synthetic_manifest,
)
from tests.aggregation_service.realserver import (
    register_synthetic,
    start_server,
    stop_server,
    write_config,
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


# --- a real process, SIGKILLed with a complete buffer not yet published -----------------------

OP = {"Authorization": f"Bearer {OPERATOR}"}
K2 = 4


async def http_plan(session: aiohttp.ClientSession, url: str, token: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(50):  # pace steering admits at random
        async with session.post(
            f"{url}/v1/devices/checkin", json={"model": "m", "eligible": True}, headers=auth
        ) as r:
            answer = await r.json()
        if answer["action"] == "train":
            plan: dict[str, Any] = answer["plan"]
            return plan
    raise AssertionError("never admitted")


async def http_upload(
    session: aiohttp.ClientSession, url: str, token: str, plan: dict[str, Any], *,
    norm: float, rng: np.random.Generator,
) -> None:
    body = frame(synthetic_update(rng, norm), plan["codec"])
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/octet-stream",
        "Idempotency-Key": str(uuid.uuid4()),
        "Fedge-Assignment": plan["assignment_id"],
        "Fedge-Model": "m",
        "Fedge-Base-Version": str(plan["version"]),
        "Fedge-Examples": "5",
        "Fedge-Clip-Bit": str(int(norm <= plan["dp"]["clip_norm"])),
    }
    async with session.post(f"{url}/v1/devices/updates", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()


async def training_version(session: aiohttp.ClientSession, url: str, at_least: int) -> int:
    for _ in range(400):
        async with session.get(f"{url}/v1/models/m", headers=OP) as r:
            version = int((await r.json())["training_version"])
        if version >= at_least:
            return version
        await asyncio.sleep(0.05)
    raise AssertionError(f"version {at_least} was not published")


def recompute(data: Path) -> dict[int, tuple[float, dict[str, np.ndarray]]]:
    """Every version's bound and weights, recomputed from the update log and
    the secret seed alone, as an uninterrupted run computes them."""
    db = sqlite3.connect(data / "fedge.sqlite3")
    seed = int(db.execute("SELECT seed FROM privacy_secrets WHERE model='m'").fetchone()[0], 16)
    db.close()
    log = UpdateLog(data / "log", fsync=False)
    log.open()
    records = list(log.replay(0))
    log.close()
    dp = DPConfig.from_dict(DP)
    assert dp.adaptive is not None
    a = dp.adaptive
    bound, weights = DP["clip_norm"], initial_weights()
    out = {}
    for step in range(len(records) // K2):
        version = step + 2
        chunk = records[step * K2 : (step + 1) * K2]
        bits = sum(int(r.header["clip_bit"]) for r in chunk)
        reference = max(float(r.header["clip_ref"]) for r in chunk)
        sums = {k: np.zeros(s) for k, s in SHAPES.items()}
        for r in chunk:
            dense = quantization.decode(r.body)
            for k in sums:
                sums[k] += float(r.header["weight"]) * dense[k].astype(np.float64)
        noise = np.random.default_rng(np.random.SeedSequence([seed, version]))
        std = dp.update_noise_multiplier * reference
        weights = {
            k: (weights[k].astype(np.float64) + (sums[k] + noise.normal(0.0, std, SHAPES[k])) / K2)
            .astype(np.float32)
            for k in SHAPES
        }
        count = np.random.default_rng(np.random.SeedSequence([seed, version, 1]))
        fraction = (bits - K2 / 2 + count.normal(0.0, a.count_noise_std)) / K2 + 0.5
        bound = bound * math.exp(-a.learning_rate * (fraction - a.target_quantile))
        bound = min(max(bound, a.min_clip_norm), a.max_clip_norm)
        out[version] = (bound, weights)
    return out


async def test_sigkill_then_replay_publishes_what_an_uninterrupted_run_computes(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "server.yaml",
        data,
        rate_limit={"rate_per_s": 10000.0, "burst": 10000},
        training={"buffer_size": K2, "over_provisioning": 100.0, "dp": DP, "codec": CODEC},
    )
    await register_synthetic(config, SHAPES)
    rng = np.random.default_rng(9)
    server = start_server(data, config, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server.url}/v1/enrollment-tokens", json={"uses": 2}, headers=OP
            ) as r:
                token = (await r.json())["token"]
            tokens = []
            for _ in range(2):
                async with session.post(
                    f"{server.url}/v1/devices/enroll", json={"enrollment_token": token}
                ) as r:
                    tokens.append((await r.json())["device_token"])
            for version in (1, 2, 3):  # three steps published
                for i in range(K2):
                    plan = await http_plan(session, server.url, tokens[i % 2])
                    assert plan["version"] == version
                    norm = float(rng.lognormal(0.0, NORM_SIGMA))
                    await http_upload(session, server.url, tokens[i % 2], plan, norm=norm, rng=rng)
                await training_version(session, server.url, version + 1)
            # A fourth complete buffer, acknowledged while publication is paused.
            plans = [await http_plan(session, server.url, tokens[i % 2]) for i in range(K2)]
            async with session.post(f"{server.url}/v1/models/m/pause", headers=OP) as r:
                assert r.status == 200
            for i, plan in enumerate(plans):
                norm = float(rng.lognormal(0.0, NORM_SIGMA))
                await http_upload(session, server.url, tokens[i % 2], plan, norm=norm, rng=rng)
    finally:
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()

    server = start_server(data, config, tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/v1/models/m/resume", headers=OP) as r:
                assert r.status == 200
            assert await training_version(session, server.url, 5) == 5  # replayed
            async with session.get(f"{server.url}/v1/models/m", headers=OP) as r:
                info = await r.json()
    finally:
        assert stop_server(server) == 0

    want = recompute(data)
    assert sorted(want) == [2, 3, 4, 5]
    by_version = {v["version"]: v for v in info["versions"]}
    blobs = BlobStore(data / "blobs")
    for version, (bound, weights) in want.items():
        row = by_version[version]
        assert row["privacy"]["clip_norm"] == pytest.approx(bound, rel=1e-12), version
        got = quantization.decode_weights(blobs.get(row["weights_sha256"]), expected=SHAPES)
        for k in SHAPES:
            np.testing.assert_allclose(got[k], weights[k], rtol=1e-6, atol=1e-6)
    assert info["privacy"]["clip_norm"] == pytest.approx(want[5][0], rel=1e-12)
    assert len({b for b, _ in want.values()}) == 4  # the bound moved at every step
