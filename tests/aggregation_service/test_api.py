"""The HTTP API through aiohttp's test client: operator endpoints, the device
protocol, downloads, pace steering, limits and operations."""

from __future__ import annotations

import numpy as np

import quantization
from aggregation_service.app import LIMITER, ROUTES
from tests.aggregation_service.conftest import (
    SHAPES,
    Device,
    Env,
    EnvFactory,
    frame,
    initial_weights,
)


def _delta(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


async def _publish_one(env: Env, devices: list[Device], value: float = 0.1) -> None:
    for d in devices:
        plan = await env.plan(d)
        status, body = await env.upload(d, plan, frame(_delta(value)))
        assert status == 202, body
    await env.service.wait_idle()


async def test_lineage_listing_and_versions(make_env: EnvFactory) -> None:
    env = await make_env()
    devices = await env.enroll(3)
    await _publish_one(env, devices)
    r = await env.client.get("/v1/models", headers=env.op)
    models = (await r.json())["models"]
    assert [m["model"] for m in models] == ["m"]
    versions = models[0]["versions"]
    assert [(v["version"], v["kind"], v["base_version"]) for v in versions] == [
        (1, "pushed", None),
        (2, "aggregated", 1),
    ]
    assert versions[1]["num_updates"] == 3 and versions[1]["num_devices"] == 3
    r = await env.client.get("/v1/models/m/versions/2", headers=env.op)
    assert (await r.json())["mean_staleness"] == 0.0
    # FedAvg with server lr 1 and equal weights: w2 = w1 + mean delta.
    r = await env.client.get("/v1/models/m/versions/2/weights", headers=devices[0].auth)
    got = quantization.decode_weights(await r.read())
    for k, w in initial_weights().items():
        np.testing.assert_allclose(got[k], w + 0.1, rtol=1e-6)


async def test_promote_rollback_pause_resume(make_env: EnvFactory) -> None:
    env = await make_env()
    devices = await env.enroll(3)
    r = await env.client.post("/v1/models/m/rollback", headers=env.op)
    assert r.status == 409 and (await r.json())["error"]["code"] == "nothing_to_roll_back"
    await env.client.post("/v1/models/m/promote", json={"version": 1}, headers=env.op)
    await _publish_one(env, devices)
    r = await env.client.post("/v1/models/m/promote", json={"version": 2}, headers=env.op)
    assert (await r.json())["live_version"] == 2
    r = await env.client.post("/v1/models/m/promote", json={"version": 9}, headers=env.op)
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_version"
    r = await env.client.post("/v1/models/m/rollback", headers=env.op)
    assert await r.json() == {"model": "m", "live_version": 1, "training_version": 1}
    plan = await env.plan(devices[0])
    assert plan["version"] == 1
    assert (await env.checkin(devices[2]))["live_version"] == 1
    r = await env.client.post("/v1/models/m/pause", headers=env.op)
    assert (await r.json())["paused"] is True
    answer = await env.checkin(devices[1])
    assert answer["action"] == "wait" and answer["reason"] == "paused"
    await env.client.post("/v1/models/m/resume", headers=env.op)
    assert (await env.plan(devices[1]))["version"] == 1


async def test_config_patch_is_partial_and_validated(make_env: EnvFactory) -> None:
    env = await make_env()
    r = await env.client.patch(
        "/v1/models/m/config",
        json={"buffer_size": 7, "optimizer": {"name": "fedadam", "learning_rate": 0.01}},
        headers=env.op,
    )
    assert r.status == 200, await r.text()
    config = await (await env.client.get("/v1/models/m/config", headers=env.op)).json()
    assert config["buffer_size"] == 7
    assert config["optimizer"]["name"] == "fedadam" and config["optimizer"]["beta1"] == 0.9
    assert config["staleness_exponent"] == 0.5
    bad = [
        ({"buffer_size": 0}, "buffer_size"),
        ({"optimizer": {"name": "sgd"}}, "optimizer.name"),
        ({"codec": {"density": 2}}, "codec"),
        ({"mode": "sometimes"}, "mode"),
        ({"no_such_key": 1}, "no_such_key"),
        ({"over_selection": 0.5}, "over_selection"),
        ({"max_update_norm": -1}, "max_update_norm"),
    ]
    for patch, key in bad:
        r = await env.client.patch("/v1/models/m/config", json=patch, headers=env.op)
        body = await r.json()
        assert r.status == 422 and body["error"]["code"] == "bad_config", (patch, body)
        assert key in body["error"]["detail"], (patch, body)
    config2 = await (await env.client.get("/v1/models/m/config", headers=env.op)).json()
    assert config2 == config  # nothing partial was written


async def test_downloads_etag_range_and_delta(make_env: EnvFactory) -> None:
    env = await make_env()
    devices = await env.enroll(3)
    auth = devices[0].auth
    await _publish_one(env, devices)
    r = await env.client.get("/v1/models/m/versions/2/weights", headers=auth)
    full = await r.read()
    etag = r.headers["ETag"]
    assert r.headers["Fedge-Weights-Sha256"] in etag
    r = await env.client.get(
        "/v1/models/m/versions/2/weights", headers={**auth, "If-None-Match": etag}
    )
    assert r.status == 304
    r = await env.client.get(
        "/v1/models/m/versions/2/weights", headers={**auth, "Range": "bytes=10-19"}
    )
    assert r.status == 206 and await r.read() == full[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(full)}"
    r = await env.client.get(
        "/v1/models/m/versions/2/weights", headers={**auth, "Range": "bytes=-5"}
    )
    assert await r.read() == full[-5:]
    r = await env.client.get(
        "/v1/models/m/versions/2/weights", headers={**auth, "Range": f"bytes={len(full)}-"}
    )
    assert r.status == 416
    r = await env.client.get(
        "/v1/models/m/versions/2/weights", headers={**auth, "Range": "pages=1"}
    )
    assert r.status == 400
    # The delta from a cached version rebuilds version 2 exactly.
    r = await env.client.get("/v1/models/m/versions/2/weights?from=1", headers=auth)
    assert r.status == 200
    v1 = quantization.decode_weights(
        await (await env.client.get("/v1/models/m/versions/1/weights", headers=auth)).read()
    )
    rebuilt = quantization.apply_model_delta(await r.read(), v1)
    want = quantization.decode_weights(full)
    for k in want:
        np.testing.assert_array_equal(rebuilt[k], want[k])
    r = await env.client.get("/v1/models/m/versions/2/weights?from=7", headers=auth)
    assert r.status == 404 and (await r.json())["error"]["code"] == "no_delta"
    r = await env.client.get("/v1/models/m/versions/2/manifest.json", headers=auth)
    assert (await r.json())["tensors"][0]["name"] == "w"
    r = await env.client.get("/v1/models/m/versions/2/model.tflite", headers=auth)
    assert r.status == 404 and (await r.json())["error"]["code"] == "no_graph"
    # A device that caches version 1 is offered the delta in its plan.
    answer = await env.checkin(devices[1], cached_version=1)
    assert answer["plan"]["urls"]["delta"] == "/v1/models/m/versions/2/weights?from=1"


async def test_pace_steering_bounds_concurrent_training(make_env: EnvFactory) -> None:
    env = await make_env(buffer_size=3, over_provisioning=1.3, pace_min_retry_s=10.0)
    devices = await env.enroll(12)
    answers = [await env.checkin(d) for d in devices]
    trained = [a for a in answers if a["action"] == "train"]
    waits = [a for a in answers if a["action"] == "wait"]
    assert 1 <= len(trained) <= 4  # target ⌈3 × 1.3⌉
    assert waits and all(a["reason"] == "pace_steering" for a in waits)
    retries = [a["retry_after"] for a in waits]
    assert all(10.0 <= r <= 900.0 for r in retries)
    assert len(set(retries)) > 1  # jittered: no thundering herd


async def test_ineligible_devices_wait(make_env: EnvFactory) -> None:
    env = await make_env(eligibility={"min_memory_mb": 8192})
    (device,) = await env.enroll(1)
    answer = await env.checkin(device, eligible=False, reasons=["not_charging"])
    assert answer["reason"] == "not_eligible"
    answer = await env.checkin(device)
    assert answer["reason"] == "requirements"


async def test_rate_limit_answers_429_with_retry_after(make_env: EnvFactory) -> None:
    env = await make_env()
    limiter = env.client.app[LIMITER]
    limiter.rate, limiter.burst = 1.0, 2.0
    (device,) = await env.enroll(1)
    body = {"model": "m", "eligible": True}
    statuses = []
    for _ in range(3):
        r = await env.client.post("/v1/devices/checkin", json=body, headers=device.auth)
        statuses.append(r.status)
    assert statuses == [200, 200, 429]
    assert int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "rate_limited"
    env.clock.advance(1.0)
    r = await env.client.post("/v1/devices/checkin", json=body, headers=device.auth)
    assert r.status == 200


async def test_idempotent_retry_is_counted_once(make_env: EnvFactory) -> None:
    env = await make_env(buffer_size=10)
    (device,) = await env.enroll(1)
    plan = await env.plan(device)
    body = frame(_delta(0.2))
    s1, b1 = await env.upload(device, plan, body, key="retry-key-0001")
    s2, b2 = await env.upload(device, plan, body, key="retry-key-0001")
    assert (s1, s2) == (202, 202)
    assert b1["duplicate"] is False and b2["duplicate"] is True
    assert b1["update_id"] == b2["update_id"]
    assert env.service.runtime("m").buffer.count == 1
    # The same assignment with another key is refused: one update per plan.
    s3, b3 = await env.upload(device, plan, body, key="retry-key-0002")
    assert s3 == 409 and b3["error"]["code"] == "assignment_used"


async def test_idempotency_keys_are_scoped_to_the_device(make_env: EnvFactory) -> None:
    env = await make_env(buffer_size=10)
    a, b = await env.enroll(2)
    plan_a, plan_b = await env.plan(a), await env.plan(b)
    body = frame(_delta(0.2))
    sa, ra = await env.upload(a, plan_a, body, key="update-00000001")
    sb, rb = await env.upload(b, plan_b, body, key="update-00000001")
    assert (sa, sb) == (202, 202)
    assert ra["duplicate"] is False and rb["duplicate"] is False
    assert ra["update_id"] != rb["update_id"]
    assert env.service.runtime("m").buffer.count == 2


async def test_metrics_health_and_openapi(make_env: EnvFactory) -> None:
    env = await make_env()
    devices = await env.enroll(3)
    await _publish_one(env, devices)
    plan = await env.plan(devices[0])
    await env.upload(devices[0], plan, b"garbage")
    text = await (await env.client.get("/metrics")).text()
    assert 'fedge_updates_accepted_total{model="m"} 3' in text
    assert 'fedge_updates_rejected_total{reason="bad_update"} 1' in text
    assert 'fedge_versions_published_total{model="m"} 1' in text
    assert "fedge_update_staleness_bucket" in text and "fedge_ack_seconds_count 3" in text
    assert 'fedge_bytes_in_total{route="/v1/devices/updates"}' in text
    assert (await (await env.client.get("/healthz")).json())["status"] == "ok"
    doc = await (await env.client.get("/openapi.json")).json()
    served = {(m.lower(), p) for m, p, _ in ROUTES}
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert served == documented
    for resource in env.client.app.router.resources():
        assert resource.canonical in doc["paths"], resource.canonical


async def test_concurrent_retries_and_racing_uploads_count_once(make_env: EnvFactory) -> None:
    import asyncio

    env = await make_env(buffer_size=10)
    a, b = await env.enroll(2)
    plan_a, plan_b = await env.plan(a), await env.plan(b)
    body = frame(_delta(0.2))
    # Five copies of one upload at once (a device retrying aggressively) …
    same_key = await asyncio.gather(
        *(env.upload(a, plan_a, body, key="same-key-0001") for _ in range(5))
    )
    assert [s for s, _ in same_key] == [202] * 5
    assert sum(not r["duplicate"] for _, r in same_key) == 1
    assert len({r["update_id"] for _, r in same_key}) == 1
    # … and three different keys racing for one assignment: exactly one wins.
    racing = await asyncio.gather(
        *(env.upload(b, plan_b, body, key=f"race-key-000{i}") for i in range(3))
    )
    assert sorted(s for s, _ in racing) == [202, 409, 409]
    assert env.service.runtime("m").buffer.count == 2
