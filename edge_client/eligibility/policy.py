"""The eligibility policy: a DeviceState in, ``(eligible, reasons)`` out.

Reason codes are the ones docs/protocol.md lists for check-in. Idle time is
tracked with the clock's monotonic time (a wall-clock jump must not make a busy
device look idle for hours); allowed hours use wall time in the device's local
zone (that is what "train between 1 and 5 am" means): the state's
``utc_offset_h`` when the provider reports one, else the host's zone.

:meth:`Policy.next_change` turns a provider's change hints into the earliest
time the verdict may flip, so an agent whose provider knows when its state
changes sleeps until then instead of polling.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass

from edge_client.config import PolicyConfig
from edge_client.eligibility.state import DeviceState, StateProvider
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


def local_hours(utc_s: float, utc_offset_h: float | None) -> float:
    """Hours since local midnight (0 ≤ h < 24) at ``utc_s``: in the given UTC
    offset, or in the host's zone (with its daylight saving) when None."""
    if utc_offset_h is None:
        tm = _time.localtime(utc_s)
        return tm.tm_hour + tm.tm_min / 60.0 + (tm.tm_sec + utc_s % 1.0) / 3600.0
    return ((utc_s / 3600.0) + utc_offset_h) % 24.0


def hours_until_edge(local_h: float, window: tuple[int, int]) -> float:
    """Hours from ``local_h`` to the next start or end of the window."""
    return min((edge - local_h) % 24.0 or 24.0 for edge in window)


# The DeviceState fields each reason is decided on: the reason cannot clear
# before one of them changes.
_REASON_FIELDS = {
    "not_charging": frozenset({"on_power"}),
    "not_idle": frozenset({"cpu_load", "idle_seconds"}),
    "battery_low": frozenset({"battery_pct"}),
    "too_hot": frozenset({"temperature_c"}),
    "metered_network": frozenset({"metered"}),
}


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
            hour = int(local_hours(self.clock.time(), state.utc_offset_h))
            if not in_hours(hour, cfg.allowed_hours):
                reasons.append(OUTSIDE_HOURS)
        return Eligibility(not reasons, tuple(reasons), state, idle_for)

    def _fields(self) -> frozenset[str]:
        """Every DeviceState field this policy's verdict depends on."""
        cfg = self.config
        fields = set(_REASON_FIELDS[NOT_IDLE])
        if cfg.require_power:
            fields |= _REASON_FIELDS[NOT_CHARGING]
        if cfg.min_battery_pct is not None:
            fields |= _REASON_FIELDS[BATTERY_LOW]
        if cfg.max_temperature_c is not None:
            fields |= _REASON_FIELDS[TOO_HOT]
        if cfg.unmetered_only:
            fields |= _REASON_FIELDS[METERED_NETWORK]
        return frozenset(fields)

    def next_change(self, verdict: Eligibility, provider: StateProvider) -> float | None:
        """The earliest monotonic time at which ``verdict`` (just evaluated)
        may flip, from the provider's change hints; None if it cannot tell.

        Ineligible: every reason must clear, so the device stays ineligible at
        least until the *latest* of the earliest times each reason can clear
        (a reason the provider cannot time is skipped: the others still
        bound it). Eligible: until the *earliest* change of any field the
        verdict rests on (unknown if any is unknown)."""
        cfg = self.config
        now = self.clock.monotonic()
        hours_edge: float | None = None
        if cfg.allowed_hours is not None:
            local = local_hours(self.clock.time(), verdict.state.utc_offset_h)
            hours_edge = now + hours_until_edge(local, cfg.allowed_hours) * 3600.0
        if verdict.eligible:
            change = provider.next_change(self._fields())
            if change is None:
                return None
            return change if hours_edge is None else min(change, hours_edge)
        bounds: list[float] = []
        for reason in verdict.reasons:
            if reason == OUTSIDE_HOURS:
                if hours_edge is not None:
                    bounds.append(hours_edge)
                continue
            fields = _REASON_FIELDS.get(reason)
            if fields is None:
                continue  # runtime_crash and the like: not the provider's business
            change = provider.next_change(fields)
            if change is None:
                continue
            if reason == NOT_IDLE and cfg.min_idle_minutes > 0:
                need = cfg.min_idle_minutes * 60.0
                state = verdict.state
                if state.cpu_load is not None and state.cpu_load > cfg.max_cpu_load:
                    change += need  # busy: an idle spell starts no sooner than `change`
                elif verdict.idle_for_s is not None:  # idle, not yet for long enough
                    change = now + max(0.0, need - verdict.idle_for_s)
                else:
                    continue
            bounds.append(change)
        return max(bounds) if bounds else None
