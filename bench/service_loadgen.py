"""Load generator for bench_service.py: runs in its own process.

Modes:
- ``upload``: phase 1 (untimed) obtains one plan per update via check-ins when
  ``--checkin`` is given; phase 2 (timed) posts the update frames over
  ``--concurrency`` connections and measures each acknowledgement's latency.
- ``cycle``: every update is check-in + upload (steady state, for memory).

Bounded in count (``--count``) and time (``--max-seconds``); loopback only.
Prints ``{"phase": "timed"}`` when the timed phase starts, then one JSON
object with the results (including its own CPU per request).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import quantization  # noqa: E402


def make_frames(shapes: dict[str, list[int]], n: int) -> list[bytes]:
    spec = quantization.CodecSpec(density=0.01, bits=8)
    frames = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        delta = {
            k: (rng.standard_t(3, size=s) * 1e-3).astype(np.float32) for k, s in shapes.items()
        }
        frames.append(quantization.encode(delta, spec, seed=seed).payload)
    return frames


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["upload", "cycle"], default="upload")
    p.add_argument("--devices", type=Path, required=True, help="JSON: tokens, model, shapes")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=120.0)
    p.add_argument("--checkin", action="store_true", help="get real plans (fedge server)")
    args = p.parse_args()
    spec = json.loads(args.devices.read_text())
    tokens: list[str] = spec["tokens"]
    frames = make_frames(spec["shapes"], 8)
    frame_cycle = itertools.cycle(frames)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def checkin(token: str) -> dict[str, Any]:
            body = {"model": spec["model"], "eligible": True}
            for _ in range(1000):
                async with session.post(
                    f"{args.url}/v1/devices/checkin",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    answer = await r.json()
                if answer.get("action") == "train":
                    plan: dict[str, Any] = answer["plan"]
                    return plan
                await asyncio.sleep(0.001)
            raise RuntimeError("never admitted")

        async def upload(token: str, plan: dict[str, Any]) -> None:
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
                "Idempotency-Key": str(uuid.uuid4()),
                "Fedge-Assignment": plan["assignment_id"],
                "Fedge-Model": spec["model"],
                "Fedge-Base-Version": str(plan["version"]),
                "Fedge-Examples": "100",
            }
            started = time.perf_counter()
            async with session.post(
                f"{args.url}/v1/devices/updates", data=next(frame_cycle), headers=headers
            ) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            latencies.append(time.perf_counter() - started)

        work: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        if args.mode == "upload":
            fake = {"assignment_id": "as-bench", "version": 1}

            async def prepare(i: int) -> None:
                token = tokens[i % len(tokens)]
                work.put_nowait((token, await checkin(token) if args.checkin else fake))

            for start in range(0, args.count, args.concurrency):
                await asyncio.gather(
                    *(prepare(i) for i in range(start, min(args.count, start + args.concurrency)))
                )
        else:
            for i in range(args.count):
                work.put_nowait((tokens[i % len(tokens)], {}))
        deadline = time.monotonic() + args.max_seconds

        async def worker() -> None:
            while not work.empty() and time.monotonic() < deadline:
                token, plan = work.get_nowait()
                if args.mode == "cycle":
                    plan = await checkin(token)
                await upload(token, plan)

        # Tell the bench the timed phase starts (it samples the server's CPU).
        print(json.dumps({"phase": "timed"}), flush=True)
        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    lat = np.array(latencies) if latencies else np.zeros(1)
    print(
        json.dumps(
            {
                "completed": len(latencies),
                "accepted": statuses.get(202, 0),
                "statuses": statuses,
                "seconds": seconds,
                # The client's own CPU: it shares the machine with the server.
                "client_cpu_ms_per_request": cpu_seconds / max(1, len(latencies)) * 1e3,
                "per_second": statuses.get(202, 0) / seconds,
                "p50_ms": float(np.percentile(lat, 50) * 1e3),
                "p99_ms": float(np.percentile(lat, 99) * 1e3),
                "frame_bytes": int(np.mean([len(f) for f in frames])),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
