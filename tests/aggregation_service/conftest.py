"""Fixtures for the service tests: a real app on aiohttp's test server with a
ManualClock, a registered model, enrolled devices, and update frames made
with the real ``quantization`` codec."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

import quantization
from aggregation_service import AggregationService, ServiceConfig, create_app
from aggregation_service.app import SERVICE
from fedge.clock import ManualClock
from fedge.manifest import Manifest

OPERATOR = "operator-token-for-tests-0123456789"


def synthetic_manifest(shapes: dict[str, tuple[int, ...]], name: str = "synthetic") -> Manifest:
    """A manifest for registering weights without a graph (push_synthetic)."""
    return Manifest.from_dict(
        {
            "format_version": 1,
            "name": name,
            "tensors": [
                {"name": k, "shape": list(s), "dtype": "float32", "trainable": True}
                for k, s in shapes.items()
            ],
            "input": {"shape": [4], "dtype": "float32"},
            "label": {"shape": [], "dtype": "int32", "num_classes": 3},
            "signatures": ["train", "evaluate", "infer", "get_weights", "set_weights"],
            "loss": "sparse_categorical_crossentropy",
            "optimizer": {"name": "sgd"},
            "hyperparameters": {},
            "sha256": hashlib.sha256(name.encode()).hexdigest(),
        }
    )


SHAPES = {"w": (4, 3), "b": (3,)}


def initial_weights(shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def frame(delta: dict[str, np.ndarray], spec: dict[str, Any] | None = None) -> bytes:
    codec = quantization.CodecSpec.from_dict(spec or {})
    return quantization.encode(delta, codec, seed=0).payload


@dataclass
class Device:
    device_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Env:
    client: TestClient
    clock: ManualClock
    service: AggregationService
    data_dir: Path

    @property
    def op(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {OPERATOR}"}

    async def enroll(self, n: int = 1) -> list[Device]:
        r = await self.client.post("/v1/enrollment-tokens", json={"uses": n}, headers=self.op)
        assert r.status == 201, await r.text()
        token = (await r.json())["token"]
        out = []
        for _ in range(n):
            r = await self.client.post(
                "/v1/devices/enroll", json={"enrollment_token": token, "profile": {"name": "t"}}
            )
            assert r.status == 201, await r.text()
            body = await r.json()
            out.append(Device(body["device_id"], body["device_token"]))
        return out

    async def checkin(self, device: Device, model: str = "m", **extra: Any) -> dict[str, Any]:
        body = {
            "model": model,
            "eligible": True,
            "reasons": [],
            "runtime": "ai-edge-litert 2.3.0",
            "profile": {"name": "t", "memory_mb": 4096},
        } | extra
        r = await self.client.post("/v1/devices/checkin", json=body, headers=device.auth)
        assert r.status == 200, await r.text()
        result: dict[str, Any] = await r.json()
        return result

    async def plan(self, device: Device, model: str = "m") -> dict[str, Any]:
        for _ in range(50):
            answer = await self.checkin(device, model)
            if answer["action"] == "train":
                plan: dict[str, Any] = answer["plan"]
                return plan
        raise AssertionError("pace steering never admitted the device")

    async def upload(
        self,
        device: Device,
        plan: dict[str, Any],
        body: bytes,
        *,
        examples: int = 10,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        h = {
            **device.auth,
            "Content-Type": "application/octet-stream",
            "Idempotency-Key": key or str(uuid.uuid4()),
            "Fedge-Assignment": plan["assignment_id"],
            "Fedge-Model": plan["model"],
            "Fedge-Base-Version": str(plan["version"]),
            "Fedge-Examples": str(examples),
        } | (headers or {})
        r = await self.client.post("/v1/devices/updates", data=body, headers=h)
        return r.status, await r.json()


def make_config(data_dir: Path, **training: Any) -> ServiceConfig:
    return ServiceConfig.from_dict(
        {
            "data_dir": str(data_dir),
            "operator_token": OPERATOR,
            "rate_limit": {"rate_per_s": 1000.0, "burst": 1000},
            "training": {"buffer_size": 3, "pace_min_retry_s": 1.0, **training},
        }
    )


EnvFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(
    aiohttp_client: Callable[..., Awaitable[TestClient]], tmp_path: Path
) -> AsyncIterator[EnvFactory]:
    async def factory(
        *, data_dir: Path | None = None, register: bool = True, **training: Any
    ) -> Env:
        clock = ManualClock()
        directory = data_dir or tmp_path / "data"
        config = make_config(directory, **training)
        import random

        service = AggregationService(config, clock=clock, rng=random.Random(1))
        client = await aiohttp_client(create_app(config, service=service))
        env = Env(client, clock, client.app[SERVICE], directory)
        if register:
            await env.service.push_synthetic("m", synthetic_manifest(SHAPES), initial_weights())
        return env

    yield factory
