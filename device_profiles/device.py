"""One simulated device: concrete numbers sampled from its profile, and its
state (power, idle, network) as a pure function of virtual time.

State is drawn per time slot from a counter-based hash of (device seed,
stream, slot), not from a stateful generator, so asking "is device 17 idle at
t?" gives the same answer whatever order the simulator asks in: the run is
deterministic for a seed no matter how events interleave.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from device_profiles.profile import DeviceProfile, PowerSource

_MASK = (1 << 64) - 1
# Battery drain while not charging, percent per hour: an engineering estimate
# for a phone in mixed use (a 5,000 mAh phone lasting about a day).
DRAIN_PCT_PER_HOUR = 4.0
# How long a network attachment (home Wi-Fi vs cellular) lasts before it is
# re-drawn from metered_share: an engineering estimate.
NETWORK_SLOT_S = 2 * 3600.0
# A change is reported at its boundary; whether the state really differs
# there is judged this far past it (float rounding at the boundary itself).
_PAST_EDGE_S = 1e-3


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-distributed 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=1 << 20)
def hash_uniform(seed: int, stream: int, index: int) -> float:
    """A uniform [0, 1) number determined by (seed, stream, index). Memoised:
    a device's state is asked about the same slots many times (its agent,
    the change hints, the eligible count), and three rounds of 64-bit
    arithmetic in Python cost more than a dict lookup."""
    h = _mix(_mix(_mix(seed & _MASK) ^ stream) ^ (index & _MASK))
    return (h >> 11) / float(1 << 53)


def hash_normal(seed: int, stream: int, index: int) -> float:
    u1 = max(hash_uniform(seed, stream, 2 * index), 1e-12)
    u2 = hash_uniform(seed, stream, 2 * index + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


_IDLE, _NET, _NIGHT, _DAYCHARGE, _DAYHOUR = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class DeviceSnapshot:
    """What the device's sensors would report at one instant."""

    on_power: bool
    charging: bool
    battery_pct: float
    idle: bool
    metered: bool
    local_hour: float


@dataclass(frozen=True)
class SimDevice:
    """A concrete device drawn from a profile."""

    index: int
    device_id: str
    profile: DeviceProfile
    seed: int
    speed: float
    memory_mb: float
    down_mbps: float
    up_mbps: float
    rtt_s: float
    loss_rate: float
    timezone_h: float
    battery_mah: float | None
    charge_start_h: float
    charge_hours: float
    examples_weight: float

    @classmethod
    def sample(cls, index: int, profile: DeviceProfile, fleet_seed: int) -> SimDevice:
        seed = _mix(_mix(fleet_seed & _MASK) ^ index)
        rng = np.random.default_rng(seed)
        power = profile.power
        battery = power.battery_mah.sample(rng) if power.battery_mah else None
        start = power.charge_start_h.sample(rng) % 24 if power.charge_start_h else 0.0
        hours = power.charge_hours.sample(rng) if power.charge_hours else 24.0
        return cls(
            index=index,
            device_id=f"{profile.name}-{index:05d}",
            profile=profile,
            seed=seed,
            speed=profile.compute_speed.sample(rng),
            memory_mb=profile.memory_mb.sample(rng),
            down_mbps=profile.down_mbps.sample(rng),
            up_mbps=profile.up_mbps.sample(rng),
            rtt_s=profile.rtt_ms.sample(rng) / 1000.0,
            loss_rate=profile.loss_rate.sample(rng),
            timezone_h=profile.timezone_h.sample(rng),
            battery_mah=battery,
            charge_start_h=start,
            charge_hours=hours,
            examples_weight=profile.examples.sample(rng),
        )

    # -- state as a function of time ---------------------------------------------

    def local_hours(self, utc_s: float) -> float:
        """Hours since the local epoch (UTC seconds shifted by the time zone)."""
        return utc_s / 3600.0 + self.timezone_h

    def is_idle(self, utc_s: float) -> bool:
        local = self.local_hours(utc_s)
        slot = math.floor(local * 60.0 / self.profile.slot_minutes)
        p = self.profile.idle_by_hour[int(local % 24.0)]
        return hash_uniform(self.seed, _IDLE, slot) < p

    def is_metered(self, utc_s: float) -> bool:
        if self.profile.metered_share <= 0.0:
            return False
        slot = math.floor(utc_s / NETWORK_SLOT_S)
        return hash_uniform(self.seed, _NET, slot) < self.profile.metered_share

    def _charge_windows(self, local: float) -> list[tuple[float, float]]:
        """Charging intervals (local hours since epoch) that may cover ``local``:
        the nightly window of this and the previous night, and daytime top-ups."""
        windows = []
        day = math.floor(local / 24.0)
        jitter = self.profile.power.daily_jitter_h
        for d in (day - 1, day):
            start = d * 24.0 + self.charge_start_h + jitter * hash_normal(self.seed, _NIGHT, d)
            windows.append((start, start + self.charge_hours))
            if hash_uniform(self.seed, _DAYCHARGE, d) < self.profile.power.daytime_charge_prob:
                top_up = d * 24.0 + 10.0 + 8.0 * hash_uniform(self.seed, _DAYHOUR, d)
                windows.append((top_up, top_up + 1.0))
        return windows

    def snapshot(self, utc_s: float) -> DeviceSnapshot:
        local = self.local_hours(utc_s)
        if self.profile.power.source is PowerSource.MAINS:
            on_power, charging, battery = True, False, 100.0
        else:
            windows = self._charge_windows(local)
            charging = any(a <= local < b for a, b in windows)
            on_power = charging
            if charging:
                battery = 100.0
            else:
                last_end = max((b for a, b in windows if b <= local), default=local - 12.0)
                battery = max(5.0, 100.0 - DRAIN_PCT_PER_HOUR * (local - last_end))
        return DeviceSnapshot(
            on_power=on_power,
            charging=charging,
            battery_pct=battery,
            idle=self.is_idle(utc_s),
            metered=self.is_metered(utc_s),
            local_hour=local % 24.0,
        )

    # -- when the state changes next -------------------------------------------------
    # Each returns the UTC second of the slot or window boundary at which the
    # state may first differ from the one at ``utc_s`` (math.inf: never). The
    # simulated agents sleep until then instead of polling; each is exact or
    # early, never late, so no eligible moment is missed.

    def next_idle_change(self, utc_s: float, horizon_s: float = 2 * 86400.0) -> float:
        """When ``is_idle`` next flips (``utc_s + horizon_s`` if not within it).
        Idleness is drawn per slot with the probability of the local hour, so
        it can flip only at slot and hour boundaries."""
        current = self.is_idle(utc_s)
        slot_s = self.profile.slot_minutes * 60.0
        offset = self.timezone_h * 3600.0
        t = utc_s + offset  # local seconds
        end = t + horizon_s
        while t < end:
            t = min((math.floor(t / slot_s) + 1) * slot_s, (math.floor(t / 3600.0) + 1) * 3600.0)
            at = t - offset
            if self.is_idle(at + _PAST_EDGE_S) != current:
                return at
        return end - offset

    def next_metered_change(self, utc_s: float, horizon_s: float = 2 * 86400.0) -> float:
        """When ``is_metered`` next flips: at a network-slot boundary."""
        if not 0.0 < self.profile.metered_share < 1.0:
            return math.inf
        current = self.is_metered(utc_s)
        t, end = utc_s, utc_s + horizon_s
        while t < end:
            t = (math.floor(t / NETWORK_SLOT_S) + 1) * NETWORK_SLOT_S
            if self.is_metered(t + _PAST_EDGE_S) != current:
                return t
        return end

    def next_power_change(self, utc_s: float) -> float:
        """The next start or end of a charging window (the battery level's
        trend changes there too). Mains power never changes."""
        if self.profile.power.source is PowerSource.MAINS:
            return math.inf
        local = self.local_hours(utc_s)
        # `snapshot` looks at the windows of today and yesterday, so local
        # midnight is an edge too (tomorrow's window may start before it).
        edges = [(math.floor(local / 24.0) + 1) * 24.0]
        edges += [edge for window in self._charge_windows(local) for edge in window
                  if edge > local]
        return (min(edges) - self.timezone_h) * 3600.0

    def next_battery_change(self, utc_s: float) -> float:
        """When the reported battery level (whole percent, as a phone reports
        it) next changes: the next drop of one percent while discharging, or
        the next charging edge."""
        power = self.next_power_change(utc_s)
        snap = self.snapshot(utc_s)
        if math.isinf(power) or snap.charging or snap.battery_pct <= 5.0:
            return power
        level = math.floor(snap.battery_pct)
        drop = snap.battery_pct - (level - 1 if level == snap.battery_pct else level)
        return min(power, utc_s + drop / DRAIN_PCT_PER_HOUR * 3600.0)

    # -- costs in virtual time ------------------------------------------------------

    def transfer_seconds(self, nbytes: int, *, upload: bool) -> float:
        mbps = self.up_mbps if upload else self.down_mbps
        return self.rtt_s + nbytes * 8.0 / (mbps * 1e6)

    def compute_seconds(self, host_seconds: float) -> float:
        """Virtual time for work that took ``host_seconds`` at calibration speed."""
        return host_seconds / self.speed
