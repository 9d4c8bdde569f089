"""Fixtures for the agent's tests: the REAL aggregation service on loopback
(aiohttp test server, port 0), the exported reference mlp pushed to it, the
digits data as local .npz files, and an agent factory."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge_client.agent import Agent
from edge_client.config import AgentConfig
from edge_client.eligibility import ALWAYS_ELIGIBLE, StateProvider, StaticStateProvider
from edge_client.protocol import ProtocolClient
from edge_client.storage import AtomicWriter, Identity, StateDir
from edge_client.trainer import InProcessTrainer, Trainer
from edge_client.transport import HttpTransport
from fedge.clock import Clock, SystemClock
from fedge.transport import Transport

OPERATOR = "op-" + "x" * 20
MODEL = "digits"


def multipart(parts: dict[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    boundary = "fedge-" + secrets.token_hex(8)
    chunks = []
    for name, (filename, data, ctype) in parts.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode() + data + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


@dataclass
class LiveService:
    url: str
    app: web.Application
    transport: HttpTransport  # an operator's connection

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None and not isinstance(
            body, bytes) else body
        resp = await self.transport.request(method, path, headers={
            "Authorization": f"Bearer {OPERATOR}", "Content-Type": content_type}, body=data)
        assert resp.status < 300, (resp.status, resp.body[:300])
        return resp.json()

    async def enroll_token(self, uses: int = 10) -> str:
        return str((await self.call("POST", "/v1/enrollment-tokens", {"uses": uses}))["token"])

    async def model(self) -> dict[str, Any]:
        return dict(await self.call("GET", f"/v1/models/{MODEL}"))

    async def accepted(self) -> float:
        resp = await self.transport.request("GET", "/metrics")
        for line in resp.body.decode().splitlines():
            if line.startswith("fedge_updates_accepted_total{") and f'"{MODEL}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture
async def service(tmp_path: Path, exported_mlp: Path) -> AsyncIterator[LiveService]:
    from aggregation_service.app import create_app
    from aggregation_service.config import ServiceConfig, TrainingConfig

    training = TrainingConfig.from_dict({
        "buffer_size": 2, "report_deadline_s": 600,
        "client": {"epochs": 1, "batch_size": 32, "learning_rate": 0.05, "max_examples": 256},
        "codec": {"density": 0.1, "bits": 8},
    })
    config = ServiceConfig(data_dir=tmp_path / "service", operator_token=OPERATOR, fsync=False,
                           training=training)
    server = TestServer(create_app(config), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    live = LiveService(url, server.app, HttpTransport(url))
    ctype, body = multipart({
        "manifest": ("manifest.json", (exported_mlp / "manifest.json").read_bytes(),
                     "application/json"),
        "model": ("model.tflite", (exported_mlp / "model.tflite").read_bytes(),
                  "application/octet-stream"),
    })
    await live.call("POST", f"/v1/models/{MODEL}/versions", body, content_type=ctype)
    yield live
    await live.transport.close()
    await server.close()


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


@pytest.fixture
def digits_dir(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    out = tmp_path / "data"
    out.mkdir()
    x, y = digits
    np.savez(out / "part0.npz", x=x[:300], y=y[:300])
    np.savez(out / "part1.npz", x=x[300:600], y=y[300:600])
    return out


def agent_config(tmp_path: Path, url: str, data_dir: Path, **over: Any) -> AgentConfig:
    data: dict[str, Any] = {
        "server": url, "model": MODEL, "state_dir": str(tmp_path / "agent"),
        "data": {"kind": "npz", "path": str(data_dir)},
        "profile": {"name": "test-rig", "memory_mb": 1024},
        "backoff": {"base_s": 1, "max_s": 60, "crash_s": 600},
        "seed": 7,
    }
    data.update(over)
    return AgentConfig.from_dict(data)


@dataclass
class AgentFactory:
    tmp_path: Path
    service: LiveService
    data_dir: Path
    identity: Identity | None = None

    async def enroll(self) -> Identity:
        if self.identity is None:
            token = await self.service.enroll_token()
            transport = HttpTransport(self.service.url)
            device_id, device_token = await ProtocolClient(transport).enroll(
                token, {"name": "test-rig", "memory_mb": 1024})
            await transport.close()
            self.identity = Identity(device_id, device_token, self.service.url, 0.0)
        return self.identity

    async def __call__(
        self,
        *,
        clock: Clock | None = None,
        provider: StateProvider | None = None,
        trainer: Trainer | None = None,
        transport: Callable[[Transport], Transport] | None = None,
        writer: AtomicWriter | None = None,
        **config: Any,
    ) -> Agent:
        identity = await self.enroll()
        cfg = agent_config(self.tmp_path, self.service.url, self.data_dir, **config)
        state = StateDir(cfg.state_dir, writer)
        state.prepare()
        state.save_identity(identity)
        base: Transport = HttpTransport(self.service.url, timeout_s=10)
        return Agent(
            cfg,
            clock=clock or SystemClock(),
            transport=transport(base) if transport else base,
            provider=provider or StaticStateProvider(ALWAYS_ELIGIBLE),
            trainer=trainer or InProcessTrainer(),
            state=state,
        )


@pytest.fixture
async def make_agent(tmp_path: Path, service: LiveService, digits_dir: Path) -> AgentFactory:
    return AgentFactory(tmp_path, service, digits_dir)
