"""The eligibility policy: a DeviceState in, ``(eligible, reasons)`` out.

Reason codes are the ones docs/protocol.md lists for check-in. Idle time is
tracked with the clock's monotonic time (a wall-clock jump must not make a busy
device look idle for hours); allowed hours use wall time in the local zone
(that is what "train between 1 and 5 am" means).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass

from edge_client.config import PolicyConfig
from edge_client.eligibility.state import DeviceState
from fedge.clock import Clock

NOT_CHARGING = "not_charging"
NOT_IDLE = "not_idle"
BATTERY_LOW = "battery_low"
TOO_HOT = "too_hot"
METERED_NETWORK = "metered_network"
OUTSIDE_HOURS = "outside_hours"
RUNTIME_CRASH = "runtime_crash"


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    reasons: tuple[str, ...]
    state: DeviceState
    idle_for_s: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "eligible": self.eligible,
            "reasons": list(self.reasons),
            "state": self.state.to_dict(),
            "idle_for_s": self.idle_for_s,
        }


def in_hours(hour: int, window: tuple[int, int]) -> bool:
    start, end = window
    return start <= hour < end if start < end else hour >= start or hour < end


class Policy:
    """Stateful only in one thing: since when the device has been idle."""

    def __init__(self, config: PolicyConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self._idle_since: float | None = None

    def idle_for(self, state: DeviceState) -> float | None:
        now = self.clock.monotonic()
        if state.idle_seconds is not None:
            # The source knows (user input idle time, a simulated profile).
            return state.idle_seconds
        if state.cpu_load is None:
            self._idle_since = None
            return None
        if state.cpu_load > self.config.max_cpu_load:
            self._idle_since = None
            return 0.0
        if self._idle_since is None:
            self._idle_since = now
        return now - self._idle_since

    def evaluate(self, state: DeviceState) -> Eligibility:
        cfg = self.config
        reasons: list[str] = []
        # Unknown power or idleness counts as "not met": a provider that cannot
        # tell must never make a device train on battery or while in use.
        if cfg.require_power and state.on_power is not True:
            reasons.append(NOT_CHARGING)
        idle_for = self.idle_for(state)
        needs_idle = cfg.min_idle_minutes > 0
        busy = state.cpu_load is not None and state.cpu_load > cfg.max_cpu_load
        if busy or (needs_idle and (idle_for is None or idle_for < cfg.min_idle_minutes * 60)):
            reasons.append(NOT_IDLE)
        # No battery at all (None) is fine: a mains-powered board.
        if (
            cfg.min_battery_pct is not None
            and state.battery_pct is not None
            and state.battery_pct < cfg.min_battery_pct
        ):
            reasons.append(BATTERY_LOW)
        if (
            cfg.max_temperature_c is not None
            and state.temperature_c is not None
            and state.temperature_c > cfg.max_temperature_c
        ):
            reasons.append(TOO_HOT)
        if cfg.unmetered_only and state.metered is True:
            reasons.append(METERED_NETWORK)
        if cfg.allowed_hours is not None:
            hour = _time.localtime(self.clock.time()).tm_hour
            if not in_hours(hour, cfg.allowed_hours):
                reasons.append(OUTSIDE_HOURS)
        return Eligibility(not reasons, tuple(reasons), state, idle_for)
