"""A device profile as the agent's eligibility input.

``schedule(device, epoch_offset)`` returns the ``now -> DeviceState`` callable
that ``edge_client``'s :class:`SimulatedStateProvider` expects: power and
charging from the nightly window, battery level, idleness from the diurnal
curve (reported both as a CPU load and as how long the device has been idle),
metered network, and a plausible temperature.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from device_profiles.device import SimDevice
from edge_client.eligibility.state import DeviceState

# Idle spells are looked back at most this many slots when computing
# idle_seconds (enough for any min_idle_minutes a policy would use).
_MAX_LOOKBACK_SLOTS = 16
IDLE_CPU_LOAD = 0.05  # a device at rest
BUSY_CPU_LOAD = 0.85  # a user or the device's own workload keeps it busy
TEMPERATURE_C = 35.0  # constant: the profiles carry no thermal model


def idle_seconds(device: SimDevice, utc_s: float) -> float:
    """How long the device has been idle at ``utc_s`` (0 when busy)."""
    if not device.is_idle(utc_s):
        return 0.0
    slot_s = device.profile.slot_minutes * 60.0
    local_s = utc_s + device.timezone_h * 3600.0
    spell_start = math.floor(local_s / slot_s) * slot_s
    for _ in range(_MAX_LOOKBACK_SLOTS):
        previous = spell_start - slot_s
        if not device.is_idle(previous - device.timezone_h * 3600.0 + 1e-6):
            break
        spell_start = previous
    return local_s - spell_start


def schedule(device: SimDevice, epoch_offset_s: float) -> Callable[[float], DeviceState]:
    """``monotonic seconds -> edge_client DeviceState``; ``epoch_offset_s`` maps
    the clock's monotonic 0 to UTC seconds."""
    def state(now: float) -> DeviceState:
        utc = epoch_offset_s + now
        snap = device.snapshot(utc)
        return DeviceState(
            on_power=snap.on_power,
            charging=snap.charging if device.battery_mah is not None else None,
            # Whole percent, as phones report it (and broadcast each change).
            battery_pct=(float(math.floor(snap.battery_pct)) if device.battery_mah is not None
                         else None),
            cpu_load=IDLE_CPU_LOAD if snap.idle else BUSY_CPU_LOAD,
            idle_seconds=idle_seconds(device, utc),
            temperature_c=TEMPERATURE_C,
            metered=snap.metered,
            utc_offset_h=device.timezone_h,  # allowed_hours are the device's local hours
            sources=("simulated",),
        )

    return state


_POWER_FIELDS = frozenset({"on_power", "charging"})
_IDLE_FIELDS = frozenset({"cpu_load", "idle_seconds"})


def changes(device: SimDevice, epoch_offset_s: float) -> Callable[[float, frozenset[str]], float]:
    """``(monotonic now, fields) -> monotonic time`` at which any of the fields
    of ``schedule``'s state may next change (math.inf: never): what
    :class:`SimulatedStateProvider` answers the agent's policy with, so an
    ineligible simulated device sleeps until its state changes (as a phone
    is woken by the power-connected broadcast) instead of polling.
    Temperature and time zone are constant."""
    def next_change(now: float, fields: frozenset[str]) -> float:
        utc = epoch_offset_s + now
        at = math.inf
        if fields & _POWER_FIELDS:
            at = min(at, device.next_power_change(utc))
        if "battery_pct" in fields:
            at = min(at, device.next_battery_change(utc))
        if fields & _IDLE_FIELDS:
            at = min(at, device.next_idle_change(utc))
        if "metered" in fields:
            at = min(at, device.next_metered_change(utc))
        return at - epoch_offset_s

    return next_change
