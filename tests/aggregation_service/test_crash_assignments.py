"""After a crash, assignments whose updates were already folded into a version
stay used: none is counted as outstanding again (which would make pace
steering hold the fleet back until their deadlines) and none accepts a second
update under a new idempotency key (one update per plan is the participation
limit DP accounting relies on)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from aggregation_service.errors import ApiError
from aggregation_service.service import AggregationService, UpdateRequest
from fedge.clock import ManualClock
from tests.aggregation_service.conftest import (
    SHAPES,
    frame,
    initial_weights,
    make_config,
    synthetic_manifest,
)

K = 3


async def _service(data: Path, clock: ManualClock) -> AggregationService:
    config = make_config(data, buffer_size=K, over_provisioning=10.0)
    service = AggregationService(config, clock=clock, rng=random.Random(0))
    await service.start()
    return service


def _body(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    delta = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}
    return frame(delta, {"density": 0.5, "bits": 8})


@pytest.mark.parametrize("left_open", [0, 2])
async def test_published_assignments_are_not_revived(tmp_path: Path, left_open: int) -> None:
    clock = ManualClock()
    service = await _service(tmp_path / "data", clock)
    await service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
    token = (await service.create_enrollment_token(1, 3600.0))["token"]
    device = str((await service.enroll(token, {}))["device_id"])
    used: list[tuple[str, int]] = []
    for i in range(2 * K):  # two versions' worth
        plan = (await service.checkin(device, {"model": "m", "eligible": True}))["plan"]
        await service.accept_update(
            UpdateRequest(
                device, "m", plan["assignment_id"], plan["version"], 5, f"key-{i:04d}", _body(i)
            )
        )
        used.append((plan["assignment_id"], plan["version"]))
        if service.runtime("m").sealed:
            await service.wait_idle()
    still_open = []
    for _ in range(left_open):  # devices still training when the process dies
        plan = (await service.checkin(device, {"model": "m", "eligible": True}))["plan"]
        still_open.append(plan["assignment_id"])
    assert service.runtime("m").training.version == 3
    assert len(service.runtime("m").open_assignments) == left_open
    await service.crash_for_tests()

    service = await _service(tmp_path / "data", clock)
    try:
        rt = service.runtime("m")
        assert sorted(rt.open_assignments) == sorted(still_open)
        for i, (assignment, version) in enumerate(used):
            with pytest.raises(ApiError) as refused:
                await service.accept_update(
                    UpdateRequest(device, "m", assignment, version, 5, f"again-{i:04d}", _body(i))
                )
            assert refused.value.status == 409
            assert refused.value.code == "assignment_used"
        assert rt.buffer.count == 0
    finally:
        await service.stop()
