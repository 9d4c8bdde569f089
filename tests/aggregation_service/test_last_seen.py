"""Check-ins record each device's state and last-seen time in batches: at
most one SQLite transaction per TOUCH_FLUSH_S (or TOUCH_FLUSH_MAX devices),
not one UPDATE per check-in, and a graceful stop writes what is pending."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aggregation_service.service import TOUCH_FLUSH_S
from tests.aggregation_service.conftest import EnvFactory


def _rows(data_dir: Path) -> dict[str, tuple[str, float]]:
    with sqlite3.connect(data_dir / "fedge.sqlite3") as conn:
        rows = conn.execute("SELECT device_id, state, last_seen FROM devices").fetchall()
    return {d: (s, t) for d, s, t in rows}


async def test_check_ins_are_written_in_batches_and_on_stop(make_env: EnvFactory) -> None:
    env = await make_env()
    a, b, c = await env.enroll(3)
    await env.checkin(a)  # the first one flushes at once
    assert _rows(env.data_dir)[a.device_id][0] == "eligible"

    env.clock.advance(0.2)
    await env.checkin(b, eligible=False)  # within the window: buffered
    assert _rows(env.data_dir)[b.device_id][0] == "enrolled"

    env.clock.advance(TOUCH_FLUSH_S)
    await env.checkin(c)  # the window passed: b and c in one transaction
    rows = _rows(env.data_dir)
    assert rows[b.device_id][0] == "ineligible" and rows[c.device_id][0] == "eligible"
    assert rows[c.device_id][1] - rows[b.device_id][1] == TOUCH_FLUSH_S

    env.clock.advance(0.1)
    await env.checkin(a, eligible=False)  # buffered again ...
    assert _rows(env.data_dir)[a.device_id][0] == "eligible"
    await env.client.close()  # ... and written by a graceful stop (the app stops the service)
    assert _rows(env.data_dir)[a.device_id][0] == "ineligible"
