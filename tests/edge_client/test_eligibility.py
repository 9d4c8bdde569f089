"""Providers read real-format files from a fake tree; the policy gives reason codes."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from edge_client.config import EligibilityConfig, PolicyConfig
from edge_client.eligibility import (
    CachedProvider,
    CommandProvider,
    CompositeProvider,
    DeviceState,
    NetworkProvider,
    Policy,
    ProcLoadProvider,
    SimulatedStateProvider,
    SysfsPowerProvider,
    TermuxBatteryProvider,
    ThermalProvider,
    build_provider,
)
from edge_client.errors import EligibilityError
from fedge.clock import ManualClock


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


async def test_board_without_battery_counts_as_powered(tmp_path: Path) -> None:
    state = await SysfsPowerProvider(tmp_path).read()
    assert state.on_power is True and state.battery_pct is None
    write(tmp_path, "sys/class/power_supply/usb/type", "USB")
    write(tmp_path, "sys/class/power_supply/usb/online", "0")
    assert (await SysfsPowerProvider(tmp_path).read()).on_power is True


@pytest.mark.parametrize(
    ("ac_online", "status", "on_power", "charging"),
    [("1", "Charging", True, True), ("0", "Discharging", False, False),
     ("1", "Full", True, True), ("0", "Not charging", True, False)],
)
async def test_laptop_battery_states(
    tmp_path: Path, ac_online: str, status: str, on_power: bool, charging: bool
) -> None:
    write(tmp_path, "sys/class/power_supply/AC/type", "Mains")
    write(tmp_path, "sys/class/power_supply/AC/online", ac_online)
    write(tmp_path, "sys/class/power_supply/BAT0/type", "Battery")
    write(tmp_path, "sys/class/power_supply/BAT0/status", status)
    write(tmp_path, "sys/class/power_supply/BAT0/capacity", "57")
    state = await SysfsPowerProvider(tmp_path).read()
    assert (state.on_power, state.charging, state.battery_pct) == (on_power, charging, 57.0)


async def test_proc_load_uses_stat_deltas_after_loadavg(tmp_path: Path) -> None:
    write(tmp_path, "proc/loadavg", "1.00 0.5 0.2 1/100 42")
    stat_line = "cpu  {u} 0 0 {i} 0 0 0 0 0 0\ncpu0 1 0 0 1 0 0 0 0 0 0\ncpu1 1 0 0 1 0 0 0 0 0 0"
    write(tmp_path, "proc/stat", stat_line.format(u=100, i=900))
    provider = ProcLoadProvider(tmp_path)
    assert (await provider.read()).cpu_load == pytest.approx(0.5)  # loadavg 1.0 / 2 CPUs
    write(tmp_path, "proc/stat", stat_line.format(u=190, i=910))  # 90 busy of 100 ticks
    assert (await provider.read()).cpu_load == pytest.approx(0.9)


async def test_thermal_takes_hottest_sane_zone(tmp_path: Path) -> None:
    write(tmp_path, "sys/class/thermal/thermal_zone0/temp", "41000")
    write(tmp_path, "sys/class/thermal/thermal_zone1/temp", "67500")
    write(tmp_path, "sys/class/thermal/thermal_zone2/temp", "-273000")
    assert (await ThermalProvider(tmp_path).read()).temperature_c == 67.5
    assert (await ThermalProvider(tmp_path / "none").read()).temperature_c is None


async def test_network_metered_by_default_route(tmp_path: Path) -> None:
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask"
    write(tmp_path, "proc/net/route", f"{header}\nwlan0\t00000000\t0101A8C0\t3\t0\t0\t600\t0\n"
          "wwan0\t00000000\t01010A0A\t3\t0\t0\t100\t0")
    assert (await NetworkProvider(("wwan0",), tmp_path).read()).metered is True
    assert (await NetworkProvider(("usb0",), tmp_path).read()).metered is False


def script(tmp_path: Path, name: str, output: str, code: int = 0) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\n"
                    f"sys.exit({code})\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


async def test_termux_battery_status(tmp_path: Path) -> None:
    out = json.dumps({"health": "GOOD", "percentage": 83, "plugged": "PLUGGED_AC",
                      "status": "CHARGING", "temperature": 31.5})
    state = await TermuxBatteryProvider((script(tmp_path, "termux", out),)).read()
    assert (state.on_power, state.charging, state.battery_pct, state.temperature_c) == (
        True, True, 83.0, 31.5)
    out = json.dumps({"percentage": 40, "plugged": "UNPLUGGED", "status": "DISCHARGING"})
    assert (await TermuxBatteryProvider((script(tmp_path, "t2", out),)).read()).on_power is False


@pytest.mark.parametrize(
    ("output", "code", "message"),
    [("not json", 0, "did not print JSON"), ("[1]", 0, "expected a JSON object"),
     ('{"battery_pct": "full"}', 0, "must be a number"), ('{"on_power": 1}', 0, "true/false"),
     ('{"wattage": 3}', 0, "unknown field"), ("{}", 3, "exited with 3")],
)
async def test_command_provider_bad_output(
    tmp_path: Path, output: str, code: int, message: str
) -> None:
    with pytest.raises(EligibilityError, match=message):
        await CommandProvider([script(tmp_path, "cmd", output, code)]).read()


async def test_command_provider_missing_or_slow(tmp_path: Path) -> None:
    with pytest.raises(EligibilityError, match="cannot run"):
        await CommandProvider([str(tmp_path / "absent")]).read()
    slow = tmp_path / "slow"
    slow.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    slow.chmod(0o755)
    with pytest.raises(EligibilityError, match="did not answer"):
        await CommandProvider([str(slow)], timeout_s=0.3).read()


async def test_composite_fills_gaps_and_survives_a_broken_provider(tmp_path: Path) -> None:
    clock = ManualClock()
    good = SimulatedStateProvider(lambda now: DeviceState(on_power=True, cpu_load=0.1), clock)
    broken = CommandProvider([str(tmp_path / "absent")])
    composite = CompositeProvider([broken, good, ThermalProvider(tmp_path)])
    state = await composite.read()
    assert state.on_power is True and state.cpu_load == 0.1
    assert composite.errors and "command" in composite.errors[0]


async def test_cached_provider_rereads_after_max_age() -> None:
    clock = ManualClock()
    inner = SimulatedStateProvider(lambda now: DeviceState(cpu_load=now), clock)
    cached = CachedProvider(inner, clock, 60)
    await cached.read()
    clock.advance(30)
    assert (await cached.read()).cpu_load == 0 and inner.reads == 1
    clock.advance(30)
    assert (await cached.read()).cpu_load == 60 and inner.reads == 2


def test_build_provider_from_config(tmp_path: Path) -> None:
    composite = build_provider(
        EligibilityConfig(providers=("sysfs", "termux", "command"), command=("x",), max_age_s=5),
        ManualClock(),
    )
    assert [p.name for p in composite.providers] == ["sysfs", "termux", "command"]
    assert isinstance(composite.providers[1], CachedProvider)


GOOD = DeviceState(on_power=True, charging=True, battery_pct=90, cpu_load=0.05,
                   temperature_c=40, metered=False)


@pytest.mark.parametrize(
    ("change", "reason"),
    [({"on_power": False}, "not_charging"), ({"on_power": None}, "not_charging"),
     ({"cpu_load": 0.9}, "not_idle"), ({"battery_pct": 50}, "battery_low"),
     ({"temperature_c": 70}, "too_hot"), ({"metered": True}, "metered_network")],
)
def test_policy_reason_codes(change: dict[str, object], reason: str) -> None:
    policy = Policy(PolicyConfig(min_battery_pct=80, max_temperature_c=45), ManualClock())
    assert policy.evaluate(GOOD).eligible
    result = policy.evaluate(DeviceState(**{**GOOD.__dict__, **change}))
    assert not result.eligible and result.reasons == (reason,)


def test_idle_window_uses_monotonic_time_not_wall_clock() -> None:
    clock = ManualClock()
    policy = Policy(PolicyConfig(min_idle_minutes=10), clock)
    assert policy.evaluate(GOOD).reasons == ("not_idle",)  # idle for 0 s so far
    clock.wall_offset = 3 * 3600  # the wall clock jumps forward three hours
    assert policy.evaluate(GOOD).reasons == ("not_idle",)
    clock.advance(9 * 60)
    assert not policy.evaluate(GOOD).eligible
    clock.wall_offset = -86400  # …and back a day: the window is unaffected
    clock.advance(61)
    assert policy.evaluate(GOOD).eligible
    busy = DeviceState(**{**GOOD.__dict__, "cpu_load": 0.9})
    assert policy.evaluate(busy).reasons == ("not_idle",)
    assert policy.evaluate(GOOD).reasons == ("not_idle",)  # the window restarts


def test_allowed_hours_use_wall_time() -> None:
    import time

    clock = ManualClock(start=0.0)
    hour_now = time.localtime(clock.time()).tm_hour
    window = (hour_now, (hour_now + 2) % 24)
    policy = Policy(PolicyConfig(allowed_hours=window), clock)
    assert policy.evaluate(GOOD).eligible
    clock.wall_offset = 5 * 3600  # wall clock jumps: allowed hours follow it
    assert policy.evaluate(GOOD).reasons == ("outside_hours",)
