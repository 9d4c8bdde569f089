"""The backup procedures of docs/operator-guide.md, run against a real service.

The live procedure is read from the guide (the shell blocks marked for this
test) and run with bash, paths and the model name substituted, while a real
`fedge serve` holds a published version and a half-full buffer. The copy is
restored into a new directory with the guide's restore block, a second
service starts on it, and it must hold the same versions and the same
buffer: a retried upload of a buffered update is a duplicate with the same
update id, and one more upload completes the buffer into the next version.
The stopped procedure is checked the same way.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

import quantization
from tests.aggregation_service.conftest import OPERATOR
from tests.aggregation_service.realserver import (
    ServerProcess,
    register_synthetic,
    start_server,
    stop_server,
    write_config,
)
from tests.conftest import REPO

GUIDE = REPO / "docs" / "operator-guide.md"
MARK = "<!-- tests/test_backup_restore.py runs this block -->"
SHAPES = {"w": (8, 4), "b": (4,)}
K = 3
OP = {"Authorization": f"Bearer {OPERATOR}"}


def marked_blocks() -> list[list[str]]:
    """The command lines of each shell block that follows the marker."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(re.escape(MARK) + r"\n```sh\n(.*?)```", text, flags=re.S)
    return [[line for line in b.splitlines() if line.strip()] for b in blocks]


def localize(line: str, paths: dict[str, Path]) -> str:
    """The guide's example paths → this test's directories; its model → ours."""
    for example in sorted(paths, key=len, reverse=True):  # longest first
        line = line.replace(example, str(paths[example]))
    return re.sub(r"\bdigits\b", "m", line)


def bash(script: str, url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FEDGE_SERVER": url,
        "FEDGE_OPERATOR_TOKEN": OPERATOR,
        "PYTHONPATH": str(REPO),
    }
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Fleet:
    """Enrolled devices that each upload one real codec frame per plan."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url
        self.rng = np.random.default_rng(3)

    async def device(self) -> str:
        async with self.session.post(
            f"{self.url}/v1/enrollment-tokens", json={"uses": 1}, headers=OP
        ) as r:
            token = (await r.json())["token"]
        async with self.session.post(
            f"{self.url}/v1/devices/enroll", json={"enrollment_token": token}
        ) as r:
            device_token: str = (await r.json())["device_token"]
        return device_token

    async def plan(self, device: str) -> dict[str, Any]:
        # Pace steering admits with probability (target − outstanding) / target:
        # a refusal is legitimate, so ask again (bounded, within the per-device
        # rate limit's burst of 20) as a device would.
        for _ in range(15):
            async with self.session.post(
                f"{self.url}/v1/devices/checkin",
                json={"model": "m", "eligible": True},
                headers={"Authorization": f"Bearer {device}"},
            ) as r:
                answer = await r.json()
            if answer.get("reason") != "pace_steering":
                break
        assert answer["action"] == "train", answer
        plan: dict[str, Any] = answer["plan"]
        return plan

    def frame(self) -> bytes:
        delta = {k: self.rng.normal(0, 0.1, size=s).astype(np.float32) for k, s in SHAPES.items()}
        return quantization.encode(delta, quantization.CodecSpec(density=0.5, bits=8)).payload

    async def upload(
        self, url: str, device: str, plan: dict[str, Any], key: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        headers = {
            "Authorization": f"Bearer {device}",
            "Content-Type": "application/octet-stream",
            "Idempotency-Key": key,
            "Fedge-Assignment": plan["assignment_id"],
            "Fedge-Model": "m",
            "Fedge-Base-Version": str(plan["version"]),
            "Fedge-Examples": "10",
        }
        async with self.session.post(f"{url}/v1/devices/updates", data=body, headers=headers) as r:
            return r.status, await r.json()

    async def train_once(self) -> tuple[str, dict[str, Any], str, bytes, dict[str, Any]]:
        device = await self.device()
        plan = await self.plan(device)
        key, body = str(uuid.uuid4()), self.frame()
        status, answer = await self.upload(self.url, device, plan, key, body)
        assert status == 202, answer
        return device, plan, key, body, answer


async def model_state(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/models/m", headers=OP) as r:
        assert r.status == 200
        info: dict[str, Any] = await r.json()
    return info


def lineage(info: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (v["version"], v["kind"], v["base_version"], v["weights_sha256"], v["num_updates"])
        for v in info["versions"]
    ]


async def wait_for(
    session: aiohttp.ClientSession, url: str, version: int, buffered: int
) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        info = await model_state(session, url)
        if info["training_version"] == version and info["buffer"]["count"] == buffered:
            return info
        assert time.monotonic() < deadline, info
        await _sleep()


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.1)


def serve_from_guide(line: str, workdir: Path) -> ServerProcess:
    """Start the guide's `fedge serve --data-dir …` line on a free port."""
    assert line.startswith("fedge serve --data-dir "), line
    port_file = workdir / f"port-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FEDGE_OPERATOR_TOKEN": OPERATOR,
        "PYTHONPATH": str(REPO),
    }
    with (workdir / "restored.log").open("ab") as log:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line} --port 0 --port-file {port_file}"],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, (workdir / "restored.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the restored service did not start"
        time.sleep(0.05)
    return ServerProcess(proc, int(port_file.read_text()))


async def start_live(tmp_path: Path) -> ServerProcess:
    config = write_config(
        tmp_path / "server.yaml",
        tmp_path / "live",
        training={"buffer_size": K, "over_provisioning": 100.0},
    )
    await register_synthetic(config, SHAPES)
    return start_server(tmp_path / "live", config, tmp_path)


async def test_live_backup_with_the_guides_commands_restores_versions_and_buffer(
    tmp_path: Path,
) -> None:
    backup_block, restore_block = marked_blocks()
    assert any("sqlite3" in line and ".backup" in line for line in backup_block)
    paths = {
        "/var/lib/fedge-restored": tmp_path / "restored",
        "/var/lib/fedge": tmp_path / "live",
        "/backup/fedge": tmp_path / "backup",
    }
    live = await start_live(tmp_path)
    restored: ServerProcess | None = None
    try:
        async with aiohttp.ClientSession() as session:
            fleet = Fleet(session, live.url)
            for _ in range(K):  # version 2
                await fleet.train_once()
            buffered = [await fleet.train_once() for _ in range(K - 1)]
            before = await wait_for(session, live.url, version=2, buffered=K - 1)

            # The guide's live backup, verbatim but for the paths.
            script = "\n".join(localize(line, paths) for line in backup_block)
            done = bash(script, live.url, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
            assert not (await model_state(session, live.url))["paused"]

            # The live service moves on: version 3. The backup must not.
            await fleet.train_once()
            await wait_for(session, live.url, version=3, buffered=0)

            # Restore with the guide's block: copy, serve, resume.
            copy, serve, *rest = (localize(line, paths) for line in restore_block)
            done = bash(copy, live.url, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
            restored = serve_from_guide(serve, tmp_path)
            assert (await model_state(session, restored.url))["paused"]  # as backed up
            done = bash("\n".join(rest), restored.url, tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr

            after = await model_state(session, restored.url)
            assert not after["paused"]
            assert lineage(after) == lineage(before)
            assert after["training_version"] == 2
            assert after["buffer"]["count"] == K - 1

            # The buffer is the same updates: a retry is a duplicate with the same id …
            device, plan, key, body, first = buffered[0]
            status, answer = await fleet.upload(restored.url, device, plan, key, body)
            assert status == 202 and answer["duplicate"] is True, answer
            assert answer["update_id"] == first["update_id"]
            # … and one more update completes it into version 3 there too.
            fleet.url = restored.url
            await fleet.train_once()
            done_info = await wait_for(session, restored.url, version=3, buffered=0)
            assert done_info["versions"][-1]["num_updates"] == K
    finally:
        assert stop_server(live) == 0
        if restored is not None:
            assert stop_server(restored) == 0


async def test_stopped_copy_restores_versions_and_buffer(tmp_path: Path) -> None:
    live = await start_live(tmp_path)
    copy: ServerProcess | None = None
    try:
        async with aiohttp.ClientSession() as session:
            fleet = Fleet(session, live.url)
            for _ in range(K + 1):
                await fleet.train_once()
            before = await wait_for(session, live.url, version=2, buffered=1)
        assert stop_server(live) == 0  # the guide: systemctl stop (SIGTERM)
        done = bash(f"cp -a {tmp_path / 'live'} {tmp_path / 'cold'}", "", tmp_path)
        assert done.returncode == 0, done.stderr
        copy = serve_from_guide(f"fedge serve --data-dir {tmp_path / 'cold'}", tmp_path)
        async with aiohttp.ClientSession() as session:
            after = await model_state(session, copy.url)
        assert lineage(after) == lineage(before)
        assert after["buffer"]["count"] == 1
    finally:
        stop_server(live)
        if copy is not None:
            assert stop_server(copy) == 0
