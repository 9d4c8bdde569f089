"""The agent against the REAL aggregation service on loopback."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_client.agent import UPLOADED
from edge_client.lifecycle import AgentState
from edge_client.testing import RecordingTransport
from edge_client.trainer import ProcessTrainer
from fedge.transport import Response
from tests.edge_client.conftest import AgentFactory, LiveService


async def test_one_cycle_in_a_child_process_is_accepted_by_the_service(
    make_agent: AgentFactory, service: LiveService
) -> None:
    agent = await make_agent(trainer=ProcessTrainer())
    result = await agent.run_cycle()
    await agent.close()
    assert result.outcome == UPLOADED, result
    assert result.examples == 256 and result.batches == 8
    assert result.update_id and result.upload_bytes
    assert np.isfinite(result.mean_loss or np.nan)
    assert agent.runtime.startswith("ai-edge-litert")
    assert await service.accepted() == 1
    assert agent.state.queue_length() == 0
    states = [new for _, new, _ in agent.lifecycle.history]
    assert states[:7] == [
        AgentState.WAITING_FOR_ELIGIBILITY, AgentState.CHECKING_IN, AgentState.DOWNLOADING,
        AgentState.TRAINING, AgentState.ENCODING, AgentState.UPLOADING,
        AgentState.WAITING_FOR_ELIGIBILITY,
    ]
    status = agent.state.load_status()
    assert status is not None and status["last_results"][-1]["outcome"] == UPLOADED


async def test_raw_data_never_leaves_the_device(
    make_agent: AgentFactory, service: LiveService, digits_dir: object
) -> None:
    from pathlib import Path

    # A sentinel value in the local data: as float32 bytes, float64 bytes and text.
    sentinel = np.float32(1234.5678)
    data_dir = Path(str(digits_dir))
    with np.load(data_dir / "part0.npz") as npz:
        x, y = npz["x"].copy(), npz["y"].copy()
    x[:, 5] = sentinel
    np.savez(data_dir / "part0.npz", x=x, y=y)
    recorder: list[RecordingTransport] = []

    def record(inner: object) -> RecordingTransport:
        recorder.append(RecordingTransport(inner))  # type: ignore[arg-type]
        return recorder[0]

    agent = await make_agent(transport=record)
    result = await agent.run_cycle()
    await agent.close()
    assert result.outcome == UPLOADED
    sent = recorder[0].outbound_bytes()
    assert any(r.path == "/v1/devices/updates" for r in recorder[0].sent)
    for needle in (sentinel.tobytes(), np.float64(sentinel).tobytes(), b"1234.5678",
                   x[0].tobytes()):
        assert needle not in sent


async def test_new_version_arrives_as_an_exact_delta(
    tmp_path: object, service: LiveService, digits_dir: object
) -> None:
    import asyncio
    from pathlib import Path

    base = Path(str(tmp_path))
    first = AgentFactory(base / "a", service, Path(str(digits_dir)))
    second = AgentFactory(base / "b", service, Path(str(digits_dir)))
    agent_a, agent_b = await first(), await second()
    assert (await agent_a.run_cycle()).outcome == UPLOADED
    assert (await agent_b.run_cycle()).outcome == UPLOADED
    for _ in range(200):  # buffer_size=2: the service steps and publishes version 2
        if (await service.model())["training_version"] == 2:
            break
        await asyncio.sleep(0.05)
    assert agent_a.cache.cached_version("digits") == 1
    agent_a._next_checkin_at = 0.0
    recorder = RecordingTransport(agent_a.client.transport)
    agent_a.client.transport = recorder
    result = await agent_a.run_cycle()
    assert result.version == 2, result
    assert result.download["used_delta"] is True and result.download["graph_cached"] is True
    # The delta came with the value digest the rebuilt weights were checked against.
    (delta,) = [resp for sent, resp in zip(recorder.sent, recorder.responses, strict=True)
                if "from=1" in sent.path]
    assert isinstance(delta, Response) and len(delta.header("Fedge-Weights-Digest") or "") == 64
    assert agent_a.cache.cached_version("digits") == 2
    # Only one version's weights are kept on disk.
    assert [p.name for p in (agent_a.state.root / "cache/weights/digits").iterdir()] == ["2.npz"]
    await agent_a.close()
    await agent_b.close()


class _WrongDigest(RecordingTransport):
    """A delta response whose digest does not match the weights (a corrupted
    transfer a real server cannot be made to produce)."""

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        resp = await super().request(method, path, headers=headers, body=body)
        if "from=" in path:
            return Response(resp.status, resp.body,
                            {**resp.headers, "Fedge-Weights-Digest": "0" * 64})
        return resp


async def test_rebuilt_weights_that_fail_the_digest_are_fetched_in_full(
    tmp_path: object, service: LiveService, digits_dir: object
) -> None:
    import asyncio
    from pathlib import Path

    base = Path(str(tmp_path))
    first = AgentFactory(base / "a", service, Path(str(digits_dir)))
    second = AgentFactory(base / "b", service, Path(str(digits_dir)))
    agent_a = await first(transport=_WrongDigest)
    agent_b = await second()
    assert (await agent_a.run_cycle()).outcome == UPLOADED
    assert (await agent_b.run_cycle()).outcome == UPLOADED
    for _ in range(200):
        if (await service.model())["training_version"] == 2:
            break
        await asyncio.sleep(0.05)
    agent_a._next_checkin_at = 0.0
    result = await agent_a.run_cycle()
    assert result.outcome == UPLOADED and result.version == 2, result
    assert result.download["used_delta"] is False  # the full frame, checked by its sha256
    paths = [sent.path for sent in agent_a.client.transport.sent]  # type: ignore[attr-defined]
    assert any("from=1" in p for p in paths)
    assert paths.count("/v1/models/digits/versions/2/weights") == 1
    await agent_a.close()
    await agent_b.close()
