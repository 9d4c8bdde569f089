"""Config parsing: a good file loads into frozen objects; every bad key is named."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge_client.config import AgentConfig, DataConfig, parse_hours
from edge_client.errors import ConfigError


def base(tmp_path: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": "http://127.0.0.1:8080",
        "model": "digits",
        "state_dir": str(tmp_path / "state"),
        "data": {"kind": "npz", "path": str(tmp_path / "data")},
    }
    data.update(over)
    return data


def test_full_config_round_trips(tmp_path: Path) -> None:
    cfg = AgentConfig.from_dict(base(
        tmp_path,
        policy={"min_idle_minutes": 10, "min_battery_pct": 80, "max_temperature_c": 45,
                "allowed_hours": "22-6"},
        eligibility={"providers": ["sysfs", "load", "command"], "command": ["echo", "{}"],
                     "metered_interfaces": ["wwan0"]},
        runtime={"isolation": "inprocess"},
    ))
    assert cfg.policy.allowed_hours == (22, 6)
    assert cfg.eligibility.metered_interfaces == ("wwan0",)
    path = tmp_path / "agent.yaml"
    path.write_text(cfg.to_yaml())
    assert AgentConfig.load(path) == cfg
    with pytest.raises(AttributeError):
        cfg.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"server": "ftp://x"}, "server: expected an http(s) URL"),
        ({"model": 3}, "model: expected a non-empty string"),
        ({"policy": {"min_battery_pct": 120}}, "policy.min_battery_pct: expected a number between"),
        ({"policy": {"min_idle_minutes": "ten"}}, "policy.min_idle_minutes: expected a number"),
        ({"policy": {"require_power": "yes"}}, "policy.require_power: expected true or false"),
        ({"policy": {"allowed_hours": "late"}}, "policy.allowed_hours: expected hours like"),
        ({"policy": {"min_batery_pct": 50}}, "policy.min_batery_pct: unknown key"),
        ({"eligibility": {"providers": ["battery"]}}, "eligibility.providers: unknown provider"),
        ({"eligibility": {"providers": ["command"]}}, "eligibility.command: required"),
        ({"data": {"kind": "parquet"}}, "data.kind: expected one of npz, csv, callable"),
        ({"data": {"kind": "csv", "path": "/x.csv"}}, "data.label_column: required"),
        ({"data": {"kind": "callable", "callable": "nomodule"}}, "data.callable: required"),
        ({"runtime": {"isolation": "thread"}}, "runtime.isolation: expected 'process' or"),
        ({"backoff": {"base_s": 10, "max_s": 1}}, "backoff.max_s: must be ≥"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"seed": 1.5}, "seed: expected an integer"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AgentConfig.from_dict(base(tmp_path, **override))


def test_missing_required_keys(tmp_path: Path) -> None:
    data = base(tmp_path)
    del data["data"]
    with pytest.raises(ConfigError, match=r"^data: required"):
        AgentConfig.from_dict(data)
    with pytest.raises(ConfigError, match="state_dir: required"):
        AgentConfig.from_dict({"server": "http://x", "model": "m"})


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    with pytest.raises(ConfigError, match="no such config file"):
        AgentConfig.load(path)
    path.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AgentConfig.load(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=f"{path}: : expected a mapping|expected a mapping"):
        AgentConfig.load(path)


def test_hours_and_cli_data(tmp_path: Path) -> None:
    assert parse_hours("01:00-05:00", "h") == (1, 5)
    with pytest.raises(ConfigError, match="differ"):
        parse_hours("3-3", "h")
    (tmp_path / "d").mkdir()
    assert DataConfig.from_cli(str(tmp_path / "d")).kind == "npz"
    assert DataConfig.from_cli("mymod:batches").kind == "callable"
    with pytest.raises(ConfigError, match="--label-column"):
        DataConfig.from_cli(str(tmp_path / "x.csv"))
    with pytest.raises(ConfigError, match="--data"):
        DataConfig.from_cli(str(tmp_path / "missing"))
