"""Every client mistake gets a 4xx JSON error with a stable code — never a
500, never a partial write."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
import numpy as np
import pytest

from aggregation_service.service import AggregationService
from fedge.runtime import ModelRuntimeError
from tests.aggregation_service.conftest import (
    OPERATOR,
    SHAPES,
    Env,
    EnvFactory,
    frame,
    synthetic_manifest,
)


async def _error(r: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "detail"}, body
    return r.status, body["error"]["code"]


def _delta() -> dict[str, np.ndarray]:
    return {k: np.full(s, 0.1, np.float32) for k, s in SHAPES.items()}


async def _count(env: Env) -> int:
    return env.service.runtime("m").buffer.count


async def test_tokens(make_env: EnvFactory) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    c = env.client
    assert await _error(await c.get("/v1/models")) == (401, "unauthorized")
    assert await _error(await c.get("/v1/models", headers={"Authorization": "Bearer nope"})) == (
        401,
        "unauthorized",
    )
    assert await _error(await c.get("/v1/models", headers={"Authorization": "Basic x"})) == (
        401,
        "unauthorized",
    )
    assert await _error(await c.get("/v1/models", headers=device.auth)) == (403, "forbidden")
    checkin = {"model": "m", "eligible": True}
    assert await _error(await c.post("/v1/devices/checkin", json=checkin, headers=env.op)) == (
        403,
        "forbidden",
    )
    assert await _error(await c.post("/v1/devices/checkin", json=checkin)) == (401, "unauthorized")
    r = await c.post("/v1/devices/checkin", json=checkin, headers={"Authorization": "Bearer dt-x"})
    assert await _error(r) == (401, "unauthorized")


async def test_enrollment_mistakes(make_env: EnvFactory) -> None:
    env = await make_env()
    c = env.client
    r = await c.post("/v1/devices/enroll", json={"enrollment_token": "et-wrong"})
    assert await _error(r) == (401, "bad_enrollment_token")
    r = await c.post("/v1/enrollment-tokens", json={"uses": 1}, headers=env.op)
    token = (await r.json())["token"]
    assert (await c.post("/v1/devices/enroll", json={"enrollment_token": token})).status == 201
    r = await c.post("/v1/devices/enroll", json={"enrollment_token": token})
    assert await _error(r) == (401, "bad_enrollment_token")  # used up
    r = await c.post("/v1/devices/enroll", json={"enrollment_token": 5})
    assert await _error(r) == (400, "bad_field")
    r = await c.post("/v1/enrollment-tokens", json={"uses": 0}, headers=env.op)
    assert await _error(r) == (422, "bad_field")
    r = await c.post("/v1/enrollment-tokens", json={"uses": 5, "ttl_s": 1}, headers=env.op)
    token = (await r.json())["token"]
    env.clock.advance(2)
    r = await c.post("/v1/devices/enroll", json={"enrollment_token": token})
    assert await _error(r) == (401, "bad_enrollment_token")  # expired


async def test_malformed_json_and_content_types(make_env: EnvFactory) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    c = env.client
    h = {**device.auth, "Content-Type": "application/json"}
    cases: list[tuple[Any, dict[str, str], tuple[int, str]]] = [
        (b"{not json", h, (400, "bad_json")),
        (b"[1, 2]", h, (400, "bad_json")),
        (b"\xff\xfe", h, (400, "bad_json")),
        (b"[" * 60000, h, (400, "bad_json")),  # deep nesting: RecursionError in json
        (json.dumps({"eligible": True}).encode(), h, (400, "bad_field")),
        (json.dumps({"model": "m", "eligible": "yes"}).encode(), h, (400, "bad_field")),
        (
            json.dumps({"model": "m", "eligible": True, "cached_version": "3"}).encode(),
            h,
            (400, "bad_field"),
        ),
        (json.dumps({"model": "nope", "eligible": True}).encode(), h, (404, "unknown_model")),
        (
            b"model=m",
            {**device.auth, "Content-Type": "text/plain"},
            (415, "unsupported_media_type"),
        ),
        (b"{" + b" " * 70_000 + b"}", h, (413, "too_large")),
    ]
    for body, headers, want in cases:
        r = await c.post("/v1/devices/checkin", data=body, headers=headers)
        assert await _error(r) == want, body[:40]
    r = await c.post(
        "/v1/models/m/promote", data=b"{", headers={**env.op, "Content-Type": "application/json"}
    )
    assert await _error(r) == (400, "bad_json")
    r = await c.post("/v1/models/m/promote", json={"version": "2"}, headers=env.op)
    assert await _error(r) == (400, "bad_field")
    r = await c.patch(
        "/v1/models/m/config", data=b"[]", headers={**env.op, "Content-Type": "application/json"}
    )
    assert await _error(r) == (400, "bad_json")


async def test_unknown_model_version_and_routes(make_env: EnvFactory) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    c = env.client
    assert await _error(await c.get("/v1/models/zz", headers=env.op)) == (404, "unknown_model")
    assert await _error(await c.get("/v1/models/m/versions/5", headers=env.op)) == (
        404,
        "unknown_version",
    )
    assert await _error(await c.get("/v1/models/m/versions/x", headers=env.op)) == (
        400,
        "bad_parameter",
    )
    r = await c.get("/v1/models/m/versions/5/weights", headers=device.auth)
    assert await _error(r) == (404, "unknown_version")
    r = await c.get("/v1/models/zz/versions/1/manifest.json", headers=device.auth)
    assert await _error(r) == (404, "unknown_model")
    assert await _error(await c.get("/v1/nothing")) == (404, "not_found")
    assert await _error(await c.delete("/v1/models", headers=env.op)) == (405, "method_not_allowed")


async def test_update_mistakes_never_touch_the_buffer(make_env: EnvFactory) -> None:
    env = await make_env(buffer_size=10, max_update_norm=5.0)
    (device,) = await env.enroll(1)
    plan = await env.plan(device)
    good = frame(_delta())
    wrong_tensors = frame({"w": np.ones((4, 3), np.float32), "extra": np.ones(2, np.float32)})
    wrong_shape = frame({"w": np.ones((3, 4), np.float32), "b": np.ones(3, np.float32)})
    too_big_norm = frame({k: np.full(s, 10.0, np.float32) for k, s in SHAPES.items()})
    corrupted = bytearray(good)
    corrupted[len(corrupted) // 2] ^= 0xFF
    cases: list[tuple[bytes, dict[str, str], tuple[int, str]]] = [
        (b"garbage", {}, (422, "bad_update")),
        (bytes(corrupted), {}, (422, "bad_update")),
        (good[: len(good) // 2], {}, (422, "bad_update")),
        (wrong_tensors, {}, (422, "bad_update")),
        (wrong_shape, {}, (422, "bad_update")),
        (too_big_norm, {}, (422, "bad_update")),
        (good, {"Content-Type": "application/json"}, (415, "unsupported_media_type")),
        (good, {"Idempotency-Key": "short"}, (400, "bad_header")),
        (good, {"Fedge-Examples": "0"}, (400, "bad_header")),
        (good, {"Fedge-Examples": "ten"}, (400, "bad_header")),
        (good, {"Fedge-Base-Version": "2"}, (400, "bad_header")),
        (good, {"Fedge-Model": "nope"}, (404, "unknown_model")),
        (good, {"Fedge-Assignment": "as-unknown"}, (409, "unknown_assignment")),
        (b"\0" * 200_000, {}, (413, "too_large")),
    ]
    for body, headers, want in cases:
        status, answer = await env.upload(device, plan, body, headers=headers)
        assert (status, answer["error"]["code"]) == want, (headers, answer)
        assert await _count(env) == 0
    text = await (await env.client.get("/metrics")).text()
    assert 'fedge_updates_rejected_total{reason="bad_update"} 6' in text
    # After all that, the plan is still good for a valid update.
    status, _ = await env.upload(device, plan, good)
    assert status == 202 and await _count(env) == 1


async def test_another_devices_assignment_is_refused(make_env: EnvFactory) -> None:
    env = await make_env()
    a, b = await env.enroll(2)
    plan = await env.plan(a)
    status, body = await env.upload(b, plan, frame(_delta()))
    assert (status, body["error"]["code"]) == (409, "unknown_assignment")


async def test_deadline_and_staleness(make_env: EnvFactory) -> None:
    env = await make_env(
        buffer_size=1,
        max_staleness=1,
        report_deadline_s=100.0,
        deadline_grace_s=10.0,
        over_provisioning=10.0,
    )
    late, slow, *others = await env.enroll(4)
    late_plan = await env.plan(late)
    slow_plan = await env.plan(slow)
    for d in others:  # two publications: slow's base (v1) becomes 2 versions old
        status, _ = await env.upload(d, await env.plan(d), frame(_delta()))
        assert status == 202
        await env.service.wait_idle()
    status, body = await env.upload(slow, slow_plan, frame(_delta()))
    assert (status, body["error"]["code"]) == (409, "stale_update")
    env.clock.advance(111.0)
    status, body = await env.upload(late, late_plan, frame(_delta()))
    assert (status, body["error"]["code"]) == (409, "deadline_passed")


async def test_staleness_within_bound_is_down_weighted(make_env: EnvFactory) -> None:
    env = await make_env(buffer_size=1, max_staleness=4, over_provisioning=10.0)
    fresh, stale = await env.enroll(2)
    stale_plan = await env.plan(stale)
    await env.upload(fresh, await env.plan(fresh), frame(_delta()))
    await env.service.wait_idle()
    before = env.service.runtime("m").weights
    status, _ = await env.upload(stale, stale_plan, frame(_delta()), examples=8)
    assert status == 202
    await env.service.wait_idle()
    rt = env.service.runtime("m")
    assert rt.training.version == 3 and rt.training.mean_staleness == 1.0
    # A single update's weighted mean is the update itself, whatever its weight.
    np.testing.assert_allclose(rt.weights["b"], before["b"] + 0.1, rtol=1e-6)


async def _multipart(parts: dict[str, bytes]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, data in parts.items():
        form.add_field(name, data, filename=name, content_type="application/octet-stream")
    return form


@pytest.fixture
def fake_model() -> tuple[bytes, bytes]:
    """A manifest whose sha256 matches some bytes (the model is not a real graph;
    the tests below inject the runtime's answer through the weights_reader seam)."""
    import hashlib

    model = b"not really a tflite file"
    data = synthetic_manifest(SHAPES).to_dict() | {"sha256": hashlib.sha256(model).hexdigest()}
    return json.dumps(data).encode(), model


async def test_push_mistakes(make_env: EnvFactory, fake_model: tuple[bytes, bytes]) -> None:
    env = await make_env()
    manifest, model = fake_model
    c = env.client
    url = "/v1/models/m2/versions"
    r = await c.post(url, data=b"x", headers={**env.op, "Content-Type": "application/octet-stream"})
    assert await _error(r) == (415, "unsupported_media_type")
    r = await c.post(url, data=await _multipart({"manifest": manifest}), headers=env.op)
    assert await _error(r) == (400, "bad_multipart")
    bad = b'--XX\r\nContent-Disposition: form-data; name="manifest"\r\n\r\nabc'  # no closing
    r = await c.post(
        url, data=bad, headers={**env.op, "Content-Type": "multipart/form-data; boundary=XX"}
    )
    assert (await _error(r))[0] == 400
    r = await c.post(url, data=await _multipart({"manifest": b"{", "model": model}), headers=env.op)
    assert await _error(r) == (422, "bad_manifest")
    r = await c.post(
        url, data=await _multipart({"manifest": manifest, "model": model + b"!"}), headers=env.op
    )
    assert await _error(r) == (422, "sha256_mismatch")
    # The real runtime cannot load these bytes: a clear 422, not a 500.
    r = await c.post(
        url, data=await _multipart({"manifest": manifest, "model": model}), headers=env.op
    )
    assert await _error(r) == (422, "model_unloadable")
    r = await c.post(
        "/v1/models/bad%20name/versions",
        data=await _multipart({"manifest": manifest, "model": model}),
        headers=env.op,
    )
    assert await _error(r) == (400, "bad_model_name")
    assert await _error(await c.get("/v1/models/m2", headers=env.op)) == (404, "unknown_model")


async def test_push_weights_must_match_the_manifest(
    aiohttp_client: Any, tmp_path: Any, fake_model: tuple[bytes, bytes]
) -> None:
    from aggregation_service import create_app
    from tests.aggregation_service.conftest import make_config

    def reader(model: bytes, manifest: Any) -> dict[str, np.ndarray]:
        if model.endswith(b"crash"):
            raise ModelRuntimeError("train failed under ai-edge-litert")
        return {"w": np.zeros((4, 3), np.float32), "b": np.zeros(5, np.float32)}

    config = make_config(tmp_path)
    client = await aiohttp_client(
        create_app(config, service=AggregationService(config, weights_reader=reader))
    )
    manifest, model = fake_model
    op = {"Authorization": f"Bearer {OPERATOR}"}
    r = await client.post(
        "/v1/models/m/versions",
        data=await _multipart({"manifest": manifest, "model": model}),
        headers=op,
    )
    status, code = await _error(r)
    assert (status, code) == (422, "weights_mismatch")


async def test_eval_data_mistakes(make_env: EnvFactory) -> None:
    env = await make_env()
    c = env.client
    url = "/v1/models/m/eval-data"
    octet = {**env.op, "Content-Type": "application/octet-stream"}
    r = await c.put(url, data=b"x", headers={**env.op, "Content-Type": "text/csv"})
    assert await _error(r) == (415, "unsupported_media_type")
    assert await _error(await c.put(url, data=b"not an npz", headers=octet)) == (
        400,
        "bad_eval_data",
    )
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 4), np.float32))
    assert await _error(await c.put(url, data=buf.getvalue(), headers=octet)) == (
        422,
        "bad_eval_data",
    )
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 7), np.float32), y=np.zeros(5, np.int32))
    assert await _error(await c.put(url, data=buf.getvalue(), headers=octet)) == (
        422,
        "bad_eval_data",
    )
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 4), np.float32), y=np.zeros(5, np.int32))
    r = await c.put(url, data=buf.getvalue(), headers=octet)
    assert r.status == 200 and (await r.json())["examples"] == 5


async def test_a_bug_is_a_logged_500_with_code_internal(
    make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    env = await make_env()

    def broken() -> dict[str, Any]:
        raise KeyError("a bug")

    env.service.health = broken  # type: ignore[method-assign]
    r = await env.client.get("/healthz")
    assert await _error(r) == (500, "internal")
    assert "a bug" not in (await r.text())  # no internals leak to the client
    assert any("internal error on GET /healthz" in rec.message for rec in caplog.records)
