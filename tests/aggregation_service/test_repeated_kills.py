"""Repeated SIGKILLs of a real server under load from concurrent devices, at
random moments of ingest and publication, each followed by a restart on the
same data directory. After every restart:

- every upload that got no answer is retried with its idempotency key and
  acknowledged once;
- no assignment whose update was acknowledged is outstanding again;
- no used plan takes a second update under a new key (409 assignment_used);
- devices get plans again within one pacing interval;

and at the end every acknowledged update is in the log exactly once and every
published version equals the uninterrupted FedBuff computation, bit for bit.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import pytest

import quantization
from aggregation_service.blobs import BlobStore
from aggregation_service.updatelog import UpdateLog
from tests.aggregation_service.realserver import (
    ServerProcess,
    register_synthetic,
    start_server,
    stop_server,
    write_config,
)
from tests.aggregation_service.test_crash_recovery import (
    OP,
    SERVER_LR,
    SHAPES,
    A,
    K,
    Ledger,
    Sent,
    enroll_with,
    expected_versions,
    make_update,
    upload,
)

pytestmark = pytest.mark.slow

KILLS = 6
DEVICES = 8
PACE_MAX_S = 2.0


async def _device(
    url: str, token: str, ledger: Ledger, rng: np.random.Generator, stop: asyncio.Event
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while not stop.is_set():
            try:
                async with session.post(
                    f"{url}/v1/devices/checkin",
                    json={"model": "m", "eligible": True},
                    headers=auth,
                ) as r:
                    answer = await r.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return
            if answer.get("action") != "train":
                await asyncio.sleep(min(0.05, float(answer.get("retry_after", 0.05))))
                continue
            plan = answer["plan"]
            sent = Sent(
                str(uuid.uuid4()),
                plan["assignment_id"],
                plan["version"],
                int(rng.integers(1, 50)),
                make_update(rng),
                token,
            )
            ledger.sent.append(sent)
            await upload(session, url, sent)
            if sent.status is None:
                return  # the server died under it


async def _run_until_kill(
    server: ServerProcess, tokens: list[str], ledger: Ledger, more: int, seed: int
) -> None:
    """Drive the fleet; SIGKILL once ``more`` further updates are acknowledged
    and an upload is in flight (checked in the same loop step as the kill)."""
    stop = asyncio.Event()
    target = len(ledger.acked) + more
    tasks = [
        asyncio.create_task(
            _device(server.url, t, ledger, np.random.default_rng(seed * 100 + i), stop)
        )
        for i, t in enumerate(tokens)
    ]
    deadline = time.monotonic() + 120
    while len(ledger.acked) < target or all(s.status is not None for s in ledger.sent):
        assert time.monotonic() < deadline, "the fleet stopped making progress"
        await asyncio.sleep(0.002)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    stop.set()
    await asyncio.gather(*tasks)


async def _model(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/models/m", headers=OP) as r:
        body: dict[str, object] = await r.json()
        return body


async def _first_plan_after_restart(url: str, token: str) -> int:
    """Check-ins (each after the retry_after it was told) until a plan. Revived
    assignments filled the pipeline, so pace steering refused everyone until
    their deadlines; admission is probabilistic, so a few refusals are normal."""
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for attempt in range(1, 51):
            async with session.post(
                f"{url}/v1/devices/checkin", json={"model": "m", "eligible": True}, headers=auth
            ) as r:
                answer = await r.json()
            if answer["action"] == "train":
                return attempt
            assert answer["retry_after"] <= PACE_MAX_S * 1.5, answer  # one pacing interval
            await asyncio.sleep(answer["retry_after"])
    raise AssertionError("no plan after 50 check-ins: the pipeline looks full")


async def test_repeated_sigkills(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "server.yaml",
        data,
        rate_limit={"rate_per_s": 10000.0, "burst": 10000},
        training={
            "buffer_size": K,
            "staleness_exponent": A,
            "max_staleness": 1000,
            # 20 plans for K = 5: room for the plans whose answers a kill lost (each
            # stays outstanding until its deadline), so only revived ones could fill it.
            "over_provisioning": 4.0,
            "pace_min_retry_s": 0.5,
            "pace_max_retry_s": PACE_MAX_S,
            "optimizer": {"name": "fedavg", "learning_rate": SERVER_LR},
        },
    )
    await register_synthetic(config, SHAPES)
    ledger = Ledger()
    rng = random.Random(7)
    server = start_server(data, config, tmp_path)
    tokens = await enroll_with(server.url, DEVICES)
    kills = 0
    try:
        for kill in range(KILLS):
            await _run_until_kill(server, tokens, ledger, more=rng.randint(3, 17), seed=kill)
            kills += 1
            in_flight = {s.assignment for s in ledger.sent if s.status is None}
            server = start_server(data, config, tmp_path)
            # Outstanding after the restart: at most the plans still in flight,
            # never the used ones (those came back by the dozen before).
            outstanding = (await _model(server.url))["outstanding_assignments"]
            assert isinstance(outstanding, int) and outstanding <= DEVICES, outstanding
            async with aiohttp.ClientSession() as session:
                # What got no answer is retried with the same key (as the agent's
                # durable queue does first thing): one 202 each.
                for s in [s for s in ledger.sent if s.status is None]:
                    await upload(session, server.url, s)
                    assert s.status == 202, (s.status, s.assignment in in_flight)
            # Devices train again: waits of one pacing interval, then a plan.
            await _first_plan_after_restart(server.url, tokens[kill % DEVICES])
            async with aiohttp.ClientSession() as session:
                # A used plan takes no second update under a new key.
                used = [s for s in ledger.sent if s.status == 202]
                for s in rng.sample(used, min(12, len(used))):
                    again = Sent(
                        str(uuid.uuid4()), s.assignment, s.version, s.examples, s.body,
                        s.device_token,
                    )
                    await upload(session, server.url, again)
                    assert again.status == 409, (again.status, s.assignment)
        await asyncio.sleep(0.5)
    finally:
        assert stop_server(server) == 0
    assert kills == KILLS

    # Every acknowledged key is in the log exactly once; nothing else is.
    acked = ledger.acked
    log = UpdateLog(data / "log", fsync=False)
    log.open()
    records = list(log.replay(0))
    log.close()
    logged = [r.header["key"].partition("/")[2] for r in records]
    assert len(logged) == len(set(logged))
    assert set(logged) == acked
    db = sqlite3.connect(data / "fedge.sqlite3")
    rows = db.execute(
        "SELECT version, weights_sha256, num_updates FROM versions "
        "WHERE model='m' AND kind='aggregated' ORDER BY version"
    ).fetchall()
    published = db.execute("SELECT COUNT(*) FROM published_updates").fetchone()[0]
    db.close()
    assert sum(r[2] for r in rows) == published == K * len(rows)
    assert len(rows) >= KILLS
    # Each published version equals the uninterrupted computation, bit for bit.
    expected = expected_versions(data)
    blobs = BlobStore(data / "blobs")
    for (version, sha, _), want in zip(rows, expected, strict=True):
        got = quantization.decode_weights(blobs.get(sha), expected=SHAPES)
        for name in SHAPES:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"v{version} {name}")
