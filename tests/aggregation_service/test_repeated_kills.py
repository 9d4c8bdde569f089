"""Repeated SIGKILLs of a real server under load from concurrent devices, at
random moments of ingest and publication, each followed by a restart on the
same data directory (the drill: tests/aggregation_service/killdrill.py).
Nothing acknowledged is lost or counted twice, no used assignment comes back,
no used plan takes a second update, devices get plans again after waits of
one pacing interval, and every published version is bit for bit the
uninterrupted FedBuff computation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.aggregation_service.killdrill import PACE_MAX_S, run_kill_drill

pytestmark = pytest.mark.slow


async def test_repeated_sigkills(tmp_path: Path) -> None:
    result = await run_kill_drill(tmp_path, kills=6)
    assert result.kills == 6 and result.exit_code == 0
    assert result.lost == 0 and result.doubled == 0, result
    assert result.revived == 0, result
    assert result.retries_refused == 0 and result.second_updates == 0, result
    assert result.stalled_restarts == 0 and result.max_wait_s <= PACE_MAX_S * 1.5, result
    assert result.versions >= 6 and result.versions_differing == 0, result
