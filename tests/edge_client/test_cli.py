"""``fedge agent init/run/status/install-service`` as a user runs them: real
processes against the real service on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.edge_client.conftest import LiveService

REPO = Path(__file__).resolve().parents[2]


async def fedge(*args: str, python: str | Path = sys.executable,
                env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(python), "-m", "fedge", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def init(service: LiveService, tmp_path: Path, digits_dir: Path,
               python: str | Path = sys.executable, *extra: str) -> Path:
    token = await service.enroll_token()
    config = tmp_path / "agent.yaml"
    code, out, err = await fedge(
        "agent", "init", "--server", service.url, "--enroll-token", token, "--model", "digits",
        "--data", str(digits_dir), "--state-dir", str(tmp_path / "state"),
        "--config", str(config), *extra, python=python,
    )
    assert code == 0, err
    assert "enrolled as dev-" in out
    return config


async def test_init_run_once_status(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    data = yaml.safe_load(config.read_text())
    assert data["server"] == service.url and data["data"]["kind"] == "npz"
    identity = tmp_path / "state" / "identity.json"
    assert identity.stat().st_mode & 0o777 == 0o600  # the device token is a secret
    # A test rig has no battery and may be busy: relax the policy for the run.
    data["policy"].update({"max_cpu_load": 1.0, "unmetered_only": False})
    config.write_text(yaml.safe_dump(data))

    code, out, err = await fedge("agent", "run", "--once", "--config", str(config), "--verbose")
    assert code == 0, out + err
    result = json.loads(out)
    assert result["outcome"] == "uploaded" and result["examples"] > 0
    assert "state waiting_for_eligibility → checking_in" in err
    assert await service.accepted() == 1

    code, out, err = await fedge("agent", "status", "--config", str(config), "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "stopped" and status["queue_length"] == 0
    assert status["last_results"][-1]["outcome"] == "uploaded"
    code, out, _ = await fedge("agent", "status", "--config", str(config))
    assert "eligible:" in out and "uploaded" in out

    # A second init on the same state directory refuses to clobber the identity.
    code, _, err = await fedge(
        "agent", "init", "--server", service.url, "--enroll-token", "x", "--model", "digits",
        "--state-dir", str(tmp_path / "state"), "--config", str(config),
    )
    assert code == 2 and "is enrolled" in err


async def test_edge_install_without_tensorflow_runs_a_cycle(
    service: LiveService, tmp_path: Path, digits_dir: Path, edge_python: Path
) -> None:
    config = await init(service, tmp_path, digits_dir, edge_python)
    data = yaml.safe_load(config.read_text())
    data["policy"].update({"max_cpu_load": 1.0, "unmetered_only": False})
    config.write_text(yaml.safe_dump(data))
    code, out, err = await fedge("agent", "run", "--once", "--config", str(config),
                                 python=edge_python)
    assert code == 0, err
    assert json.loads(out)["outcome"] == "uploaded"
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["runtime"].startswith("ai-edge-litert")


async def test_tflite_runtime_worker_in_its_own_interpreter(
    service: LiveService, tmp_path: Path, digits_dir: Path, tflite_python: Path
) -> None:
    # The agent runs here (NumPy 2); training runs under tflite-runtime 2.14 with
    # numpy<2 in another interpreter: the worker protocol carries no pickles.
    config = await init(service, tmp_path, digits_dir, sys.executable,
                        "--runtime-python", str(tflite_python))
    data = yaml.safe_load(config.read_text())
    data["policy"].update({"max_cpu_load": 1.0, "unmetered_only": False})
    config.write_text(yaml.safe_dump(data))
    code, out, err = await fedge("agent", "run", "--once", "--config", str(config))
    assert code == 0, err
    assert json.loads(out)["outcome"] == "uploaded"
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["runtime"].startswith("tflite-runtime 2.14")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("server: http://x\nmodel: m\nstate_dir: /tmp/s\ndata: {kind: npz, path: /d}\n"
         "policy: {min_battery_pct: lots}\n", "policy.min_battery_pct: expected a number"),
        ("server: http://x\nmodel: m\nstate_dir: /tmp/s\ndata: {kind: npz}\n",
         "data.path: required"),
        ("server: [\n", "not valid YAML"),
    ],
)
async def test_bad_config_fails_at_start_naming_the_key(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml_text)
    code, _, err = await fedge("agent", "run", "--once", "--config", str(config))
    assert code == 2 and message in err and "Traceback" not in err


async def test_run_without_enrollment_says_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"server: http://127.0.0.1:9\nmodel: m\nstate_dir: {tmp_path}/s\n"
                      f"data: {{kind: npz, path: {tmp_path}}}\n")
    code, _, err = await fedge("agent", "run", "--once", "--config", str(config))
    assert code == 2 and "fedge agent init" in err and "Traceback" not in err


async def test_init_with_a_bad_token_or_server(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    common = ["--model", "digits", "--data", str(digits_dir), "--state-dir",
              str(tmp_path / "s"), "--config", str(tmp_path / "a.yaml")]
    code, _, err = await fedge("agent", "init", "--server", service.url,
                               "--enroll-token", "wrong", *common)
    assert code == 2 and "enrollment refused" in err and "bad_enrollment_token" in err
    code, _, err = await fedge("agent", "init", "--server", "http://127.0.0.1:9",
                               "--enroll-token", "t", *common)
    assert code == 2 and "cannot reach" in err
    assert not (tmp_path / "a.yaml").exists()


async def test_install_service_writes_a_restarting_unit(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    unit = tmp_path / "fedge-agent.service"
    code, out, err = await fedge("agent", "install-service", "--user", "--config", str(config),
                                 "--output", str(unit))
    assert code == 0, err
    assert f"wrote {unit}" in out and "systemctl --user" in out
    text = unit.read_text()
    assert "Restart=on-failure" in text and "RestartSec=30" in text
    assert f"agent run --config {config}" in text and "WantedBy=default.target" in text
    assert "Nice=19" in text and "StartLimitIntervalSec=0" in text
    # The default user location follows XDG_CONFIG_HOME.
    code, out, err = await fedge("agent", "install-service", "--user", "--config", str(config),
                                 env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert code == 0, err
    assert (tmp_path / "xdg/systemd/user/fedge-agent.service").exists()


async def test_sigterm_stops_a_running_agent_cleanly(
    service: LiveService, tmp_path: Path, digits_dir: Path
) -> None:
    config = await init(service, tmp_path, digits_dir)
    data = yaml.safe_load(config.read_text())
    data["policy"].update({"max_cpu_load": 1.0, "unmetered_only": False})
    config.write_text(yaml.safe_dump(data))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fedge", "agent", "run", "--config", str(config), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    status_file = tmp_path / "state" / "status.json"
    for _ in range(600):  # wait (in real time) until the first cycle is over
        if status_file.exists() and json.loads(status_file.read_text()).get("last_results"):
            break
        await asyncio.sleep(0.1)
    proc.terminate()
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    status = json.loads(status_file.read_text())
    assert status["state"] == "stopped"
    assert status["last_results"][0]["outcome"] == "uploaded"
