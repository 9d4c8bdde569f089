"""Device state: a frozen snapshot, the provider interface, and composition.

A provider answers one question — "what does the device look like now?" —
with a :class:`DeviceState` in which it fills only the fields it knows
(``None`` = unknown). :class:`CompositeProvider` merges several (later
providers fill gaps, never overwrite), so a Raspberry Pi composes sysfs
power + /proc load + thermal zones + configured network, and an Android
phone composes Termux battery + the same /proc readers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_client.errors import EligibilityError
from fedge.clock import Clock


@dataclass(frozen=True)
class DeviceState:
    """What the policy decides on. ``None`` means "this provider does not know"."""

    on_power: bool | None = None  # on mains or a charger (a battery-less board: True)
    charging: bool | None = None  # the battery is charging
    battery_pct: float | None = None  # None when there is no battery
    cpu_load: float | None = None  # busy fraction of all CPUs, 0–1
    idle_seconds: float | None = None  # how long the device has been idle, if the source knows
    temperature_c: float | None = None  # hottest thermal zone
    metered: bool | None = None  # on a metered network (cellular, hotspot)
    # The device's UTC offset in hours, for the policy's allowed_hours. None:
    # the host's own time zone (an agent runs on the device it describes; a
    # simulator runs thousands of devices in other zones on one host).
    utc_offset_h: float | None = None
    sources: tuple[str, ...] = ()

    def merged(self, other: DeviceState) -> DeviceState:
        """Fields of ``self`` win; ``other`` fills the ones ``self`` does not know."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "sources":
                continue
            mine = getattr(self, f.name)
            values[f.name] = mine if mine is not None else getattr(other, f.name)
        return DeviceState(**values, sources=self.sources + other.sources)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sources"] = list(self.sources)
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str) -> DeviceState:
        """Build a state from JSON (the command provider, profiles); wrong types are errors."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "sources" or f.name not in data or data[f.name] is None:
                continue
            value = data[f.name]
            if f.name in ("on_power", "charging", "metered"):
                if not isinstance(value, bool):
                    raise EligibilityError(f"{source}: {f.name} must be true/false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise EligibilityError(f"{source}: {f.name} must be a number, got {value!r}")
            else:
                value = float(value)
            values[f.name] = value
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise EligibilityError(f"{source}: unknown field(s) {unknown}")
        return cls(**values, sources=(source,))


class StateProvider(Protocol):
    """The eligibility seam: anything that can report the device's state."""

    name: str

    async def read(self) -> DeviceState: ...

    def next_change(self, fields: frozenset[str]) -> float | None:
        """The earliest monotonic time at which any of the named DeviceState
        fields may differ from what :meth:`read` returned now, ``math.inf``
        if they never will, or None if the provider cannot tell. A field that
        grows with time (``idle_seconds`` while idle) changes when its trend
        does (the device turns busy), not every second.

        A provider that knows (a phone woken by the power-connected broadcast,
        a simulated device whose state is a function of time) lets an
        ineligible agent sleep until then instead of re-checking every
        ``recheck_interval_s``. Providers that read sysfs, /proc or a command
        return None: the agent keeps polling them."""
        ...


class PollingProvider:
    """Base of the providers that read the device as it is now (sysfs, /proc,
    a command): they cannot say when the state will change, so the agent
    re-checks them every ``recheck_interval_s``."""

    def next_change(self, fields: frozenset[str]) -> float | None:
        return None


class CompositeProvider:
    """Merges providers in order; one failing provider does not hide the others."""

    name = "composite"

    def __init__(self, providers: Sequence[StateProvider]) -> None:
        self.providers = tuple(providers)
        self.errors: list[str] = []

    async def read(self) -> DeviceState:
        state = DeviceState()
        self.errors = []
        for provider in self.providers:
            try:
                state = state.merged(await provider.read())
            except EligibilityError as exc:
                # Unknown fields stay None, and the policy treats an unknown
                # required condition as not met, so a broken provider never
                # makes a device look eligible.
                self.errors.append(f"{provider.name}: {exc}")
        return state

    def next_change(self, fields: frozenset[str]) -> float | None:
        # Merged fields may come from any provider: known only if all know.
        times = [p.next_change(fields) for p in self.providers]
        return None if any(t is None for t in times) else min(
            (t for t in times if t is not None), default=math.inf)


class CachedProvider:
    """Re-reads a slow provider (a subprocess) at most every ``max_age_s`` of monotonic time."""

    def __init__(self, inner: StateProvider, clock: Clock, max_age_s: float) -> None:
        self.inner = inner
        self.name = inner.name
        self.clock = clock
        self.max_age_s = max_age_s
        self._cached: tuple[float, DeviceState] | None = None

    async def read(self) -> DeviceState:
        now = self.clock.monotonic()
        if self._cached is None or now - self._cached[0] >= self.max_age_s:
            self._cached = (now, await self.inner.read())
        return self._cached[1]

    def next_change(self, fields: frozenset[str]) -> float | None:
        return self.inner.next_change(fields)


class SimulatedStateProvider:
    """The simulator's and the tests' seam: ``schedule(now) -> DeviceState``, where
    ``now`` is the clock's monotonic time. A device profile turns into a schedule
    (charging at night, busy in the day); a test can flip a field mid-training.

    ``changes(now, fields)``, if given, answers :meth:`next_change` for the
    schedule (the simulator derives it from the profile); without it the
    provider cannot tell, and the agent polls as it would a real device."""

    name = "simulated"

    def __init__(
        self,
        schedule: Callable[[float], DeviceState],
        clock: Clock,
        changes: Callable[[float, frozenset[str]], float] | None = None,
    ) -> None:
        self.schedule = schedule
        self.clock = clock
        self.changes = changes
        self.reads = 0

    async def read(self) -> DeviceState:
        self.reads += 1
        state = self.schedule(self.clock.monotonic())
        return state if state.sources else dataclasses.replace(state, sources=("simulated",))

    def next_change(self, fields: frozenset[str]) -> float | None:
        if self.changes is None:
            return None
        return self.changes(self.clock.monotonic(), fields)


class StaticStateProvider:
    """Always the same state (an always-eligible bench rig, a test)."""

    name = "static"

    def __init__(self, state: DeviceState) -> None:
        self.state = state

    async def read(self) -> DeviceState:
        return self.state

    def next_change(self, fields: frozenset[str]) -> float | None:
        return None  # tests swap `state` under it: keep polling


ALWAYS_ELIGIBLE = DeviceState(
    on_power=True, charging=True, battery_pct=100.0, cpu_load=0.0, idle_seconds=1e9,
    temperature_c=30.0, metered=False, sources=("static",),
)
