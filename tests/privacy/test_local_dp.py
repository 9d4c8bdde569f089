"""Local DP end to end: the device's codec path clips and adds N(0, (z·C)²)
before compression (no error feedback), the service adds no noise, and each
version reports the per-device ε that dp-accounting gives for the same
Gaussian mechanism. Also: configurations that would waste or break a
guarantee are refused through PATCH /config and through a fleet file."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

import quantization
from aggregation_service import AggregationService, create_app
from aggregation_service.app import SERVICE
from aggregation_service.codec import decode_weights
from edge_client import codec as edge_codec
from edge_client.protocol import PlanDP
from fedge.cli import main as fedge_main
from fedge.clock import ManualClock
from tests.aggregation_service.conftest import (
    SHAPES,
    Env,
    initial_weights,
    make_config,
    synthetic_manifest,
)

Z = 0.5
CLIP = 1.0
DELTA = 1e-5
LOCAL = {"noise_multiplier": Z, "clip_norm": CLIP, "delta": DELTA, "mode": "local"}
LOSSLESS = {"density": 1.0, "values": "float32"}


def update_of_norm(shapes: dict[str, tuple[int, ...]], norm: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    raw = {k: rng.normal(size=s) for k, s in shapes.items()}
    total = float(np.sqrt(sum(float(np.sum(v**2)) for v in raw.values())))
    return {k: (v * norm / total).astype(np.float32) for k, v in raw.items()}


# --- the device side ------------------------------------------------------------------------


def test_device_noise_has_the_configured_variance_and_no_error_feedback() -> None:
    shapes = {"w": (200, 100)}
    update = update_of_norm(shapes, 3.0, seed=1)  # clipped to 1.0 before the noise
    clipped = update["w"].astype(np.float64) / 3.0
    dp = PlanDP(mode="local", clip_norm=CLIP, noise_multiplier=Z, clip_bit=False)
    stale_residual = {"w": np.full(shapes["w"], 5.0, np.float32)}
    out = edge_codec.encode_update(
        update, LOSSLESS, stale_residual, seed=0, dp=dp, noise_rng=np.random.default_rng(2)
    )
    assert out.residual == {}  # error feedback is off: nothing is carried over
    noise = quantization.decode(out.payload)["w"].astype(np.float64) - clipped
    d = noise.size
    sigma2 = (Z * CLIP) ** 2
    # Sample variance of d Gaussians: relative std √(2/d) ≈ 0.01; allow 5 of them.
    assert abs(float(np.var(noise)) / sigma2 - 1) < 5 * np.sqrt(2 / d)
    # Mean 0 (the residual of 5.0 was not added): |mean| < 5 σ/√d.
    assert abs(float(np.mean(noise))) < 5 * np.sqrt(sigma2 / d)

    # A quantizing codec after the noise is post-processing: the variance is kept.
    quantized = edge_codec.encode_update(
        update, {"density": 1.0, "bits": 8}, None, seed=0, dp=dp,
        noise_rng=np.random.default_rng(3),
    )
    noise8 = quantization.decode(quantized.payload)["w"].astype(np.float64) - clipped
    assert abs(float(np.var(noise8)) / sigma2 - 1) < 5 * np.sqrt(2 / d) + 0.01


def test_device_noise_comes_from_fresh_entropy_by_default() -> None:
    update = update_of_norm({"w": (50,)}, 0.5, seed=1)
    dp = PlanDP(mode="local", clip_norm=CLIP, noise_multiplier=Z, clip_bit=False)
    a = edge_codec.encode_update(update, LOSSLESS, None, seed=0, dp=dp)
    b = edge_codec.encode_update(update, LOSSLESS, None, seed=0, dp=dp)
    assert a.payload != b.payload  # same codec seed, different noise


def test_clip_bit_reports_whether_the_update_fitted() -> None:
    dp = PlanDP(mode="central", clip_norm=1.0, noise_multiplier=0.0, clip_bit=True)
    spec = {"density": 1.0, "bits": 8, "clip_norm": 1.0}
    small = edge_codec.encode_update(update_of_norm(SHAPES, 0.9, 1), spec, None, 0, dp)
    large = edge_codec.encode_update(update_of_norm(SHAPES, 1.1, 1), spec, None, 0, dp)
    assert (small.clip_bit, large.clip_bit) == (1, 0)
    no_bit = edge_codec.encode_update(update_of_norm(SHAPES, 0.9, 1), spec, None, 0, None)
    assert no_bit.clip_bit is None


# --- the service side -----------------------------------------------------------------------


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


def direct_epsilon(releases: int) -> float:
    """dp-accounting on its own: `releases` Gaussian mechanisms with std z·C on
    an input that moves by at most 2C (multiplier z/2)."""
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(Z / 2), releases)
    return float(accountant.get_epsilon(DELTA))


async def test_service_adds_no_noise_and_reports_the_per_device_epsilon(
    env_for: EnvMaker,
) -> None:
    k = 3
    env = await env_for(buffer_size=k, over_provisioning=10.0, dp=LOCAL, codec=LOSSLESS)
    devices = await env.enroll(k)
    weights = initial_weights()
    for step, version in enumerate((2, 3)):
        sent: list[dict[str, np.ndarray]] = []
        for i, device in enumerate(devices):
            plan = await env.plan(device)
            assert plan["dp"] == {
                "mode": "local", "clip_norm": CLIP, "noise_multiplier": Z, "clip_bit": False,
            }
            assert plan["codec"]["clip_norm"] is None  # the device clips before the noise
            dp = PlanDP.parse(plan["dp"])
            update = update_of_norm(SHAPES, 2.0, seed=10 * step + i)
            encoded = edge_codec.encode_update(update, plan["codec"], None, 0, dp)
            sent.append(quantization.decode(encoded.payload))
            status, answer = await env.upload(device, plan, encoded.payload)
            assert status == 202, answer
        await env.service.wait_idle()
        row = await env.service.version_row("m", version)
        frame = env.service.blobs.get(row.weights_sha256)
        got = decode_weights(frame, env.service.runtime("m").manifest)
        for name in SHAPES:
            # FedAvg (lr 1) of the uploaded vectors, weight 1 each over K: nothing added.
            want = weights[name] + sum(s[name].astype(np.float64) for s in sent) / k
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)
        weights = got
        privacy = row.to_json()["privacy"]
        assert privacy["guarantee"] == "local, per device"
        assert privacy["device_uploads_max"] == step + 1
        assert privacy["step_epsilon"] == pytest.approx(direct_epsilon(1), rel=1e-9)
        assert privacy["epsilon"] == pytest.approx(direct_epsilon(step + 1), rel=1e-9)
        assert privacy["clip_norm"] == CLIP
    assert direct_epsilon(1) < direct_epsilon(2)


# --- refused configurations -----------------------------------------------------------------

ADAPTIVE = {"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": {"count_noise_std": 1.0}}
CLIPPING_CODEC = {"density": 1.0, "bits": 8, "clip_norm": 1.0}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"dp": {**LOCAL, "noise_multiplier": 0}}, "local DP with noise_multiplier 0"),
        ({"dp": LOCAL, "codec": CLIPPING_CODEC}, "codec.clip_norm: in local mode the device"),
        (
            {"dp": {**LOCAL, "adaptive": {}}, "codec": LOSSLESS},
            "in local mode the server is not trusted",
        ),
        (
            {"dp": {**ADAPTIVE, "adaptive": {"count_noise_std": 0.4}}, "codec": CLIPPING_CODEC},
            "count alone would spend the whole budget",
        ),
        (
            {"dp": {**ADAPTIVE, "adaptive": {"count_noise_std": 0}}, "codec": CLIPPING_CODEC},
            "not differentially private",
        ),
        (
            {"dp": ADAPTIVE, "codec": CLIPPING_CODEC, "max_update_norm": 2.0},
            "below dp.adaptive.max_clip_norm",
        ),
        ({"dp": {**ADAPTIVE, "clip_norm": None}, "codec": LOSSLESS}, "noise without clipping"),
        ({"dp": ADAPTIVE, "codec": LOSSLESS}, "codec.clip_norm: not set"),
        # fedge's codec always clips first; a spec cannot reorder the stages.
        (
            {"dp": ADAPTIVE, "codec": {**CLIPPING_CODEC, "stages": ["sparsify", "clip"]}},
            "unknown key(s) 'stages'",
        ),
    ],
)
async def test_guarantee_breaking_dp_config_is_refused_through_patch(
    env_for: EnvMaker, patch: dict[str, Any], message: str
) -> None:
    env = await env_for()
    r = await env.client.patch("/v1/models/m/config", json=patch, headers=env.op)
    assert r.status == 422, await r.text()
    body = await r.json()
    assert body["error"]["code"] == "bad_config" and message in body["error"]["detail"], body
    r = await env.client.get("/v1/models/m/config", headers=env.op)
    assert (await r.json()).get("dp") is None  # nothing changed


async def test_local_and_adaptive_configs_are_accepted_through_patch(env_for: EnvMaker) -> None:
    env = await env_for()
    central = {**ADAPTIVE, "mode": "central"}  # a patch merges onto the current dp section
    for patch in ({"dp": LOCAL, "codec": LOSSLESS}, {"dp": central, "codec": CLIPPING_CODEC}):
        r = await env.client.patch("/v1/models/m/config", json=patch, headers=env.op)
        assert r.status == 200, await r.text()
        assert (await r.json())["dp"]["mode"] == patch["dp"]["mode"]


FLEET = """
name: private
devices: [{profile: raspberry-pi-4, count: 4}]
codec: {density: 1.0, bits: 8, clip_norm: 0.5}
server:
  mode: async
  buffer_size: 4
  dp: {noise_multiplier: 1.0, clip_norm: 0.5, delta: 1.0e-5, mode: local}
"""


def test_simulate_exits_2_naming_the_key_of_a_refused_fleet_dp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    assert fedge_main(["simulate", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "server.codec.clip_norm: in local mode the device clips" in err, err
    assert "Traceback" not in err
    path.write_text(
        FLEET.replace("mode: local}", "adaptive: {count_noise_std: 0.2}}"), encoding="utf-8"
    )
    assert fedge_main(["simulate", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "server.dp.adaptive.count_noise_std" in err, err
