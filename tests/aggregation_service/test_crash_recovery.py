"""THE crash test: SIGKILL a real server while it ingests concurrent uploads,
restart it on the same data directory, and prove that

- every update acknowledged with 202 is counted exactly once (none lost, none
  twice), retries with the same idempotency key included;
- every version published (before and after the crash) equals what the
  FedBuff algorithm computes, uninterrupted, from the same updates in log
  order — recomputed here independently from the logged frames.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest

import quantization
from aggregation_service.blobs import BlobStore
from aggregation_service.updatelog import UpdateLog
from tests.aggregation_service.conftest import OPERATOR, initial_weights
from tests.aggregation_service.realserver import (
    ServerProcess,
    register_synthetic,
    start_server,
    stop_server,
    write_config,
)

SHAPES = {"w": (32, 16), "b": (16,)}
K = 5
A = 0.5
SERVER_LR = 0.7
OP = {"Authorization": f"Bearer {OPERATOR}"}


@dataclass
class Sent:
    key: str
    assignment: str
    version: int
    examples: int
    body: bytes
    device_token: str
    status: int | None = None  # None: no answer (the server died)
    duplicate: bool = False


@dataclass
class Ledger:
    sent: list[Sent] = field(default_factory=list)

    @property
    def acked(self) -> set[str]:
        return {s.key for s in self.sent if s.status == 202}


def make_update(rng: np.random.Generator) -> bytes:
    delta = {k: rng.normal(0, 0.1, size=s).astype(np.float32) for k, s in SHAPES.items()}
    spec = quantization.CodecSpec(density=0.3, bits=8)
    return quantization.encode(delta, spec, seed=int(rng.integers(1 << 30))).payload


async def enroll(session: aiohttp.ClientSession, url: str, n: int) -> list[str]:
    async with session.post(f"{url}/v1/enrollment-tokens", json={"uses": n}, headers=OP) as r:
        token = (await r.json())["token"]
    tokens = []
    for _ in range(n):
        async with session.post(f"{url}/v1/devices/enroll", json={"enrollment_token": token}) as r:
            tokens.append((await r.json())["device_token"])
    return tokens


async def upload(session: aiohttp.ClientSession, url: str, s: Sent) -> None:
    headers = {
        "Authorization": f"Bearer {s.device_token}",
        "Content-Type": "application/octet-stream",
        "Idempotency-Key": s.key,
        "Fedge-Assignment": s.assignment,
        "Fedge-Model": "m",
        "Fedge-Base-Version": str(s.version),
        "Fedge-Examples": str(s.examples),
    }
    try:
        async with session.post(f"{url}/v1/devices/updates", data=s.body, headers=headers) as r:
            body = await r.json()
            s.status = r.status
            s.duplicate = bool(body.get("duplicate"))
    except (aiohttp.ClientError, asyncio.TimeoutError):
        s.status = None


async def device_loop(  # noqa: PLR0917
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    ledger: Ledger,
    rng: np.random.Generator,
    stop: asyncio.Event,
    limit: int,
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    while not stop.is_set() and len(ledger.sent) < limit:
        try:
            async with session.post(
                f"{url}/v1/devices/checkin", json={"model": "m", "eligible": True}, headers=auth
            ) as r:
                answer = await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return
        if answer.get("action") != "train":
            await asyncio.sleep(0.01)
            continue
        plan = answer["plan"]
        s = Sent(
            str(uuid.uuid4()),
            plan["assignment_id"],
            plan["version"],
            int(rng.integers(1, 50)),
            make_update(rng),
            token,
        )
        ledger.sent.append(s)
        await upload(session, url, s)
        if s.status is None:
            return


async def drive(  # noqa: PLR0917
    url: str,
    tokens: list[str],
    ledger: Ledger,
    limit: int,
    seed: int,
    kill_after: int | None = None,
    server: ServerProcess | None = None,
) -> None:
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [
            asyncio.create_task(
                device_loop(session, url, t, ledger, np.random.default_rng(seed + i), stop, limit)
            )
            for i, t in enumerate(tokens)
        ]
        if kill_after is not None:
            assert server is not None
            # Kill only while some upload is unanswered, checked in the same
            # event-loop step as the kill (no await between): on a loaded
            # machine there are moments when only check-ins are in flight.
            while len(ledger.acked) < kill_after or all(s.status is not None for s in ledger.sent):
                await asyncio.sleep(0.002)
            os.kill(server.proc.pid, signal.SIGKILL)  # mid-ingest: uploads are in flight
            server.proc.wait()
            stop.set()
        await asyncio.gather(*tasks)


def expected_versions(data_dir: Path) -> list[dict[str, np.ndarray]]:
    """FedBuff + FedAvg(server lr), recomputed from the logged frames in log order."""
    log = UpdateLog(data_dir / "log", fsync=False)
    log.open()
    records = list(log.replay(0))
    log.close()
    weights = {k: v.astype(np.float32) for k, v in initial_weights(SHAPES).items()}
    versions = []
    acc = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
    wsum, count = 0.0, 0
    for rec in records:
        h = rec.header
        w = h["examples"] * (1 + h["tau"]) ** -A
        assert w == pytest.approx(h["weight"], rel=1e-12)
        quantization.decode_into(rec.body, acc, h["weight"], expected=SHAPES)
        wsum += h["weight"]
        count += 1
        if count == K:
            weights = {
                # As FedAvg steps: w + η·(Σ/Σw), not (η·Σ)/Σw — a different rounding.
                k: (weights[k].astype(np.float64) + SERVER_LR * (acc[k] / wsum)).astype(
                    np.float32
                )
                for k in weights
            }
            versions.append(weights)
            acc = {k: np.zeros(s, np.float64) for k, s in SHAPES.items()}
            wsum, count = 0.0, 0
    return versions


@pytest.mark.slow
async def test_sigkill_mid_ingest_loses_nothing_and_counts_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "server.yaml",
        data,
        rate_limit={"rate_per_s": 10000.0, "burst": 10000},
        training={
            "buffer_size": K,
            "staleness_exponent": A,
            "max_staleness": 1000,
            "over_provisioning": 100.0,
            "optimizer": {"name": "fedavg", "learning_rate": SERVER_LR},
        },
    )
    await register_synthetic(config, SHAPES)
    ledger = Ledger()

    server = start_server(data, config, tmp_path)
    tokens = await enroll_with(server.url, 12)
    await drive(server.url, tokens, ledger, limit=400, seed=1, kill_after=23, server=server)
    assert server.proc.returncode == -signal.SIGKILL
    acked_before = set(ledger.acked)
    unanswered = [s for s in ledger.sent if s.status is None]
    assert len(acked_before) >= 23
    assert unanswered, "the kill should catch uploads in flight"

    server = start_server(data, config, tmp_path)
    try:
        # Devices retry what got no answer, with the same idempotency key.
        async with aiohttp.ClientSession() as session:
            for s in unanswered:
                await upload(session, server.url, s)
                assert s.status == 202, s.status
        # And the fleet goes on until several more versions are published.
        await drive(server.url, tokens, ledger, limit=len(ledger.sent) + 30, seed=100)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{server.url}/v1/models/m", headers=OP) as r,
        ):
            assert (await r.json())["training_version"] >= 9
    finally:
        assert stop_server(server) == 0

    acked = ledger.acked
    assert acked_before <= acked
    # Every acked key is in the log exactly once; nothing else is.
    log = UpdateLog(data / "log", fsync=False)
    log.open()
    records = list(log.replay(0))
    # The service scopes each key to its device: "<device>/<key>".
    logged = [r.header["key"].partition("/")[2] for r in records]
    offsets = [r.offset for r in records]
    log.close()
    assert len(logged) == len(set(logged))
    assert set(logged) == acked
    # Counted once: the versions' update counts + the open buffer = acked updates.
    db = sqlite3.connect(data / "fedge.sqlite3")
    rows = db.execute(
        "SELECT version, weights_sha256, num_updates FROM versions "
        "WHERE model='m' AND kind='aggregated' ORDER BY version"
    ).fetchall()
    published_keys = db.execute("SELECT COUNT(*) FROM published_updates").fetchone()[0]
    checkpoint = db.execute("SELECT checkpoint FROM models WHERE name='m'").fetchone()[0]
    db.close()
    assert sum(r[2] for r in rows) == published_keys == K * len(rows)
    # The graceful stop published every complete buffer; the rest is the open one.
    assert sum(1 for offset in offsets if offset >= checkpoint) < K
    assert published_keys + sum(1 for offset in offsets if offset >= checkpoint) == len(acked)
    assert len(rows) >= 8
    # Each published version is bit-identical to the uninterrupted computation.
    expected = expected_versions(data)
    blobs = BlobStore(data / "blobs")
    assert len(expected) == len(rows)
    for (version, sha, _), want in zip(rows, expected, strict=True):
        got = quantization.decode_weights(blobs.get(sha), expected=SHAPES)
        for name in SHAPES:
            np.testing.assert_array_equal(
                got[name], want[name], err_msg=f"version {version} {name}"
            )


async def enroll_with(url: str, n: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        return await enroll(session, url, n)
