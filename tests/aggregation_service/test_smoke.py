from __future__ import annotations

import numpy as np

from tests.aggregation_service.conftest import SHAPES, EnvFactory, frame


async def test_three_updates_publish_version_2(make_env: EnvFactory) -> None:
    env = await make_env()
    devices = await env.enroll(3)
    for d in devices:
        plan = await env.plan(d)
        delta = {k: np.full(s, 0.1, np.float32) for k, s in SHAPES.items()}
        status, body = await env.upload(d, plan, frame(delta))
        assert status == 202, body
    await env.service.wait_idle()
    r = await env.client.get("/v1/models/m", headers=env.op)
    info = await r.json()
    assert info["training_version"] == 2, info
