"""Real agents (real TFLite training on the digits data) run secure
aggregation rounds against the real service: on aiohttp's test server on
loopback, and against a `fedge serve` process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from aggregation_service import codec
from aggregation_service.app import SERVICE, create_app
from aggregation_service.config import ServiceConfig, TrainingConfig
from aggregation_service.service import AggregationService
from edge_client.agent import PACED, UPLOADED, Agent, CycleResult
from edge_client.eligibility import ALWAYS_ELIGIBLE, StaticStateProvider
from edge_client.protocol import ProtocolClient
from edge_client.storage import Identity, StateDir
from edge_client.trainer import InProcessTrainer
from edge_client.transport import HttpTransport
from fedge.clock import ManualClock, SystemClock
from fedge.manifest import Manifest
from fedge.transport import Response, Transport, TransportError
from privacy.secagg import SecAggClient, SecAggConfig, SharesFor
from tests.aggregation_service.conftest import OPERATOR as PROCESS_OPERATOR
from tests.aggregation_service.realserver import start_server, stop_server, write_config
from tests.edge_client.conftest import MODEL, OPERATOR, LiveService, agent_config, multipart

CLIP = 0.5
SECAGG = {"degree": 4, "threshold": 3, "clip_norm": CLIP, "max_clients": 8, "min_clients": 3}


def training(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "sync", "clients_per_round": n, "over_selection": 1.0,
        "report_deadline_s": 600, "deadline_grace_s": 60,
        "pace_min_retry_s": 0.2, "pace_max_retry_s": 1.0,
        "client": {"epochs": 1, "batch_size": 32, "learning_rate": 0.1, "max_examples": 128},
        "codec": {"density": 1.0, "bits": 8}, "secagg": SECAGG, **extra,
    }


async def push(live: LiveService, exported: Path) -> None:
    ctype, body = multipart({
        "manifest": ("manifest.json", (exported / "manifest.json").read_bytes(),
                     "application/json"),
        "model": ("model.tflite", (exported / "model.tflite").read_bytes(),
                  "application/octet-stream"),
    })
    await live.call("POST", f"/v1/models/{MODEL}/versions", body, content_type=ctype)


@pytest.fixture
async def secagg_service(
    tmp_path: Path, exported_mlp: Path
) -> AsyncIterator[tuple[LiveService, ManualClock]]:
    """The service on a ManualClock: phases close early when every device
    sent, and at their deadlines only when the test advances the clock."""
    clock = ManualClock()
    config = ServiceConfig(
        data_dir=tmp_path / "service", operator_token=OPERATOR, fsync=False,
        training=TrainingConfig.from_dict(training(5)),
    )
    server = TestServer(create_app(config, clock=clock), host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    live = LiveService(url, server.app, HttpTransport(url))
    await push(live, exported_mlp)
    yield live, clock
    await live.transport.close()
    await server.close()


class Recording(SecAggClient):
    """The real client, keeping what each device masked (the clipped update)."""

    sent: ClassVar[dict[str, np.ndarray]] = {}

    def masked_input(self, shares: SharesFor, vector: np.ndarray) -> Any:
        Recording.sent[self.device] = np.array(vector, dtype=np.float64)
        return super().masked_input(shares, vector)


class CutAfterInput:
    """A device that loses its connection once its masked input is sent."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        if path.endswith("/unmask"):
            raise TransportError(f"{method} {path}: simulated power loss")
        return await self.inner.request(method, path, headers=headers, body=body)

    async def close(self) -> None:
        await self.inner.close()


async def make_agents(live: LiveService, tmp_path: Path, digits_dir: Path, n: int,
                      cut: int = 0) -> list[Agent]:
    token = str((await live.call("POST", "/v1/enrollment-tokens", {"uses": n}))["token"])
    agents = []
    for i in range(n):
        t = HttpTransport(live.url, timeout_s=10)
        device_id, device_token = await ProtocolClient(t).enroll(token, {"name": "rig"})
        cfg = agent_config(tmp_path / f"a{i}", live.url, digits_dir, seed=i)
        state = StateDir(cfg.state_dir)
        state.prepare()
        identity = Identity(device_id, device_token, live.url, 0.0)
        state.save_identity(identity)
        transport: Transport = CutAfterInput(t) if i < cut else t
        agent = Agent(cfg, clock=SystemClock(), transport=transport,
                      provider=StaticStateProvider(ALWAYS_ELIGIBLE),
                      trainer=InProcessTrainer(), state=state, identity=identity)
        agent.secagg_client_factory = Recording
        agents.append(agent)
    return agents


async def one_round(agent: Agent) -> CycleResult:
    while True:
        result = await agent.run_cycle()
        if result.outcome != PACED:
            return result
        await asyncio.sleep(min(result.wait_s, 1.0))


async def weights(service: AggregationService, version: int) -> dict[str, np.ndarray]:
    row = await service.store.run(service.store.version, MODEL, version)
    assert row is not None, f"version {version} was not published"
    manifest = Manifest.from_json(row.manifest)
    return codec.decode_weights(service.blobs.get(row.weights_sha256), manifest)


async def check_mean(service: AggregationService, devices: list[str]) -> None:
    await compare(await weights(service, 1), await weights(service, 2),
                  service.runtime(MODEL).manifest, devices)


async def compare(before: dict[str, np.ndarray], after: dict[str, np.ndarray],
                  manifest: Manifest, devices: list[str]) -> None:
    """``after`` = ``before`` + the plain mean of the clipped updates."""
    mean = np.mean([Recording.sent[d] for d in devices], axis=0)
    fp = SecAggConfig.from_dict(SECAGG).fixed_point
    offset = 0
    for t in manifest.trainable:
        size = int(np.prod(t.shape))
        want = before[t.name] + mean[offset : offset + size].reshape(t.shape)
        np.testing.assert_allclose(after[t.name], want, rtol=0, atol=fp.resolution + 2e-6)
        offset += size
    for d in devices:  # every device clipped before masking
        assert float(np.linalg.norm(Recording.sent[d])) <= CLIP * (1 + 1e-9)


async def test_real_agents_publish_the_mean_of_their_clipped_updates(
    secagg_service: tuple[LiveService, ManualClock], tmp_path: Path, digits_dir: Path
) -> None:
    live, _ = secagg_service
    Recording.sent.clear()
    agents = await make_agents(live, tmp_path, digits_dir, 5)
    results = await asyncio.gather(*(one_round(a) for a in agents))
    for a in agents:
        await a.close()
    assert [r.outcome for r in results] == [UPLOADED] * 5, results
    service = live.app[SERVICE]
    await service.wait_idle()
    await check_mean(service, list(Recording.sent))
    # Masked ring elements: 4 bytes per parameter, plus the four steps' headers.
    params = service.runtime(MODEL).manifest.num_trainable_parameters
    for r in results:
        assert r.upload_bytes is not None and 4 * params < r.upload_bytes < 4 * params + 8192
    info = await live.model()
    assert info["training_version"] == 2 and info["versions"][-1]["num_updates"] == 5


async def test_a_device_lost_after_its_masked_input_is_recovered(
    secagg_service: tuple[LiveService, ManualClock], tmp_path: Path, digits_dir: Path
) -> None:
    live, clock = secagg_service
    Recording.sent.clear()
    agents = await make_agents(live, tmp_path, digits_dir, 5, cut=1)
    tasks = [asyncio.ensure_future(one_round(a)) for a in agents]
    done = await asyncio.gather(*tasks[1:])
    assert [r.outcome for r in done] == [UPLOADED] * 4
    service = live.app[SERVICE]
    assert await service.store.run(service.store.version, MODEL, 2) is None  # waits for it
    tasks[0].cancel()  # the lost device never comes back in this round
    await asyncio.gather(tasks[0], return_exceptions=True)
    for a in agents:
        await a.close()
    clock.advance(661.0)  # the unmask deadline passes on the service's clock
    for _ in range(200):
        if await service.store.run(service.store.version, MODEL, 2) is not None:
            break
        await asyncio.sleep(0.02)
    await service.wait_idle()
    await check_mean(service, list(Recording.sent))  # all five inputs are in the sum


async def test_beyond_the_threshold_no_version_is_published_and_a_new_round_opens(
    secagg_service: tuple[LiveService, ManualClock], tmp_path: Path, digits_dir: Path
) -> None:
    live, clock = secagg_service
    Recording.sent.clear()
    agents = await make_agents(live, tmp_path, digits_dir, 5, cut=3)  # k = 4, t = 3
    tasks = [asyncio.ensure_future(one_round(a)) for a in agents]
    done = await asyncio.gather(*tasks[3:])  # two answer the unmask request
    assert [r.outcome for r in done] == [UPLOADED] * 2
    assert len(Recording.sent) == 5  # every masked input arrived
    for task in tasks[:3]:
        task.cancel()
    await asyncio.gather(*tasks[:3], return_exceptions=True)
    service = live.app[SERVICE]
    old_round = service.secagg.current(MODEL)
    assert old_round is not None
    clock.advance(661.0)  # unmask deadline: two shares per secret, threshold three
    # The closer runs in the background; on a loaded machine it can take a
    # few seconds: wait (bounded) until the round is gone and its reason set.
    for _ in range(600):
        if service.secagg.current(MODEL) is None and old_round.reason is not None:
            break
        await asyncio.sleep(0.05)
    await service.wait_idle()
    assert await service.store.run(service.store.version, MODEL, 2) is None
    resp = await live.transport.request("GET", "/metrics")
    assert 'outcome="too_few_unmask_shares"} 1' in resp.body.decode()
    assert old_round.reason == "too_few_unmask_shares"
    # The next check-in opens a new round, with fresh keys, from the same version.
    assert agents[4].identity is not None
    client = ProtocolClient(HttpTransport(live.url), agents[4].identity.device_token)
    answer = await client.checkin({"model": MODEL, "eligible": True})
    await client.transport.close()
    assert answer.plan is not None and answer.plan.version == 1
    assert answer.plan.secagg is not None
    assert answer.plan.secagg["round_id"] != old_round.round_id
    for a in agents:
        await a.close()


async def until_version(live: LiveService, version: int) -> dict[str, Any]:
    """The model once ``version`` is published (the sum is computed and
    published after the last unmask answer, in the background)."""
    for _ in range(300):
        info = await live.model()
        if info["training_version"] >= version:
            assert info["training_version"] == version
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"version {version} was not published")


class ProcessService(LiveService):
    """A `fedge serve` process: the operator token is the one realserver sets."""

    async def call(self, method: str, path: str, body: Any = None,
                   content_type: str = "application/json") -> Any:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        resp = await self.transport.request(method, path, headers={
            "Authorization": f"Bearer {PROCESS_OPERATOR}", "Content-Type": content_type},
            body=data)
        assert resp.status < 300, (resp.status, resp.body[:300])
        return resp.json()


async def test_a_fedge_serve_process_runs_rounds_and_restarts_cleanly(
    tmp_path: Path, exported_mlp: Path, digits_dir: Path
) -> None:
    secagg = {**SECAGG, "degree": 2, "threshold": 2}
    config = write_config(tmp_path / "server.yaml", tmp_path / "data", fsync=False,
                          training=training(3, secagg=secagg))
    server = start_server(tmp_path / "data", config, tmp_path)
    try:
        live = ProcessService(server.url, None, HttpTransport(server.url))  # type: ignore[arg-type]
        await push(live, exported_mlp)
        Recording.sent.clear()
        agents = await make_agents(live, tmp_path, digits_dir, 3)
        results = await asyncio.gather(*(one_round(a) for a in agents))
        assert [r.outcome for r in results] == [UPLOADED] * 3, results
        info = await until_version(live, 2)
        resp = await live.transport.request("GET", "/metrics")
        assert 'fedge_secagg_rounds_total{model="digits",outcome="completed"} 1' in (
            resp.body.decode())
        await live.transport.close()
        assert stop_server(server) == 0  # SIGTERM: a clean stop between rounds
        server = start_server(tmp_path / "data", config, tmp_path)
        for a in agents:  # the devices follow the service to its new port
            await a.transport.close()
            a.client.transport = a.transport = HttpTransport(server.url, timeout_s=10)
        live = ProcessService(server.url, None, HttpTransport(server.url))  # type: ignore[arg-type]
        results = await asyncio.gather(*(one_round(a) for a in agents))
        assert [r.outcome for r in results] == [UPLOADED] * 3, results
        info = await until_version(live, 3)
        assert info["versions"][-1]["num_updates"] == 3
        for a in agents:
            await a.close()
        await live.transport.close()
    finally:
        stop_server(server)


EDGE_IMPORTS = """
import sys
import edge_client.agent, edge_client.protocol, edge_client.cli
assert "cryptography" not in sys.modules, "a plain agent loaded cryptography"
import numpy as np
from edge_client.secagg import SecAggPlan, clip_and_flatten
from privacy.secagg import SecAggConfig, run_local_round
cfg = SecAggConfig(degree=2, threshold=2, clip_norm=1.0, max_clients=4)
inputs = {f"d{i}": np.full(6, 0.1 * i) for i in range(3)}
result, _, _ = run_local_round(cfg, inputs)
assert np.allclose(result.total, np.full(6, 0.3), atol=1e-6)
assert "tensorflow" not in sys.modules
print("ok", np.__version__)
"""


def _edge_run(python: Path) -> str:
    import subprocess

    result = subprocess.run([str(python), "-c", EDGE_IMPORTS], check=False, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_secagg_runs_on_the_edge_install_and_a_plain_agent_never_loads_it(
    edge_python: Path,
) -> None:
    assert _edge_run(edge_python).startswith("ok")


def test_secagg_runs_with_tflite_runtime_and_numpy_1(tflite_python: Path) -> None:
    assert _edge_run(tflite_python).startswith("ok 1.")
