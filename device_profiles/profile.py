"""Device profiles: one YAML file per device class, parsed into frozen objects.

``load_profile(path)`` validates everything before a run starts; errors name
the file, the key and what is expected. Built-in profiles live in
``device_profiles/profiles/`` and are found by name. docs/device-profiles.md
lists every number with its source.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from device_profiles.dist import POSITIVE, Dist, parse_dist
from device_profiles.errors import ProfileError


class PowerSource(enum.Enum):
    MAINS = "mains"  # always powered: never "not_charging"
    BATTERY = "battery"  # charges in a nightly window (plus optional daytime top-ups)


@dataclass(frozen=True)
class PowerSpec:
    source: PowerSource
    battery_mah: Dist | None = None
    charge_start_h: Dist | None = None  # local hour the nightly charge starts
    charge_hours: Dist | None = None  # its length
    daily_jitter_h: float = 0.0  # day-to-day shift of the window (normal sd)
    daytime_charge_prob: float = 0.0  # chance of one extra daytime charge per day


@dataclass(frozen=True)
class DeviceProfile:
    """A device class. Numbers that vary between devices are distributions;
    :mod:`device_profiles.device` samples one concrete device from them."""

    name: str
    description: str
    source: str  # the file it came from (for messages)
    compute_speed: Dist  # train-step speed relative to the host calibration run
    memory_mb: Dist
    down_mbps: Dist
    up_mbps: Dist
    rtt_ms: Dist
    loss_rate: Dist  # probability that one request fails in transit
    metered_share: float  # share of time on a metered network
    power: PowerSpec
    timezone_h: Dist  # UTC offset in hours
    idle_by_hour: tuple[float, ...]  # P(idle) for each local hour 0..23
    slot_minutes: float  # idle/busy/metered state is drawn per slot
    dropout_per_hour: float  # hazard of dropping out while training
    examples: Dist  # relative local data size (quantity skew)


_TOP_KEYS = {
    "name", "description", "compute", "memory_mb", "network", "power", "availability",
    "dropout_per_hour", "data",
}


def _mapping(data: Any, source: str, key: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ProfileError(source, key, f"expected a mapping, got {type(data).__name__}")
    return data


def _only(data: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ProfileError(
                source, f"{prefix}{key}", f"unknown key; expected one of {sorted(allowed)}"
            )


def _get(data: Mapping[str, Any], key: str, source: str, where: str) -> Any:
    if key not in data:
        prefix = f"{where}." if where else ""
        raise ProfileError(source, f"{prefix}{key}", "missing (required)")
    return data[key]


def _fraction(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ProfileError(source, key, f"expected a number in [0, 1], got {value!r}")
    return float(value)


def _non_negative(value: Any, source: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ProfileError(source, key, f"expected a number ≥ 0, got {value!r}")
    return float(value)


def profile_from_dict(data: Any, source: str) -> DeviceProfile:
    """Validate a parsed profile document; ``source`` names it in errors."""
    data = _mapping(data, source, "<top level>")
    _only(data, _TOP_KEYS, source, "")
    name = _get(data, "name", source, "")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ProfileError(
            source, "name", f"expected letters, digits, '-', '_' or '.', got {name!r}"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ProfileError(source, "description", "expected a string")

    compute = _mapping(_get(data, "compute", source, ""), source, "compute")
    _only(compute, {"speed"}, source, "compute")
    speed = parse_dist(_get(compute, "speed", source, "compute"), source, "compute.speed",
                       minimum=POSITIVE)

    memory = parse_dist(_get(data, "memory_mb", source, ""), source, "memory_mb", minimum=16)

    net = _mapping(_get(data, "network", source, ""), source, "network")
    _only(net, {"down_mbps", "up_mbps", "rtt_ms", "loss_rate", "metered_share"}, source, "network")
    down = parse_dist(_get(net, "down_mbps", source, "network"), source, "network.down_mbps",
                      minimum=POSITIVE)
    up = parse_dist(_get(net, "up_mbps", source, "network"), source, "network.up_mbps",
                    minimum=POSITIVE)
    rtt = parse_dist(_get(net, "rtt_ms", source, "network"), source, "network.rtt_ms", minimum=0)
    loss = parse_dist(_get(net, "loss_rate", source, "network"), source, "network.loss_rate",
                      minimum=0, maximum=0.5)
    metered = _fraction(_get(net, "metered_share", source, "network"), source,
                        "network.metered_share")

    power_raw = _mapping(_get(data, "power", source, ""), source, "power")
    power = _power(power_raw, source)

    avail = _mapping(_get(data, "availability", source, ""), source, "availability")
    _only(avail, {"timezone_h", "idle_by_hour", "slot_minutes"}, source, "availability")
    tz = parse_dist(_get(avail, "timezone_h", source, "availability"), source,
                    "availability.timezone_h", minimum=-12, maximum=14)
    hours = _get(avail, "idle_by_hour", source, "availability")
    if not isinstance(hours, list) or len(hours) != 24:
        raise ProfileError(source, "availability.idle_by_hour",
                           "expected a list of 24 probabilities (local hours 0 to 23)")
    idle = tuple(_fraction(h, source, f"availability.idle_by_hour[{i}]")
                 for i, h in enumerate(hours))
    slot = _non_negative(avail.get("slot_minutes", 15), source, "availability.slot_minutes")
    if not 1 <= slot <= 24 * 60:
        raise ProfileError(source, "availability.slot_minutes",
                           f"expected minutes in [1, 1440], got {slot:g}")

    dropout = _non_negative(_get(data, "dropout_per_hour", source, ""), source,
                            "dropout_per_hour")
    data_raw = _mapping(_get(data, "data", source, ""), source, "data")
    _only(data_raw, {"examples"}, source, "data")
    examples = parse_dist(_get(data_raw, "examples", source, "data"), source, "data.examples",
                          minimum=POSITIVE)
    return DeviceProfile(
        name=name, description=description, source=source, compute_speed=speed,
        memory_mb=memory, down_mbps=down, up_mbps=up, rtt_ms=rtt, loss_rate=loss,
        metered_share=metered, power=power, timezone_h=tz, idle_by_hour=idle,
        slot_minutes=slot, dropout_per_hour=dropout, examples=examples,
    )


def _power(raw: Mapping[str, Any], source: str) -> PowerSpec:
    allowed = {"source", "battery_mah", "charge_start_h", "charge_hours", "daily_jitter_h",
               "daytime_charge_prob"}
    _only(raw, allowed, source, "power")
    kind = _get(raw, "source", source, "power")
    try:
        power_source = PowerSource(kind)
    except ValueError:
        raise ProfileError(source, "power.source",
                           f"expected 'mains' or 'battery', got {kind!r}") from None
    if power_source is PowerSource.MAINS:
        extra = sorted(set(raw) - {"source"})
        if extra:
            raise ProfileError(source, f"power.{extra[0]}",
                               "only battery-powered profiles have a charging pattern")
        return PowerSpec(PowerSource.MAINS)
    return PowerSpec(
        PowerSource.BATTERY,
        battery_mah=parse_dist(_get(raw, "battery_mah", source, "power"), source,
                               "power.battery_mah", minimum=1),
        charge_start_h=parse_dist(_get(raw, "charge_start_h", source, "power"), source,
                                  "power.charge_start_h"),
        charge_hours=parse_dist(_get(raw, "charge_hours", source, "power"), source,
                                "power.charge_hours", minimum=0, maximum=24),
        daily_jitter_h=_non_negative(raw.get("daily_jitter_h", 0.0), source,
                                     "power.daily_jitter_h"),
        daytime_charge_prob=_fraction(raw.get("daytime_charge_prob", 0.0), source,
                                      "power.daytime_charge_prob"),
    )


def read_yaml(path: Path) -> Any:
    """Read a YAML file, translating I/O and syntax errors into ProfileError."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(source, "<file>", f"cannot read: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<file>"
        raise ProfileError(source, where, f"invalid YAML: {exc}") from exc


def load_profile(path: Path | str) -> DeviceProfile:
    path = Path(path)
    return profile_from_dict(read_yaml(path), str(path))


@functools.cache
def builtin_profiles() -> Mapping[str, DeviceProfile]:
    """The profiles shipped in the package, by name."""
    found: dict[str, DeviceProfile] = {}
    for entry in sorted((Path(__file__).parent / "profiles").glob("*.yaml")):
        profile = load_profile(entry)
        found[profile.name] = profile
    return found


def resolve_profile(ref: str, base_dir: Path, source: str, key: str) -> DeviceProfile:
    """A built-in profile by name, or a YAML file relative to the fleet file."""
    builtins = builtin_profiles()
    if ref in builtins:
        return builtins[ref]
    if ref.endswith((".yaml", ".yml")):
        path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
        if not path.is_file():
            raise ProfileError(source, key, f"profile file {str(path)!r} does not exist")
        return load_profile(path)
    raise ProfileError(
        source, key,
        f"unknown profile {ref!r}; expected a built-in name ({', '.join(sorted(builtins))}) "
        "or a path to a .yaml file",
    )
