"""The agent's configuration: one YAML file, parsed once into frozen objects.

Every error names the offending key (``policy.min_battery_pct``) and says what
is expected, so a device owner can fix the file without reading code. See
docs/agent.md for the full reference and an example.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edge_client.errors import ConfigError, UnsafeNameError
from edge_client.paths import safe_name

_HOURS = re.compile(r"^\s*(\d{1,2})(?::00)?\s*-\s*(\d{1,2})(?::00)?\s*$")


class _Section:
    """Reads typed values out of one mapping, naming ``where.key`` in errors and
    rejecting keys nobody reads (a typo must not silently fall back to a default)."""

    def __init__(self, data: Any, where: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.where = where
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def raw(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self.data.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.raw(name, default)
        if value is None:
            if required:
                raise ConfigError(f"{self.key(name)}: required, expected a string")
            return None
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self.key(name)}: expected a non-empty string, got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def number(
        self, name: str, default: float | None, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        value = self.raw(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.key(name)}: expected a number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
                f"≥ {lo}" if lo is not None else f"≤ {hi}"
            )
            raise ConfigError(f"{self.key(name)}: expected a number {bounds}, got {value!r}")
        return float(value)

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.raw(name, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(name)}: expected a list of strings, got {value!r}")
        return tuple(value)

    def sub(self, name: str) -> _Section:
        return _Section(self.raw(name), self.key(name))

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.read)
        if unknown:
            raise ConfigError(
                f"{self.key(unknown[0])}: unknown key (known keys here: "
                f"{', '.join(sorted(self.read))})"
            )


def parse_hours(text: str, where: str) -> tuple[int, int]:
    """``"22-6"`` → (22, 6): training allowed from 22:00 to 06:00 local time."""
    match = _HOURS.match(text)
    if not match:
        raise ConfigError(f"{where}: expected hours like \"22-6\" or \"01:00-05:00\", got {text!r}")
    start, end = int(match.group(1)), int(match.group(2))
    if not (0 <= start <= 24 and 0 <= end <= 24) or start == end:
        raise ConfigError(f"{where}: hours must be 0–24 and differ, got {text!r}")
    return start % 24, end % 24


@dataclass(frozen=True)
class PolicyConfig:
    """When the device may train. ``None`` disables a condition."""

    require_power: bool = True
    min_idle_minutes: float = 0.0
    max_cpu_load: float = 0.5
    min_battery_pct: float | None = None
    max_temperature_c: float | None = None
    unmetered_only: bool = True
    allowed_hours: tuple[int, int] | None = None
    recheck_interval_s: float = 60.0
    # Each re-check waits recheck_interval_s × U(1 − j, 1 + j): devices that
    # booted together (a power cut, a fleet roll-out) drift apart.
    recheck_jitter: float = 0.1
    report_interval_s: float = 1800.0

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "policy") -> PolicyConfig:
        """The ``policy`` section from a plain mapping (a fleet file, a test);
        errors name ``where.key``, like the agent's own config file."""
        return cls.parse(_Section(data, where))

    @classmethod
    def parse(cls, section: _Section) -> PolicyConfig:
        hours_text = section.text("allowed_hours")
        out = cls(
            require_power=section.flag("require_power", True),
            min_idle_minutes=section.number("min_idle_minutes", 0.0, lo=0) or 0.0,
            max_cpu_load=section.number("max_cpu_load", 0.5, lo=0) or 0.0,
            min_battery_pct=section.number("min_battery_pct", None, lo=0, hi=100),
            max_temperature_c=section.number("max_temperature_c", None, lo=-40, hi=150),
            unmetered_only=section.flag("unmetered_only", True),
            allowed_hours=(
                parse_hours(hours_text, section.key("allowed_hours")) if hours_text else None
            ),
            recheck_interval_s=section.number("recheck_interval_s", 60.0, lo=0.01) or 60.0,
            recheck_jitter=section.number("recheck_jitter", 0.1, lo=0, hi=0.9) or 0.0,
            report_interval_s=section.number("report_interval_s", 1800.0, lo=1) or 1800.0,
        )
        section.done()
        return out


PROVIDERS = ("sysfs", "load", "thermal", "network", "termux", "command")


@dataclass(frozen=True)
class EligibilityConfig:
    """Which device-state providers to compose, and their settings."""

    providers: tuple[str, ...] = ("sysfs", "load", "thermal", "network")
    sysfs_root: str = "/"
    metered_interfaces: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    command_timeout_s: float = 10.0
    max_age_s: float = 0.0

    @classmethod
    def parse(cls, section: _Section) -> EligibilityConfig:
        providers = section.strings("providers") if section.has("providers") else cls.providers
        for name in providers:
            if name not in PROVIDERS:
                raise ConfigError(
                    f"{section.key('providers')}: unknown provider {name!r}; expected some of "
                    f"{', '.join(PROVIDERS)}"
                )
        command = section.strings("command")
        if "command" in providers and not command:
            raise ConfigError(
                f"{section.key('command')}: required when the 'command' provider is used "
                "(a command printing a JSON object, as a list of arguments)"
            )
        out = cls(
            providers=providers,
            sysfs_root=section.text("sysfs_root", "/") or "/",
            metered_interfaces=section.strings("metered_interfaces"),
            command=command,
            command_timeout_s=section.number("command_timeout_s", 10.0, lo=0.1) or 10.0,
            max_age_s=section.number("max_age_s", 0.0, lo=0) or 0.0,
        )
        section.done()
        return out


DATA_KINDS = ("npz", "csv", "callable")


@dataclass(frozen=True)
class DataConfig:
    """Where local training data lives. It never leaves the device."""

    kind: str
    path: str | None = None
    label_column: str | None = None
    callable: str | None = None
    python_path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, section: _Section) -> DataConfig:
        kind = section.text("kind", required=True)
        if kind not in DATA_KINDS:
            raise ConfigError(
                f"{section.key('kind')}: expected one of {', '.join(DATA_KINDS)}, got {kind!r}"
            )
        out = cls(
            kind=str(kind),
            path=section.text("path"),
            label_column=section.text("label_column"),
            callable=section.text("callable"),
            python_path=section.strings("python_path"),
        )
        section.done()
        if kind in ("npz", "csv") and not out.path:
            raise ConfigError(f"{section.key('path')}: required for {kind} data")
        if kind == "csv" and not out.label_column:
            raise ConfigError(
                f"{section.key('label_column')}: required for csv data (the column holding y)"
            )
        if kind == "callable" and (not out.callable or ":" not in out.callable):
            raise ConfigError(
                f"{section.key('callable')}: required for callable data, as 'module:function'"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "label_column": self.label_column,
            "callable": self.callable,
            "python_path": list(self.python_path),
        }

    @classmethod
    def from_cli(cls, value: str, label_column: str | None = None) -> DataConfig:
        """``--data``: a directory of .npz files, a .csv file or directory, or
        ``module:function``."""
        path = Path(value)
        if value.endswith(".csv") or (path.is_dir() and any(path.glob("*.csv"))):
            if not label_column:
                raise ConfigError("--label-column: required for CSV data")
            return cls(kind="csv", path=str(path.resolve()), label_column=label_column)
        if path.exists():
            return cls(kind="npz", path=str(path.resolve()))
        if ":" in value and not value.startswith("/"):
            return cls(kind="callable", callable=value)
        raise ConfigError(
            f"--data: {value!r} is neither an existing .npz directory/file, a .csv, "
            "nor 'module:function'"
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """How training runs: in a child process (default; survives native crashes) or
    in the agent's process (the simulator, where spawning per device is too slow)."""

    isolation: str = "process"
    name: str | None = None
    python: str | None = None
    num_threads: int = 1

    @classmethod
    def parse(cls, section: _Section) -> RuntimeConfig:
        isolation = section.text("isolation", "process") or "process"
        if isolation not in ("process", "inprocess"):
            raise ConfigError(
                f"{section.key('isolation')}: expected 'process' or 'inprocess', got {isolation!r}"
            )
        name = section.text("name")
        if name is not None and name not in ("ai-edge-litert", "tflite-runtime", "tensorflow"):
            raise ConfigError(
                f"{section.key('name')}: expected ai-edge-litert, tflite-runtime or tensorflow"
            )
        threads = section.number("num_threads", 1, lo=1, hi=64)
        out = cls(
            isolation=isolation,
            name=name,
            python=section.text("python"),
            num_threads=int(threads or 1),
        )
        section.done()
        return out


@dataclass(frozen=True)
class BackoffConfig:
    """Exponential backoff with full jitter: wait ~ U(0, min(max_s, base_s · 2^n))."""

    base_s: float = 5.0
    max_s: float = 3600.0
    crash_s: float = 3600.0

    @classmethod
    def parse(cls, section: _Section) -> BackoffConfig:
        out = cls(
            base_s=section.number("base_s", 5.0, lo=0.001) or 5.0,
            max_s=section.number("max_s", 3600.0, lo=0.001) or 3600.0,
            crash_s=section.number("crash_s", 3600.0, lo=0) or 0.0,
        )
        section.done()
        if out.max_s < out.base_s:
            raise ConfigError(f"{section.key('max_s')}: must be ≥ backoff.base_s")
        return out


@dataclass(frozen=True)
class AgentConfig:
    server: str
    model: str
    state_dir: Path
    data: DataConfig
    profile: Mapping[str, Any] = field(default_factory=dict)
    policy: PolicyConfig = PolicyConfig()
    eligibility: EligibilityConfig = EligibilityConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    backoff: BackoffConfig = BackoffConfig()
    request_timeout_s: float = 60.0
    seed: int | None = None

    @classmethod
    def from_dict(cls, data: Any, *, base_dir: Path | None = None) -> AgentConfig:
        top = _Section(data, "")
        server = str(top.text("server", required=True))
        parsed = urlparse(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"server: expected an http(s) URL, got {server!r}")
        model = str(top.text("model", required=True))
        try:
            safe_name(model, "model")  # it names files in the state directory
        except UnsafeNameError as exc:
            raise ConfigError(str(exc)) from None
        state_dir = Path(str(top.text("state_dir", required=True))).expanduser()
        if not state_dir.is_absolute() and base_dir is not None:
            state_dir = base_dir / state_dir
        if not top.has("data"):
            raise ConfigError("data: required (kind: npz|csv|callable, and its path or callable)")
        profile = top.raw("profile", {})
        if not isinstance(profile, Mapping):
            raise ConfigError(f"profile: expected a mapping, got {profile!r}")
        seed = top.raw("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigError(f"seed: expected an integer, got {seed!r}")
        out = cls(
            server=server.rstrip("/"),
            model=model,
            state_dir=state_dir,
            data=DataConfig.parse(top.sub("data")),
            profile=dict(profile),
            policy=PolicyConfig.parse(top.sub("policy")),
            eligibility=EligibilityConfig.parse(top.sub("eligibility")),
            runtime=RuntimeConfig.parse(top.sub("runtime")),
            backoff=BackoffConfig.parse(top.sub("backoff")),
            request_timeout_s=top.number("request_timeout_s", 60.0, lo=0.1) or 60.0,
            seed=seed,
        )
        top.done()
        return out

    @classmethod
    def load(cls, path: Path | str) -> AgentConfig:
        import yaml  # noqa: PLC0415  (not at the top: the training worker never reads YAML)

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such config file (run `fedge agent init`)") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read ({exc})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        policy = self.policy
        return {
            "server": self.server,
            "model": self.model,
            "state_dir": str(self.state_dir),
            "data": {k: v for k, v in self.data.to_dict().items() if v not in (None, [])},
            "profile": dict(self.profile),
            "policy": {
                "require_power": policy.require_power,
                "min_idle_minutes": policy.min_idle_minutes,
                "max_cpu_load": policy.max_cpu_load,
                "min_battery_pct": policy.min_battery_pct,
                "max_temperature_c": policy.max_temperature_c,
                "unmetered_only": policy.unmetered_only,
                "allowed_hours": (
                    f"{policy.allowed_hours[0]}-{policy.allowed_hours[1]}"
                    if policy.allowed_hours else None
                ),
                "recheck_interval_s": policy.recheck_interval_s,
                "recheck_jitter": policy.recheck_jitter,
                "report_interval_s": policy.report_interval_s,
            },
            "eligibility": {
                "providers": list(self.eligibility.providers),
                "sysfs_root": self.eligibility.sysfs_root,
                "metered_interfaces": list(self.eligibility.metered_interfaces),
                "command": list(self.eligibility.command),
                "command_timeout_s": self.eligibility.command_timeout_s,
                "max_age_s": self.eligibility.max_age_s,
            },
            "runtime": {
                "isolation": self.runtime.isolation,
                "name": self.runtime.name,
                "python": self.runtime.python,
                "num_threads": self.runtime.num_threads,
            },
            "backoff": {
                "base_s": self.backoff.base_s,
                "max_s": self.backoff.max_s,
                "crash_s": self.backoff.crash_s,
            },
            "request_timeout_s": self.request_timeout_s,
            "seed": self.seed,
        }

    def to_yaml(self) -> str:
        import yaml  # noqa: PLC0415

        return yaml.safe_dump(self.to_dict(), sort_keys=False)
