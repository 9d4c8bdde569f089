"""Idempotency keys the store knows, read while the upload waits for the intake.

A new upload asks the store about its key when it arrives and queues for the
intake at once; the intake reads the answer before it admits the upload. The
answers must be what they were when the lookup came first: a key folded into a
version long ago is a duplicate (same update id, counted once) whether its
assignment is gone or open, and a store failure is a 503 that sums nothing.
"""

from __future__ import annotations

import numpy as np

from aggregation_service.errors import StorageError
from tests.aggregation_service.conftest import SHAPES, Device, Env, EnvFactory, frame


def _delta(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


async def _fill_buffer(env: Env, devices: list[Device], value: float) -> list[str]:
    """One accepted upload per device (buffer_size = len(devices): one version)."""
    ids = []
    for d in devices:
        status, body = await env.upload(d, await env.plan(d), frame(_delta(value)))
        assert status == 202, body
        ids.append(body["update_id"])
    await env.service.wait_idle()
    return ids


async def test_a_retry_of_an_update_published_versions_ago_is_a_duplicate(
    make_env: EnvFactory,
) -> None:
    env = await make_env(buffer_size=2)
    a, b = await env.enroll(2)
    plan = await env.plan(a)
    body = frame(_delta(0.1))
    status, first = await env.upload(a, plan, body, key="old-key-00001")
    assert status == 202
    await _fill_buffer(env, [b], 0.2)  # version 2 holds the key
    await _fill_buffer(env, [a, b], 0.3)  # version 3: the key is only in the store now
    rt = env.service.runtime("m")
    assert "old-key-00001" not in rt.recent_keys and "old-key-00001" not in rt.pending_keys
    duplicates = env.service.metrics.updates_duplicate.get("m")
    # The assignment is gone (its update was accepted): still the same answer.
    status, again = await env.upload(a, plan, body, key="old-key-00001")
    assert (status, again["update_id"], again["duplicate"]) == (202, first["update_id"], True)
    assert env.service.metrics.updates_duplicate.get("m") == duplicates + 1
    assert env.service.metrics.updates_rejected.get("assignment_used") == 0


async def test_a_published_key_on_an_open_assignment_is_answered_not_summed(
    make_env: EnvFactory,
) -> None:
    """A client reusing an old key for a new plan: the intake finds the key in
    the store and answers the duplicate; the buffer does not move."""
    env = await make_env(buffer_size=2)
    a, b = await env.enroll(2)
    status, first = await env.upload(a, await env.plan(a), frame(_delta(0.1)), key="reused-key-01")
    assert status == 202
    await _fill_buffer(env, [b], 0.2)
    await _fill_buffer(env, [a, b], 0.3)
    rt = env.service.runtime("m")
    before = {k: v.copy() for k, v in rt.buffer.sums.items()}
    fresh = await env.plan(a)  # an open assignment
    status, again = await env.upload(a, fresh, frame(_delta(5.0)), key="reused-key-01")
    assert (status, again["update_id"], again["duplicate"]) == (202, first["update_id"], True)
    assert rt.buffer.count == 0
    assert all(np.array_equal(before[k], rt.buffer.sums[k]) for k in before)
    assert fresh["assignment_id"] in rt.open_assignments  # still free for a real update
    status, real = await env.upload(a, fresh, frame(_delta(5.0)))
    assert (status, real["duplicate"]) == (202, False)


async def test_a_store_failure_on_the_key_lookup_is_a_503_and_sums_nothing(
    make_env: EnvFactory,
) -> None:
    env = await make_env(buffer_size=4)
    (a,) = await env.enroll(1)
    plan = await env.plan(a)
    rt = env.service.runtime("m")

    def broken(key: str) -> str | None:
        raise StorageError("database disk image is malformed")

    env.service.store.published_key = broken  # type: ignore[method-assign]
    status, body = await env.upload(a, plan, frame(_delta(0.1)))
    assert status == 503 and body["error"]["code"] == "storage_unavailable"
    assert rt.buffer.count == 0 and not any(v.any() for v in rt.buffer.sums.values())
    assert plan["assignment_id"] in rt.open_assignments
