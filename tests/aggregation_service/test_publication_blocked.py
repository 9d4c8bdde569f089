"""A model whose server step cannot succeed stops taking work, says why
everywhere an operator looks, and publishes what it acknowledged once the
operator fixes the config — instead of failing every 5 s forever behind an
"ok" health check."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.aggregation_service.conftest import SHAPES, EnvFactory, frame

HUGE = 3e38  # finite in float32; ×1000 (the largest server rate) overflows it


def _huge() -> bytes:
    delta = {k: np.full(s, HUGE, np.float32) for k, s in SHAPES.items()}
    return frame(delta, {"values": "float32"})


async def test_absurd_learning_rates_are_refused(make_env: EnvFactory) -> None:
    env = await make_env()
    for lr in (1e308, 1e4, 0, -1):
        r = await env.client.patch(
            "/v1/models/m/config", json={"optimizer": {"learning_rate": lr}}, headers=env.op
        )
        assert r.status == 422, (lr, await r.text())
        assert "learning_rate" in (await r.json())["error"]["detail"]


async def test_a_non_finite_step_blocks_the_model_until_the_config_is_fixed(
    make_env: EnvFactory,
) -> None:
    env = await make_env(optimizer={"name": "fedavg", "learning_rate": 1000.0})
    devices = await env.enroll(4)
    keys = []
    for i, device in enumerate(devices[:3]):  # K = 3: one buffer of poison-sized updates
        plan = await env.plan(device)
        keys.append(f"key-huge-{i:04d}")
        status, body = await env.upload(device, plan, _huge(), key=keys[-1])
        assert status == 202, body
    for _ in range(200):  # the publisher fails on the event loop
        await asyncio.sleep(0.01)
        if env.service.runtime("m").problem is not None:
            break
    rt = env.service.runtime("m")
    assert rt.problem is not None and rt.problem.blocking
    assert rt.training.version == 1 and sum(b.count for b in rt.sealed) == 3

    # Everywhere the operator looks.
    health = await (await env.client.get("/healthz")).json()
    assert health["status"] == "degraded"
    assert health["publication_problems"]["m"]["reason"] == "non_finite_step"
    model = await (await env.client.get("/v1/models/m", headers=env.op)).json()
    assert model["publication"]["state"] == "blocked"
    assert "learning_rate" in model["publication"]["detail"]
    metrics = await (await env.client.get("/metrics")).text()
    assert 'fedge_publication_blocked{model="m"} 1' in metrics
    assert 'fedge_publication_failures_total{model="m",reason="non_finite_step"}' in metrics

    # No new work while blocked: a check-in waits, an upload is not acknowledged.
    answer = await env.checkin(devices[3])
    assert answer["action"] == "wait" and answer["reason"] == "publication_blocked"
    plan = dict(plan, assignment_id="as-none")
    status, body = await env.upload(devices[3], plan, _huge())
    assert status == 503 and body["error"]["code"] == "publication_blocked"

    # The operator lowers the rate: the same buffer publishes, nothing lost.
    r = await env.client.patch(
        "/v1/models/m/config", json={"optimizer": {"learning_rate": 1e-38}}, headers=env.op
    )
    assert r.status == 200, await r.text()
    await env.service.wait_idle()
    rt = env.service.runtime("m")
    assert rt.training.version == 2 and rt.training.num_updates == 3
    assert rt.problem is None
    assert (await (await env.client.get("/healthz")).json())["status"] == "ok"
    assert all(np.all(np.isfinite(w)) for w in rt.weights.values())
    # Retries of the acknowledged keys are still duplicates, not new updates.
    status, body = await env.upload(devices[0], plan, _huge(), key=keys[0])
    assert status == 202 and body["duplicate"] is True
