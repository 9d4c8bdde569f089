"""Linux providers: sysfs power supplies, /proc load, thermal zones, network.

All take a ``root`` so tests point them at a fake tree under ``tmp_path``.
The files are kernel pseudo-files (no disk I/O), so reading them on the event
loop costs microseconds and never blocks.
"""

from __future__ import annotations

from pathlib import Path

from edge_client.eligibility.state import DeviceState, PollingProvider


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


class SysfsPowerProvider(PollingProvider):
    """``/sys/class/power_supply/*``: mains/USB ``online``, battery ``status`` and
    ``capacity``. A board with no battery (a Raspberry Pi on its power supply)
    counts as powered: if it is running, it has power."""

    name = "sysfs"

    def __init__(self, root: Path | str = "/") -> None:
        self.base = Path(root) / "sys/class/power_supply"

    async def read(self) -> DeviceState:
        mains_online = False
        batteries: list[tuple[str, float | None]] = []
        supplies = sorted(self.base.iterdir()) if self.base.is_dir() else []
        for supply in supplies:
            kind = _read(supply / "type") or ""
            if kind == "Battery":
                if _read(supply / "present") == "0":
                    continue
                capacity = _read(supply / "capacity")
                try:
                    pct = float(capacity) if capacity is not None else None
                except ValueError:
                    pct = None
                batteries.append((_read(supply / "status") or "Unknown", pct))
            elif _read(supply / "online") == "1":
                mains_online = True  # Mains, USB, USB_C, Wireless chargers
        if not batteries:
            return DeviceState(on_power=True, charging=None, battery_pct=None, sources=(self.name,))
        statuses = {status for status, _ in batteries}
        charging = "Charging" in statuses
        # "Full" and "Not charging" are reported while plugged in with a full
        # (or charge-limited) battery: the device is on power.
        on_power = mains_online or charging or bool(statuses & {"Full", "Not charging"})
        levels = [pct for _, pct in batteries if pct is not None]
        return DeviceState(
            on_power=on_power,
            charging=charging or ("Full" in statuses and on_power),
            battery_pct=min(levels) if levels else None,
            sources=(self.name,),
        )


class ProcLoadProvider(PollingProvider):
    """CPU busy fraction from ``/proc/stat`` deltas between reads; the first read
    (no previous sample) uses the 1-minute ``/proc/loadavg`` per CPU instead."""

    name = "load"

    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)
        self._last: tuple[int, int] | None = None

    def _sample(self) -> tuple[tuple[int, int] | None, int]:
        text = _read(self.root / "proc/stat") or ""
        total_idle: tuple[int, int] | None = None
        cpus = 0
        for line in text.splitlines():
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "cpu":
                try:
                    values = [int(v) for v in fields[1:]]
                except ValueError:
                    continue
                idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                total_idle = (sum(values[:8]), idle)
            elif fields[0].startswith("cpu"):
                cpus += 1
        return total_idle, max(cpus, 1)

    async def read(self) -> DeviceState:
        sample, cpus = self._sample()
        load: float | None = None
        if sample is not None and self._last is not None:
            total = sample[0] - self._last[0]
            idle = sample[1] - self._last[1]
            if total > 0:
                load = max(0.0, min(1.0, 1.0 - idle / total))
        if sample is not None:
            self._last = sample
        if load is None:
            text = _read(self.root / "proc/loadavg")
            try:
                # Run-queue length per CPU, capped: above 1 the CPUs are simply all busy.
                load = min(1.0, float(text.split()[0]) / cpus) if text else None
            except (ValueError, IndexError):
                load = None
        return DeviceState(cpu_load=load, sources=(self.name,))


class ThermalProvider(PollingProvider):
    """The hottest ``/sys/class/thermal/thermal_zone*/temp`` (millidegrees C)."""

    name = "thermal"

    def __init__(self, root: Path | str = "/") -> None:
        self.base = Path(root) / "sys/class/thermal"

    async def read(self) -> DeviceState:
        temps = []
        for zone in sorted(self.base.glob("thermal_zone*")):
            text = _read(zone / "temp")
            try:
                value = int(text) / 1000.0 if text else None
            except ValueError:
                value = None
            # Some zones report -273 or absurd values when a sensor is absent.
            if value is not None and -40.0 < value < 200.0:
                temps.append(value)
        return DeviceState(temperature_c=max(temps) if temps else None, sources=(self.name,))


class NetworkProvider(PollingProvider):
    """Metered or not, per interface, as configured (``metered_interfaces``:
    ``wwan0``, ``usb0``, …). The interface carrying the default route decides;
    without one, any listed interface that is up counts as metered."""

    name = "network"

    def __init__(self, metered_interfaces: tuple[str, ...], root: Path | str = "/") -> None:
        self.metered_interfaces = frozenset(metered_interfaces)
        self.root = Path(root)

    def default_interface(self) -> str | None:
        text = _read(self.root / "proc/net/route") or ""
        best: tuple[int, str] | None = None
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 7 and fields[1] == "00000000":
                try:
                    metric = int(fields[6])
                except ValueError:
                    continue
                if best is None or metric < best[0]:
                    best = (metric, fields[0])
        return best[1] if best else None

    async def read(self) -> DeviceState:
        iface = self.default_interface()
        if iface is not None:
            metered = iface in self.metered_interfaces
        else:
            metered = any(
                _read(self.root / "sys/class/net" / name / "operstate") == "up"
                for name in self.metered_interfaces
            )
        return DeviceState(metered=metered, sources=(self.name,))
