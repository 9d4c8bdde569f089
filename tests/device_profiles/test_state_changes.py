"""When a simulated device's state next changes: the hints that let its agent
sleep instead of polling must never be late (an eligible moment missed would
change the simulation), and the simulator's eligible-device count built on
them must equal a full count."""

from __future__ import annotations

import math
import random

import pytest
import yaml

from device_profiles.device import SimDevice
from device_profiles.fleet import load_fleet
from device_profiles.profile import builtin_profiles
from device_profiles.sim.runner import (
    _ClockAt,
    _eligibility_counter,
    policy_config,
    sample_devices,
)
from device_profiles.sim.state import changes, schedule
from edge_client.eligibility.policy import Policy

EPOCH = 1_699_920_000.0  # a UTC midnight
PROFILES = ("android-flagship", "android-midrange", "android-lowend", "raspberry-pi-4",
            "industrial-gateway")
FIELDS = {
    "on_power": lambda s: s.on_power,
    "cpu_load": lambda s: s.cpu_load,
    "metered": lambda s: s.metered,
    "battery_pct": lambda s: s.battery_pct,
}


@pytest.mark.parametrize("profile", PROFILES)
def test_no_field_changes_before_its_hint_and_it_can_change_right_after(profile: str) -> None:
    rng = random.Random(profile)
    flips = 0
    for index in range(12):
        device = SimDevice.sample(index, builtin_profiles()[profile], 3)
        state, hint = schedule(device, EPOCH), changes(device, EPOCH)
        for _ in range(6):
            now = rng.uniform(0.0, 3 * 86400.0)
            for field, read in FIELDS.items():
                at = hint(now, frozenset({field}))
                assert at >= now
                before = read(state(now))
                end = min(at, now + 2 * 86400.0)
                # Dense probes up to the hint (the boundary: stop 1 ms short).
                for j in range(1, 200):
                    probe = now + (end - 1e-3 - now) * j / 200
                    assert read(state(probe)) == before, (profile, field, now, at, probe)
                if not math.isinf(at) and read(state(at + 1e-3)) != before:
                    flips += 1
    assert flips > 0  # the hints point at real changes, not just far away


def test_mains_power_and_a_constant_network_never_change() -> None:
    device = SimDevice.sample(0, builtin_profiles()["raspberry-pi-4"], 3)
    hint = changes(device, EPOCH)
    assert hint(100.0, frozenset({"on_power"})) == math.inf
    assert hint(100.0, frozenset({"temperature_c"})) == math.inf


def test_the_state_carries_the_devices_time_zone() -> None:
    device = SimDevice.sample(4, builtin_profiles()["android-midrange"], 3)
    assert schedule(device, EPOCH)(0.0).utc_offset_h == device.timezone_h


@pytest.mark.parametrize("policy", [
    {"require_power": True, "unmetered_only": True},
    {"require_power": True, "unmetered_only": True, "min_idle_minutes": 20,
     "allowed_hours": "22-6"},
    {"require_power": False, "unmetered_only": False, "min_battery_pct": 40},
])
def test_the_eligible_count_equals_a_full_count(tmp_path: object, policy: dict[str, object]
                                                 ) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "fleet.yaml"
    path.write_text(yaml.safe_dump({
        "name": "count", "seed": 9, "duration_h": 30, "total": 60,
        "devices": [{"profile": p, "share": 0.2} for p in PROFILES],
        "dataset": {"name": "digits"}, "partition": {"scheme": "iid"},
        "policy": policy,
    }))
    fleet = load_fleet(path)
    devices = sample_devices(fleet)
    count = _eligibility_counter(fleet, devices, EPOCH)
    clock = _ClockAt(EPOCH)
    full = Policy(policy_config(fleet), clock)
    states = [schedule(d, EPOCH) for d in devices]
    seen = set()
    for step in range(60):
        now = step * 1800.0
        clock.now = now
        expected = sum(full.evaluate(s(now)).eligible for s in states)
        assert count(now) == expected, (step, policy)
        seen.add(expected)
    assert len(seen) > 3  # the fleet's eligibility moves over the day
