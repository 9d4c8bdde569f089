"""The kill drill: repeated SIGKILLs of a real ``fedge serve`` under load from
concurrent devices, at random moments of ingest and publication, each
followed by a restart on the same data directory.

It counts rather than asserts, so the same run serves the test
(tests/aggregation_service/test_repeated_kills.py, which asserts every count
is what it must be) and the benchmark (bench/bench_sweep.py, which reports
them). After every restart it checks:

- every upload that got no answer is retried with its idempotency key;
- no assignment whose update was acknowledged is outstanding again
  (``revived``: outstanding plans beyond those still in flight);
- no used plan takes a second update under a new key;
- a device gets a plan again after waits of one pacing interval;

and at the end that every acknowledged update is in the log exactly once
(``lost``, ``doubled``) and every published version equals the
uninterrupted FedBuff computation bit for bit.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

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

DEVICES = 8
PACE_MAX_S = 2.0


@dataclass(frozen=True)
class DrillResult:
    kills: int
    acknowledged: int
    lost: int  # acknowledged, not in the log
    doubled: int  # in the log more than once, or never acknowledged by anyone
    # The most outstanding plans after a restart beyond those that may be: the
    # plans known unreported, plus one check-in per device that a kill may have
    # cut off after its plan was written.
    revived: int
    retries_refused: int  # unanswered uploads whose same-key retry was not a 202
    second_updates: int  # used plans that took another update under a new key
    stalled_restarts: int  # restarts after which no device got a plan in 50 check-ins
    max_wait_s: float  # the longest retry_after told after a restart
    versions: int
    versions_differing: int  # published versions not bit for bit the recomputation
    exit_code: int  # of the final graceful stop


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
    deadline = time.monotonic() + 300
    while len(ledger.acked) < target or all(s.status is not None for s in ledger.sent):
        if time.monotonic() > deadline:
            raise RuntimeError("the fleet stopped making progress")
        await asyncio.sleep(0.002)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    stop.set()
    await asyncio.gather(*tasks)


async def _outstanding(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/models/m", headers=OP) as r:
        return int((await r.json())["outstanding_assignments"])


async def _plan_after_restart(url: str, token: str) -> tuple[str | None, float]:
    """The plan a check-in got within 50 tries (each after the retry_after it
    was told), or None, and the longest wait it was told."""
    longest = 0.0
    auth = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.post(
                f"{url}/v1/devices/checkin", json={"model": "m", "eligible": True}, headers=auth
            ) as r:
                answer = await r.json()
            if answer["action"] == "train":
                return str(answer["plan"]["assignment_id"]), longest
            longest = max(longest, float(answer["retry_after"]))
            await asyncio.sleep(answer["retry_after"])
    return None, longest


async def run_kill_drill(workdir: Path, *, kills: int, seed: int = 7) -> DrillResult:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    config = write_config(
        workdir / "server.yaml",
        data,
        rate_limit={"rate_per_s": 10000.0, "burst": 10000},
        training={
            "buffer_size": K,
            "staleness_exponent": A,
            "max_staleness": 1000,
            # 20 plans for K = 5: room for the plans whose answers a kill lost (each
            # stays outstanding until its deadline), so only revived ones could fill it.
            "over_provisioning": 4.0,
            # Plans whose answers a kill lost expire soon: many kills must not
            # fill the pipeline with them (the sweeper frees them every 30 s).
            "report_deadline_s": 30.0,
            "deadline_grace_s": 5.0,
            "pace_min_retry_s": 0.5,
            "pace_max_retry_s": PACE_MAX_S,
            "optimizer": {"name": "fedavg", "learning_rate": SERVER_LR},
        },
    )
    await register_synthetic(config, SHAPES)
    ledger = Ledger()
    rng = random.Random(seed)
    revived = retries_refused = second = stalled = 0
    longest = 0.0
    probes: set[str] = set()  # plans taken after restarts and never reported
    server = start_server(data, config, workdir)
    tokens = await enroll_with(server.url, DEVICES)
    try:
        for kill in range(kills):
            await _run_until_kill(server, tokens, ledger, more=rng.randint(3, 17), seed=kill)
            server = start_server(data, config, workdir)
            unreported = {s.assignment for s in ledger.sent if s.status != 202} | probes
            revived = max(revived, await _outstanding(server.url) - len(unreported) - DEVICES)
            async with aiohttp.ClientSession() as session:
                # What got no answer is retried with the same key (as the agent's
                # durable queue does first thing).
                for s in [s for s in ledger.sent if s.status is None]:
                    await upload(session, server.url, s)
                    retries_refused += s.status != 202
            got, told = await _plan_after_restart(server.url, tokens[kill % DEVICES])
            stalled += got is None
            probes |= {got} if got else set()
            longest = max(longest, told)
            async with aiohttp.ClientSession() as session:
                used = [s for s in ledger.sent if s.status == 202]
                for s in rng.sample(used, min(12, len(used))):
                    again = Sent(
                        str(uuid.uuid4()),
                        s.assignment,
                        s.version,
                        s.examples,
                        s.body,
                        s.device_token,
                    )
                    await upload(session, server.url, again)
                    second += again.status == 202
        await asyncio.sleep(0.5)
    finally:
        exit_code = stop_server(server)

    acked = ledger.acked
    log = UpdateLog(data / "log", fsync=False)
    log.open()
    records = list(log.replay(0))
    log.close()
    logged = [r.header["key"].partition("/")[2] for r in records]
    doubled = len(logged) - len(set(logged)) + len(set(logged) - acked)
    db = sqlite3.connect(data / "fedge.sqlite3")
    rows = db.execute(
        "SELECT version, weights_sha256, num_updates FROM versions "
        "WHERE model='m' AND kind='aggregated' ORDER BY version"
    ).fetchall()
    db.close()
    expected = expected_versions(data)
    blobs = BlobStore(data / "blobs")
    differing = abs(len(expected) - len(rows))
    for (_, sha, _), want in zip(rows, expected, strict=False):
        got = quantization.decode_weights(blobs.get(sha), expected=SHAPES)
        differing += any(not np.array_equal(got[n], want[n]) for n in SHAPES)
    return DrillResult(
        kills=kills,
        acknowledged=len(acked),
        lost=len(acked - set(logged)),
        doubled=doubled,
        revived=max(0, revived),
        retries_refused=retries_refused,
        second_updates=second,
        stalled_restarts=stalled,
        max_wait_s=longest,
        versions=len(rows),
        versions_differing=differing,
        exit_code=exit_code,
    )
