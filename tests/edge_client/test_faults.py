"""Faults, each injected on purpose: the agent logs, backs off, recovers; it
never crashes, never uploads an update twice, never trains while ineligible.

The service is the real one (loopback); faults are injected by wrapping the
agent's transport in :class:`edge_client.testing.FaultyTransport`, or by small
misbehaving aiohttp servers where a real socket is needed (slow, truncated,
down)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import edge_client.cache
from edge_client.agent import CRASHED, DROPPED, ERROR, LAPSED, PACED, PENDING, UPLOADED
from edge_client.cache import DownloadStats
from edge_client.cache import sha256_hex as real_sha256_hex
from edge_client.eligibility import ALWAYS_ELIGIBLE, DeviceState, SimulatedStateProvider
from edge_client.lifecycle import AgentState
from edge_client.storage import AtomicWriter
from edge_client.testing import (
    FaultyTransport,
    RecordingTransport,
    drive,
    garbage,
    refused,
    status,
    truncated,
)
from edge_client.trainer import ProcessTrainer
from edge_client.transport import HttpTransport
from fedge.clock import ManualClock
from fedge.errors import FedgeError
from fedge.transport import Response, Transport
from tests.edge_client.conftest import AgentFactory, LiveService

UPDATES = "/v1/devices/updates"
CHECKIN = "/v1/devices/checkin"


class Stack:
    """RecordingTransport(FaultyTransport(HTTP)): what was sent, and the faults."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.faulty: FaultyTransport | None = None
        self.recorder: RecordingTransport | None = None

    def __call__(self, inner: Transport) -> Transport:
        self.faulty = FaultyTransport(inner, self.clock)
        self.recorder = RecordingTransport(self.faulty)
        return self.recorder

    def sent(self, path: str) -> list[dict[str, str]]:
        assert self.recorder is not None
        return [dict(r.headers) for r in self.recorder.sent if r.path == path]


async def test_eligibility_lapse_stops_training_within_one_batch(
    make_agent: AgentFactory, service: LiveService
) -> None:
    clock = ManualClock()
    reads = {"n": 0}

    def schedule(now: float) -> DeviceState:
        reads["n"] += 1  # read 1: before check-in; reads 2..4: before batches 1..3
        return ALWAYS_ELIGIBLE if reads["n"] <= 4 else DeviceState(
            on_power=False, cpu_load=0.0, metered=False)

    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack,
                             provider=SimulatedStateProvider(schedule, clock))
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == LAPSED and result.reasons == ("not_charging",)
    assert result.batches == 3  # the lapse was seen before batch 4: no batch after it
    assert stack.sent(UPDATES) == []
    assert agent.state.queue_length() == 0
    assert agent.state.load_residual("digits") is None  # nothing of the attempt was kept
    assert agent.lifecycle.history[-1][:2] == (AgentState.TRAINING,
                                               AgentState.WAITING_FOR_ELIGIBILITY)
    await agent.close()


async def test_never_trains_or_checks_in_for_training_while_ineligible(
    make_agent: AgentFactory, service: LiveService
) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    hot = DeviceState(on_power=True, cpu_load=0.0, temperature_c=90, metered=False)
    agent = await make_agent(clock=clock, transport=stack,
                             provider=SimulatedStateProvider(lambda now: hot, clock),
                             policy={"max_temperature_c": 60})
    for _ in range(3):
        result = await drive(clock, agent.run_cycle())
        assert result.outcome == "ineligible" and result.reasons == ("too_hot",)
    checkins = [json.loads(r.body) for r in stack.recorder.sent if r.path == CHECKIN]  # type: ignore[union-attr]
    assert len(checkins) == 1  # one report, then report_interval_s apart
    assert checkins[0]["eligible"] is False and checkins[0]["reasons"] == ["too_hot"]
    assert AgentState.TRAINING not in [s for _, s, _ in agent.lifecycle.history]
    await agent.close()


async def test_runtime_crash_is_survived_reported_and_backed_off(
    make_agent: AgentFactory, service: LiveService
) -> None:
    trainer = ProcessTrainer()
    clock = ManualClock()
    reads = {"n": 0}

    def schedule(now: float) -> DeviceState:
        reads["n"] += 1
        if reads["n"] == 3 and trainer.last_session is not None:
            # A native crash, for real: the worker gets SIGSEGV mid-training.
            os.kill(trainer.last_session.pid, signal.SIGSEGV)
        return ALWAYS_ELIGIBLE

    stack = Stack(clock)
    agent = await make_agent(clock=clock, trainer=trainer, transport=stack,
                             provider=SimulatedStateProvider(schedule, clock))
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == CRASHED, result
    assert "SIGSEGV" in result.detail and result.reasons == ("runtime_crash",)
    assert result.wait_s >= 300  # crash_s=600 × U(0.5, 1)
    assert stack.sent(UPDATES) == []
    assert agent.lifecycle.state is AgentState.BACKING_OFF
    # The next check-in tells the server (once), and the agent carries on.
    result = await drive(clock, agent.run_cycle())
    assert result.outcome in (UPLOADED, PACED), result
    assert agent.pending_reasons == set()
    bodies = [json.loads(r.body) for r in stack.recorder.sent if r.path == CHECKIN]  # type: ignore[union-attr]
    assert bodies[-1]["reasons"] == ["runtime_crash"] and bodies[-1]["eligible"] is True
    await agent.close()


async def test_queued_upload_survives_restart_with_the_same_key(
    make_agent: AgentFactory, service: LiveService
) -> None:
    clock = ManualClock()
    first = Stack(clock)
    agent = await make_agent(clock=clock, transport=first)
    assert first.faulty is not None
    first.faulty.add(UPDATES, refused, times=None)  # the server vanishes before the upload
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == PENDING and agent.state.queue_length() == 1
    keys = {h["Idempotency-Key"] for h in first.sent(UPDATES)}
    assert len(first.sent(UPDATES)) == 3 and len(keys) == 1
    await agent.close()

    # A new process: same state directory, the server is back.
    second = Stack(clock)
    restarted = await make_agent(clock=clock, transport=second)
    result = await drive(clock, restarted.run_cycle())
    assert result.outcome == UPLOADED
    sent = second.sent(UPDATES)
    assert sent[0]["Idempotency-Key"] in keys  # the queued update went first, same key
    assert len({h["Idempotency-Key"] for h in sent}) == 2, (result, restarted.results)
    assert await service.accepted() == 2
    await restarted.close()


async def test_lost_acknowledgement_is_retried_with_the_same_key_and_counted_once(
    make_agent: AgentFactory, service: LiveService
) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    stack.faulty.add(UPDATES, truncated, after=True)  # the 202 arrives garbled
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED
    sent = stack.sent(UPDATES)
    assert len(sent) == 2 and sent[0]["Idempotency-Key"] == sent[1]["Idempotency-Key"]
    assert await service.accepted() == 1
    await agent.close()


async def test_429_honours_retry_after(make_agent: AgentFactory, service: LiveService) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    stack.faulty.add(UPDATES, status(429, retry_after=120))
    before = clock.monotonic()
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED
    assert clock.monotonic() - before >= 120
    assert len({h["Idempotency-Key"] for h in stack.sent(UPDATES)}) == 1
    await agent.close()


async def test_stale_update_is_dropped_with_a_log_line(
    make_agent: AgentFactory, service: LiveService, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    body = b'{"error": {"code": "stale_update", "detail": "9 versions old"}}'
    stack.faulty.add(UPDATES, status(409, body=body))
    with caplog.at_level(logging.WARNING, logger="edge_client"):
        result = await drive(clock, agent.run_cycle())
    assert result.outcome == DROPPED and "stale_update" in result.detail
    assert len(stack.sent(UPDATES)) == 1 and agent.state.queue_length() == 0
    assert any("dropping update" in r.getMessage() and "stale_update" in r.getMessage()
               for r in caplog.records)
    await agent.close()


@pytest.mark.parametrize(
    "fault", [status(503), status(500, body=b"<html>oops</html>"), garbage, refused],
    ids=["503", "500-html", "garbage", "refused"],
)
async def test_checkin_faults_back_off_then_recover(
    make_agent: AgentFactory, service: LiveService, fault: object
) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    stack.faulty.add(CHECKIN, fault, times=2)  # type: ignore[arg-type]
    waits = []
    for _ in range(2):
        result = await drive(clock, agent.run_cycle())
        assert result.outcome == ERROR and agent.lifecycle.state is AgentState.BACKING_OFF
        waits.append(result.wait_s)
    assert all(0 <= w <= 2 for w in waits)  # full jitter: U(0, 1), then U(0, 2)
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED
    await agent.close()


async def test_corrupted_model_is_downloaded_again_never_trained(
    make_agent: AgentFactory, service: LiveService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def corrupt(resp: Response | None) -> Response:
        assert resp is not None
        body = bytearray(resp.body)
        body[len(body) // 2] ^= 0xFF
        return Response(resp.status, bytes(body), resp.headers)

    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    stack.faulty.add("/v1/models/digits/versions/1/model.tflite", corrupt, after=True)
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED  # the corrupt copy was discarded and fetched again
    graph_gets = [r for r in stack.recorder.sent if r.path.endswith("model.tflite")]  # type: ignore[union-attr]
    assert len(graph_gets) == 2

    # Now the cached copy rots on disk: it is re-hashed before use, and re-fetched.
    [cached] = (agent.state.root / "cache" / "graphs").glob("*.tflite")
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    result = await drive(clock, agent.run_cycle())
    assert result.outcome in (UPLOADED, DROPPED), result
    assert result.download["graph_cached"] is False and result.download["graph_bytes"] > 0

    # Unchanged on disk since this process verified it: used without re-reading it.
    hashed: list[int] = []

    def counting(data: bytes) -> str:
        hashed.append(len(data))
        return real_sha256_hex(data)

    monkeypatch.setattr(edge_client.cache, "sha256_hex", counting)
    stats = DownloadStats()
    plan = SimpleNamespace(graph_sha256=cached.stem, urls={"model": "/not-fetched"})
    assert await agent.cache._graph(plan, stats) == cached  # type: ignore[arg-type]
    assert stats.graph_cached and hashed == []
    # Rewritten since (size or mtime differ): hashed again before use.
    cached.write_bytes(cached.read_bytes() + b"\0")
    with pytest.raises(FedgeError):  # found corrupt, removed, fetched from /not-fetched: 404
        await agent.cache._graph(plan, DownloadStats())  # type: ignore[arg-type]
    assert hashed and not cached.exists()
    await agent.close()


async def test_disk_full_means_no_upload_and_no_crash(
    make_agent: AgentFactory, service: LiveService
) -> None:
    full = {"on": True}

    def opener(path: str, flags: int) -> int:
        if full["on"] and ("/queue/" in path or "/residual/" in path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.open(path, flags, 0o600)

    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack, writer=AtomicWriter(opener))
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == ERROR and "disk full" in result.detail
    assert stack.sent(UPDATES) == []  # not persisted ⇒ never sent
    assert not list((agent.state.root / "queue").iterdir())  # no temp file left behind
    full["on"] = False
    result = await drive(clock, agent.run_cycle())
    for _ in range(30):
        # The first cycle's assignment is still open, so the service's pace
        # steering (random, unseeded here) may say "wait": honour it and retry.
        if result.outcome != PACED:
            break
        clock.advance(result.wait_s)
        result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED
    await agent.close()


async def test_torn_writes_from_a_power_cut_are_ignored_on_restart(
    make_agent: AgentFactory, service: LiveService
) -> None:
    agent = await make_agent()
    queue = agent.state.root / "queue"
    (queue / ".k1.json.999.tmp").write_bytes(b'{"idempotency_key": "k1", "assig')
    (queue / "k2.bin").write_bytes(b"payload whose metadata never got written")
    (agent.state.root / ".status.json.999.tmp").write_bytes(b"{")
    agent.state.save_status({"state": "training"})
    restarted = await make_agent()
    await restarted.start()
    assert list(restarted.state.queued()) == []
    assert sorted(p.name for p in queue.iterdir()) == []
    assert not list(agent.state.root.glob("*.tmp"))
    await agent.close()
    await restarted.close()


async def test_server_down_run_forever_backs_off_without_crashing(
    make_agent: AgentFactory, service: LiveService
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    clock = ManualClock()
    agent = await make_agent(clock=clock, transport=lambda _: HttpTransport(dead, timeout_s=2))
    stop = asyncio.Event()
    waits: list[float] = []
    original = agent.run_cycle

    async def counted() -> object:
        result = await original()
        waits.append(result.wait_s)
        if len(waits) == 6:
            stop.set()
        return result

    agent.run_cycle = counted  # type: ignore[method-assign]
    await drive(clock, agent.run_forever(stop))
    assert len(waits) == 6 and agent.lifecycle.state is AgentState.STOPPED
    assert all(r.outcome == ERROR for r in agent.results)
    assert agent.backoff.attempt == 6  # exponential backoff kept growing
    await agent.close()


async def test_slow_server_times_out_and_is_backed_off(make_agent: AgentFactory) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.router.add_post(CHECKIN, slow)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    agent = await make_agent(transport=lambda _: HttpTransport(url, timeout_s=0.3))
    result = await agent.run_cycle()
    assert result.outcome == ERROR and "TimeoutError" in result.detail
    await agent.close()
    await server.close()


async def test_truncated_download_resumes_with_range(tmp_path: Path) -> None:
    from edge_client.cache import DownloadStats, ModelCache
    from edge_client.protocol import ProtocolClient
    from edge_client.storage import StateDir

    blob = os.urandom(300_000)
    ranges: list[str | None] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range"))
        if request.headers.get("Range"):
            start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
            return web.Response(status=206, body=blob[start:], headers={
                "Content-Range": f"bytes {start}-{len(blob) - 1}/{len(blob)}"})
        resp = web.StreamResponse(headers={"Content-Length": str(len(blob))})
        await resp.prepare(request)
        # write() waits for the transport to take a write this size (no
        # deprecated drain()), and close() flushes what is buffered first.
        await resp.write(blob[:100_000])
        assert request.transport is not None
        request.transport.close()  # the connection drops a third of the way through
        return resp

    app = web.Application()
    app.router.add_get("/blob", serve)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state = StateDir(tmp_path / "state")
    state.prepare()
    cache = ModelCache(state, ProtocolClient(HttpTransport(str(server.make_url("")))))
    stats = DownloadStats()
    with pytest.raises(Exception, match="GET /blob"):
        await cache._fetch_resumable("/blob", "blob", stats)
    partial = (tmp_path / "state/cache/partial/blob.part").stat().st_size
    assert 0 < partial < len(blob)
    data = await cache._fetch_resumable("/blob", "blob", stats)
    assert data == blob and stats.resumed_from == partial
    assert ranges == [None, f"bytes={partial}-"]
    await cache.client.transport.close()
    await server.close()


async def test_unexpected_error_is_logged_and_backed_off_not_a_crash_loop(
    make_agent: AgentFactory, service: LiveService, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    calls = {"n": 0}

    def schedule(now: float) -> DeviceState:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("a provider bug")
        return ALWAYS_ELIGIBLE

    agent = await make_agent(clock=clock, provider=SimulatedStateProvider(schedule, clock))
    stop = asyncio.Event()
    original = agent.run_cycle

    async def until_uploaded() -> object:
        result = await original()
        if result.outcome == UPLOADED:
            stop.set()
        return result

    agent.run_cycle = until_uploaded  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="edge_client"):
        await drive(clock, agent.run_forever(stop))
    assert sum("a provider bug" in r.getMessage() for r in caplog.records) == 2
    backoffs = [why for _, new, why in agent.lifecycle.history if new is AgentState.BACKING_OFF]
    assert backoffs == ["unexpected RuntimeError"] * 2
    assert agent.results[-1].outcome == UPLOADED
    await agent.close()


async def test_checkin_honours_the_servers_retry_after(
    make_agent: AgentFactory, service: LiveService
) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    wait = b'{"action": "wait", "retry_after": 500, "reason": "pace_steering"}'
    stack.faulty.add(CHECKIN, status(200, body=wait))
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == PACED and result.wait_s == 500
    clock.advance(200)
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == PACED and result.wait_s == 60  # re-checks, does not check in
    assert len(stack.sent(CHECKIN)) == 1
    clock.advance(301)
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED and len(stack.sent(CHECKIN)) == 2
    await agent.close()


@pytest.mark.parametrize(
    "body",
    [b'{"action": "wait"}', b'{"action": "wait", "retry_after": -1}',
     b'{"action": "dance"}', b'{"action": "train", "plan": {"model": "digits"}}', b"[]"],
    ids=["no-retry-after", "negative", "unknown-action", "plan-missing-fields", "not-object"],
)
async def test_malformed_checkin_answers_are_errors_not_crashes(
    make_agent: AgentFactory, service: LiveService, body: bytes
) -> None:
    clock = ManualClock()
    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack)
    assert stack.faulty is not None
    stack.faulty.add(CHECKIN, status(200, body=body))
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == ERROR and "check-in" in result.detail
    assert AgentState.DOWNLOADING not in [s for _, s, _ in agent.lifecycle.history]
    await agent.close()


async def test_deadline_stops_training_early_and_reports_examples_done(
    make_agent: AgentFactory, service: LiveService
) -> None:
    clock = ManualClock()

    def short_deadline(resp: Response | None) -> Response:
        assert resp is not None
        answer = json.loads(resp.body)
        answer["plan"]["deadline_s"] = 5.0  # minus a 10 % margin for the upload: 4.5 s
        return Response(resp.status, json.dumps(answer).encode(), resp.headers)

    def slow_device(now: float) -> DeviceState:
        clock.advance(1.0)  # every eligibility check (one per batch) costs a virtual second
        return ALWAYS_ELIGIBLE

    stack = Stack(clock)
    agent = await make_agent(clock=clock, transport=stack,
                             provider=SimulatedStateProvider(slow_device, clock))
    assert stack.faulty is not None
    stack.faulty.add(CHECKIN, short_deadline, after=True)
    result = await drive(clock, agent.run_cycle())
    assert result.outcome == UPLOADED, result
    assert 0 < result.examples < 256 and result.examples == 32 * result.batches
    [headers] = stack.sent(UPDATES)
    assert headers["Fedge-Examples"] == str(result.examples)
    await agent.close()
