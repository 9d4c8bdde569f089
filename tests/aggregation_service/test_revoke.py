"""Revoking a device: its token stops working at once (cached
authentications too), its open plans are freed for others, what it already
had acknowledged stays, and nothing else changes."""

from __future__ import annotations

import numpy as np

from tests.aggregation_service.conftest import SHAPES, EnvFactory, frame


def _delta() -> bytes:
    return frame({k: np.full(s, 0.1, np.float32) for k, s in SHAPES.items()})


async def test_revoke_a_device(make_env: EnvFactory) -> None:
    env = await make_env()
    good, bad = await env.enroll(2)
    plan = await env.plan(bad)
    status, _ = await env.upload(bad, plan, _delta(), key="bad-key-00001")
    assert status == 202
    open_plan = await env.plan(bad)  # trained on, never reported
    assert open_plan["assignment_id"] in env.service.runtime("m").open_assignments

    r = await env.client.get("/v1/devices", headers=env.op)
    listed = {d["device_id"]: d for d in (await r.json())["devices"]}
    assert set(listed) == {good.device_id, bad.device_id}

    r = await env.client.post(f"/v1/devices/{bad.device_id}/revoke", headers=env.op)
    assert r.status == 200, await r.text()
    answer = await r.json()
    assert answer == {"device_id": bad.device_id, "state": "revoked", "assignments_freed": 1}
    assert open_plan["assignment_id"] not in env.service.runtime("m").open_assignments
    assert env.service.runtime("m").buffer.count == 1  # its acknowledged update stays

    r = await env.client.post(
        "/v1/devices/checkin", json={"model": "m", "eligible": True}, headers=bad.auth
    )
    assert r.status == 401
    status, body = await env.upload(bad, open_plan, _delta(), key="bad-key-00002")
    assert status == 401, body
    assert (await env.checkin(good))["action"] in ("train", "wait")  # others unaffected

    r = await env.client.get("/v1/devices?state=revoked", headers=env.op)
    assert [d["device_id"] for d in (await r.json())["devices"]] == [bad.device_id]
    # Twice is fine; an unknown device is a 404; a device cannot revoke.
    r = await env.client.post(f"/v1/devices/{bad.device_id}/revoke", headers=env.op)
    assert r.status == 200
    r = await env.client.post("/v1/devices/dev-nope/revoke", headers=env.op)
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_device"
    r = await env.client.post(f"/v1/devices/{good.device_id}/revoke", headers=good.auth)
    assert r.status == 403


async def test_revoked_state_survives_a_late_checkin_flush(make_env: EnvFactory) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    await env.checkin(device)  # a last-seen write still buffered
    r = await env.client.post(f"/v1/devices/{device.device_id}/revoke", headers=env.op)
    assert r.status == 200
    await env.service._flush_seen()
    r = await env.client.get("/v1/devices?state=revoked", headers=env.op)
    assert len((await r.json())["devices"]) == 1


async def test_device_list_parameters(make_env: EnvFactory) -> None:
    env = await make_env()
    for query in ("state=bogus", "limit=0", "limit=x", "limit=1000001"):
        r = await env.client.get(f"/v1/devices?{query}", headers=env.op)
        assert r.status == 400, query
