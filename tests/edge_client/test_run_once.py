"""``fedge agent run --once`` as a developer tries it: its exit status tells
"did work" (0) from "nothing to do now" (3), "a mistake of yours" (2) and
"something else failed" (1); ``--ignore-eligibility`` trains on a busy
machine, says so, and is refused by the installed service. Real processes
against the real service on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edge_client.outcome import Outcome
from edge_client.service_unit import SERVICE_ENV, unit_text
from tests.edge_client.conftest import LiveService
from tests.edge_client.test_cli import fedge, init

# A development machine: on mains, load 4 on a 4-core box, on Wi-Fi.
BUSY = {"on_power": True, "cpu_load": 1.0, "metered": False}


def busy_machine(config: Path, tmp_path: Path, **changes: Any) -> None:
    """The agent's view of the device comes from a command that says it is busy."""
    data = yaml.safe_load(config.read_text())
    data["eligibility"] = {"providers": ["command"], "command": [
        sys.executable, "-c", f"print({json.dumps(json.dumps(BUSY))})"]}
    data["policy"]["max_cpu_load"] = 0.5
    data.update(changes)
    config.write_text(yaml.safe_dump(data))


async def test_busy_machine_exits_3_and_ignore_eligibility_trains(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    busy_machine(config, tmp_path)

    code, out, err = await fedge("agent", "run", "--once", "--config", str(config))
    assert code == 3, out + err
    result = json.loads(out)
    assert result["outcome"] == "ineligible" and "not_idle" in result["reasons"]

    code, out, err = await fedge("agent", "run", "--once", "--ignore-eligibility",
                                 "--config", str(config))
    assert code == 0, out + err
    assert json.loads(out)["outcome"] == "uploaded"
    assert "--ignore-eligibility" in err and "not_idle" in err  # logged, with what it ignored
    assert await service.accepted() == 1


async def test_the_installed_service_refuses_ignore_eligibility(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    unit = unit_text(config, user=True)
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert f"Environment={SERVICE_ENV}=1" in unit and "--ignore-eligibility" not in exec_start
    code, out, err = await fedge("agent", "run", "--once", "--ignore-eligibility",
                                 "--config", str(config), env={SERVICE_ENV: "1"})
    assert code == 2 and "refused in the installed service" in err, out + err
    assert "Traceback" not in err


async def test_data_that_does_not_fit_exits_2(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    busy_machine(config, tmp_path)
    # The data changes after enrollment: 63 features where the model takes 64.
    for file in digits_dir.glob("*.npz"):
        with np.load(file) as npz:
            x, y = npz["x"][:, :63], npz["y"]
        np.savez(file, x=x, y=y)
    code, out, err = await fedge("agent", "run", "--once", "--ignore-eligibility",
                                 "--config", str(config))
    assert code == 2, out + err
    result = json.loads(out)
    assert result["outcome"] == "data_error" and "(63,)" in result["detail"]
    assert "ERROR" in err and "fedge agent check" in err


async def test_an_unknown_model_exits_2_with_an_error_line(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    busy_machine(config, tmp_path, model="digitz")
    code, out, err = await fedge("agent", "run", "--once", "--ignore-eligibility",
                                 "--config", str(config))
    assert code == 2, out + err
    assert json.loads(out)["outcome"] == "unknown_model"
    line = next(ln for ln in err.splitlines() if "has no model 'digitz'" in ln)
    assert " ERROR " in line and "fedge models list" in line


async def test_an_unreachable_server_exits_1(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    busy_machine(config, tmp_path, server="http://127.0.0.1:9")
    code, out, err = await fedge("agent", "run", "--once", "--ignore-eligibility",
                                 "--config", str(config))
    assert code == 1, out + err
    assert json.loads(out)["outcome"] == "error"


def test_every_outcome_has_a_documented_exit_code() -> None:
    codes = {o: o.exit_code for o in Outcome}
    assert codes[Outcome.UPLOADED] == 0
    assert {o for o, c in codes.items() if c == 3} == {
        Outcome.INELIGIBLE, Outcome.PACED, Outcome.LAPSED}
    assert {o for o, c in codes.items() if c == 2} == {Outcome.DATA_ERROR, Outcome.UNKNOWN_MODEL}
    assert set(codes.values()) == {0, 1, 2, 3}
    text = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    for code in (0, 1, 2, 3):
        assert f"| {code} |" in text, f"docs/agent.md has no row for exit status {code}"
