"""Start ``python -m aggregation_service serve`` as a real process on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.aggregation_service.conftest import OPERATOR

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


def write_config(path: Path, data_dir: Path, **extra: Any) -> Path:
    path.write_text(yaml.safe_dump({"data_dir": str(data_dir), **extra}), encoding="utf-8")
    return path


def start_server(
    data_dir: Path,
    config: Path,
    workdir: Path,
    *,
    extra_args: tuple[str, ...] = (),
    scheme: str = "http",
    timeout: float = 60.0,
    preexec_fn: Any = None,
    wrapper: tuple[str, ...] = (),
) -> ServerProcess:
    port_file = workdir / f"port-{time.monotonic_ns()}"
    env = {**os.environ, "FEDGE_OPERATOR_TOKEN": OPERATOR, "PYTHONPATH": str(REPO)}
    log = (workdir / "server.log").open("ab")
    proc = subprocess.Popen(
        [
            *wrapper,  # e.g. fiu-run -x: a fault-injecting launcher that execs the server
            sys.executable,
            "-m",
            "aggregation_service",
            "serve",
            "--data-dir",
            str(data_dir),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        # Only resource.setrlimit-style calls (async-signal-safe enough) are passed.
        preexec_fn=preexec_fn,  # noqa: PLW1509
    )
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if proc.poll() is not None:
            tail = (workdir / "server.log").read_text()[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("server did not report its port")
        time.sleep(0.05)
    return ServerProcess(proc, int(port_file.read_text()), scheme)


def stop_server(server: ServerProcess) -> int:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            return server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    return server.proc.wait()


async def register_synthetic(config_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Register model "m" in a data directory before a real server opens it."""
    from aggregation_service import AggregationService, load_config
    from tests.aggregation_service.conftest import initial_weights, synthetic_manifest

    config = load_config(config_path, environ={"FEDGE_OPERATOR_TOKEN": OPERATOR})
    service = AggregationService(config)
    await service.start()
    await service.push_synthetic("m", synthetic_manifest(shapes), initial_weights(shapes))
    await service.stop()
