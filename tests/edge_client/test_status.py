"""The status snapshot's sinks, un-fsynced status writes, jittered re-checks,
PolicyConfig.from_dict and the cache index kept in memory."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from edge_client.agent import INELIGIBLE
from edge_client.cache import ModelCache
from edge_client.config import PolicyConfig
from edge_client.eligibility import DeviceState, StaticStateProvider
from edge_client.errors import ConfigError
from edge_client.protocol import ProtocolClient
from edge_client.status import FileStatus, MemoryStatus
from edge_client.storage import AtomicWriter, StateDir
from edge_client.testing import drive
from fedge.clock import ManualClock

from .conftest import AgentFactory

UNPLUGGED = DeviceState(on_power=False, charging=False, battery_pct=50.0, cpu_load=0.0,
                        idle_seconds=1e9, temperature_c=30.0, metered=False,
                        sources=("static",))


def test_policy_from_dict_defaults_and_values() -> None:
    assert PolicyConfig.from_dict({}) == PolicyConfig()
    assert PolicyConfig.from_dict(None) == PolicyConfig()
    cfg = PolicyConfig.from_dict({"recheck_interval_s": 300, "recheck_jitter": 0.0})
    assert cfg.recheck_interval_s == 300 and cfg.recheck_jitter == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"recheck_jitter": 1.5}, "policy.recheck_jitter: expected a number between"),
        ({"recheck_jitter": -0.1}, "policy.recheck_jitter: expected a number between"),
        ({"recheck_jitter": "some"}, "policy.recheck_jitter: expected a number"),
        ({"rechek_interval_s": 5}, "policy.rechek_interval_s: unknown key"),
        (["require_power"], "policy: expected a mapping"),
    ],
)
def test_policy_from_dict_names_the_bad_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PolicyConfig.from_dict(data)


def test_policy_from_dict_where_names_the_section() -> None:
    with pytest.raises(ConfigError, match=re.escape("fleet.policy.recheck_jitter")):
        PolicyConfig.from_dict({"recheck_jitter": 2}, where="fleet.policy")


def test_status_writes_skip_fsync_but_state_writes_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    state = StateDir(tmp_path / "s", AtomicWriter())
    state.save_status({"state": "training"})
    assert synced == []
    assert state.load_status() == {"state": "training"}
    assert not list((tmp_path / "s").glob("*.tmp"))  # still temp file + rename
    state.save_residual("m", {})
    assert len(synced) == 2  # the file and its directory


def test_file_status_survives_a_full_disk(tmp_path: Path) -> None:
    def full(path: str, flags: int) -> int:
        raise OSError(28, "No space left on device")

    sink = FileStatus(StateDir(tmp_path, AtomicWriter(full)))
    sink.publish(lambda: {"state": "waiting_for_eligibility"})  # logged, not raised
    assert not (tmp_path / "status.json").exists()


async def test_memory_status_builds_on_demand_and_writes_no_file(
    make_agent: AgentFactory,
) -> None:
    clock = ManualClock()
    agent = await make_agent(clock=clock, provider=StaticStateProvider(UNPLUGGED),
                             policy={"report_interval_s": 3600})
    sink = MemoryStatus()
    agent.status = sink
    assert sink.latest() is None
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == INELIGIBLE
    assert sink.publishes >= 2  # started, then the cycle's result
    status = sink.latest()
    assert status is not None
    assert status["state"] == "waiting_for_eligibility"
    assert status["last_results"][-1]["outcome"] == INELIGIBLE
    assert not agent.state.status_path.exists()
    await agent.close()


async def test_default_status_is_the_file(make_agent: AgentFactory) -> None:
    clock = ManualClock()
    agent = await make_agent(clock=clock, provider=StaticStateProvider(UNPLUGGED))
    await drive(clock, agent.run_cycle())
    saved = json.loads(agent.state.status_path.read_text())
    assert saved["last_results"][-1]["outcome"] == INELIGIBLE
    await agent.close()


async def _ineligible_waits(make_agent: AgentFactory, cycles: int, **policy: Any) -> list[float]:
    clock = ManualClock()
    agent = await make_agent(clock=clock, provider=StaticStateProvider(UNPLUGGED),
                             policy={"report_interval_s": 1e6, **policy})
    waits = []
    for _ in range(cycles):
        result = await drive(clock, agent.run_cycle())
        assert result.outcome == INELIGIBLE
        waits.append(result.wait_s)
        clock.advance(result.wait_s)
    await agent.close()
    return waits


async def test_rechecks_are_jittered_within_bounds_and_repeat_for_a_seed(
    make_agent: AgentFactory,
) -> None:
    waits = await _ineligible_waits(make_agent, 12, recheck_interval_s=100)
    assert all(90 <= w <= 110 for w in waits)
    assert len(set(waits)) > 1  # not lockstep
    again = await _ineligible_waits(make_agent, 12, recheck_interval_s=100)
    assert again == waits  # same seed (7), same waits


async def test_zero_jitter_rechecks_at_the_interval(make_agent: AgentFactory) -> None:
    waits = await _ineligible_waits(make_agent, 3, recheck_interval_s=100, recheck_jitter=0)
    assert waits == [100.0, 100.0, 100.0]


def test_cache_index_is_reread_when_the_file_changes(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.prepare()
    cache = ModelCache(state, ProtocolClient(transport=None))  # type: ignore[arg-type]
    (tmp_path / "cache" / "weights" / "m").mkdir(parents=True)
    for v in (3, 4):
        (tmp_path / "cache" / "weights" / "m" / f"{v}.npz").write_bytes(b"x")
    assert cache.cached_version("m") is None
    state.writer.write_json(tmp_path / "cache" / "index.json",
                            {"models": {"m": {"version": 3}}})
    assert cache.cached_version("m") == 3
    assert cache.cached_version("m") == 3  # from memory
    state.writer.write_json(tmp_path / "cache" / "index.json",
                            {"models": {"m": {"version": 4}}})
    assert cache.cached_version("m") == 4
    (tmp_path / "cache" / "index.json").write_text("{not json")
    assert cache.cached_version("m") is None  # corrupt: set aside, empty cache
