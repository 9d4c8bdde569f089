"""A simulated device's state is a pure function of time and its seed."""

from __future__ import annotations

import numpy as np

from device_profiles import builtin_profiles
from device_profiles.device import SimDevice
from device_profiles.sim.state import idle_seconds


def _phone(index: int = 0, seed: int = 1) -> SimDevice:
    return SimDevice.sample(index, builtin_profiles()["android-midrange"], seed)


def test_sampling_is_deterministic_per_seed_and_index() -> None:
    assert _phone(3, 7) == _phone(3, 7)
    assert _phone(3, 7).speed != _phone(4, 7).speed


def test_state_does_not_depend_on_query_order() -> None:
    device = _phone()
    times = np.linspace(0, 3 * 86400, 200)
    forward = [device.snapshot(t) for t in times]
    backward = [device.snapshot(t) for t in times[::-1]][::-1]
    assert forward == backward


def test_mains_devices_are_always_powered() -> None:
    pi = SimDevice.sample(0, builtin_profiles()["raspberry-pi-4"], 1)
    assert all(pi.snapshot(h * 3600.0).on_power for h in range(48))


def test_phones_charge_mostly_at_night_local_time() -> None:
    profile = builtin_profiles()["android-midrange"]
    night = day = 0
    for i in range(200):
        device = SimDevice.sample(i, profile, 11)
        for h in range(48):
            utc = h * 3600.0
            snap = device.snapshot(utc)
            if snap.charging:
                if snap.local_hour >= 20 or snap.local_hour < 8:
                    night += 1
                else:
                    day += 1
    assert night > 3 * day


def test_idle_share_follows_the_diurnal_curve() -> None:
    profile = builtin_profiles()["android-midrange"]
    at_night = by_day = 0
    for i in range(100):
        device = SimDevice.sample(i, profile, 5)
        offset = -device.timezone_h * 3600.0  # UTC time of local midnight
        for day in range(10):
            base = offset + day * 86400.0
            at_night += device.is_idle(base + 3 * 3600.0)  # 03:00 local, p = 0.95
            by_day += device.is_idle(base + 19 * 3600.0)  # 19:00 local, p = 0.4
    assert at_night / 1000 > 0.85
    assert 0.3 < by_day / 1000 < 0.5


def test_idle_seconds_is_zero_when_busy_and_grows_while_idle() -> None:
    device = _phone()
    for t in np.linspace(0, 86400, 97):
        if not device.is_idle(t):
            assert idle_seconds(device, t) == 0
        else:
            assert idle_seconds(device, t) >= 0
