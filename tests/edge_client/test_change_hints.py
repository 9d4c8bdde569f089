"""Eligibility change hints: the policy judges allowed hours in the device's own
time zone, tells when its verdict can next flip, and an agent whose provider
announces its changes sleeps until then instead of polling (a phone is woken by
the power-connected broadcast); an agent on a polling provider is unchanged."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from edge_client.agent import INELIGIBLE, UPLOADED
from edge_client.config import PolicyConfig
from edge_client.eligibility import DeviceState, Policy, SimulatedStateProvider
from edge_client.eligibility.policy import (
    METERED_NETWORK,
    NOT_CHARGING,
    NOT_IDLE,
    OUTSIDE_HOURS,
)
from fedge.clock import ManualClock
from tests.edge_client.conftest import AgentFactory, LiveService

MIDNIGHT_UTC = 1_699_920_000.0  # a UTC midnight
READY = DeviceState(on_power=True, cpu_load=0.0, metered=False)


def policy(clock: ManualClock, **section: object) -> Policy:
    return Policy(PolicyConfig.from_dict(section), clock)


@pytest.mark.parametrize(("offset_h", "eligible"), [(4.0, True), (0.0, False), (-3.0, False),
                                                    (5.5, True)])
def test_allowed_hours_are_the_devices_local_hours(offset_h: float, eligible: bool) -> None:
    clock = ManualClock(start=MIDNIGHT_UTC + 22.5 * 3600)  # 22:30 UTC
    verdict = policy(clock, allowed_hours="1-5").evaluate(
        DeviceState(on_power=True, cpu_load=0.0, metered=False, utc_offset_h=offset_h))
    assert verdict.eligible is eligible
    assert (OUTSIDE_HOURS in verdict.reasons) is not eligible


def test_outside_hours_clears_when_the_local_window_opens() -> None:
    clock = ManualClock(start=MIDNIGHT_UTC + 22.5 * 3600)
    pol = policy(clock, allowed_hours="1-5")
    never = SimulatedStateProvider(lambda now: READY, clock, lambda now, fields: math.inf)
    verdict = pol.evaluate(DeviceState(on_power=True, cpu_load=0.0, metered=False,
                                       utc_offset_h=0.0))
    assert verdict.reasons == (OUTSIDE_HOURS,)
    # 22:30 local → the window opens at 01:00, 2.5 h later.
    assert pol.next_change(verdict, never) == pytest.approx(2.5 * 3600)


def test_an_ineligible_verdict_holds_until_the_latest_reason_can_clear() -> None:
    clock = ManualClock()
    state = DeviceState(on_power=False, cpu_load=0.0, metered=True)
    times = {"on_power": 100.0, "metered": 300.0}

    def changes(now: float, fields: frozenset[str]) -> float:
        return min((times.get(f, math.inf) for f in fields), default=math.inf)

    provider = SimulatedStateProvider(lambda now: state, clock, changes)
    pol = policy(clock)
    verdict = pol.evaluate(state)
    assert set(verdict.reasons) == {NOT_CHARGING, METERED_NETWORK}
    # Both must clear: not before the metered network goes away at 300.
    assert pol.next_change(verdict, provider) == 300.0
    # A provider that cannot tell: the agent polls.
    assert pol.next_change(verdict, SimulatedStateProvider(lambda now: state, clock)) is None


def test_an_eligible_verdict_holds_until_the_first_field_changes() -> None:
    clock = ManualClock()
    times = {"on_power": 100.0, "metered": 300.0, "cpu_load": 50.0, "idle_seconds": 50.0}
    provider = SimulatedStateProvider(
        lambda now: READY, clock,
        lambda now, fields: min(times.get(f, math.inf) for f in fields))
    pol = policy(clock)
    verdict = pol.evaluate(READY)
    assert verdict.eligible and pol.next_change(verdict, provider) == 50.0
    # Fields the policy does not look at do not bound it.
    relaxed = policy(clock, require_power=False, unmetered_only=False)
    times["cpu_load"] = times["idle_seconds"] = math.inf
    assert relaxed.next_change(relaxed.evaluate(READY), provider) == math.inf


def test_min_idle_minutes_counts_from_when_the_device_turns_idle() -> None:
    clock = ManualClock()
    busy = DeviceState(on_power=True, cpu_load=0.9, idle_seconds=0.0, metered=False)
    provider = SimulatedStateProvider(lambda now: busy, clock, lambda now, fields: 50.0)
    pol = policy(clock, min_idle_minutes=10)
    verdict = pol.evaluate(busy)
    assert verdict.reasons == (NOT_IDLE,)
    assert pol.next_change(verdict, provider) == 50.0 + 600.0
    # Idle for 4 minutes already: 6 more.
    idle = DeviceState(on_power=True, cpu_load=0.0, idle_seconds=240.0, metered=False)
    assert pol.next_change(pol.evaluate(idle), provider) == pytest.approx(360.0)


PLUG_IN_AT = 5000.0


def _unplugged_until_plug_in(clock: ManualClock, *, hints: bool) -> SimulatedStateProvider:
    def schedule(now: float) -> DeviceState:
        return DeviceState(on_power=now >= PLUG_IN_AT, cpu_load=0.0, metered=False)

    def changes(now: float, fields: frozenset[str]) -> float:
        return PLUG_IN_AT if now < PLUG_IN_AT and "on_power" in fields else math.inf

    return SimulatedStateProvider(schedule, clock, changes if hints else None)


async def test_an_ineligible_agent_sleeps_until_its_state_can_change(
    tmp_path: Path, service: LiveService, digits_dir: Path
) -> None:
    clock = ManualClock()
    hinted = await AgentFactory(tmp_path / "a", service, digits_dir)(
        clock=clock, provider=_unplugged_until_plug_in(clock, hints=True),
        policy={"recheck_interval_s": 60})
    result = await hinted.run_cycle()
    assert result.outcome == INELIGIBLE and result.reasons == (NOT_CHARGING,)
    assert result.wait_s == pytest.approx(PLUG_IN_AT)
    # The same device on a polling provider re-checks every minute (± jitter).
    polled = await AgentFactory(tmp_path / "b", service, digits_dir)(
        clock=clock, provider=_unplugged_until_plug_in(clock, hints=False),
        policy={"recheck_interval_s": 60})
    result = await polled.run_cycle()
    assert result.outcome == INELIGIBLE and 54.0 <= result.wait_s <= 66.0
    await hinted.close()
    await polled.close()


@pytest.mark.parametrize("hints", [True, False])
async def test_training_rereads_the_state_only_when_it_can_have_changed(
    tmp_path: Path, service: LiveService, digits_dir: Path, hints: bool
) -> None:
    clock = ManualClock()
    provider = SimulatedStateProvider(
        lambda now: READY, clock, (lambda now, fields: math.inf) if hints else None)
    agent = await AgentFactory(tmp_path, service, digits_dir)(clock=clock, provider=provider)
    result = await agent.run_cycle()
    await agent.close()
    assert result.outcome == UPLOADED and result.batches == 8
    # The cycle's check, then before every batch (and the final empty one)
    # when polling; with hints once, as nothing can change.
    assert provider.reads == (2 if hints else 1 + result.batches + 1)
