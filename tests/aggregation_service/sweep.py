"""The API sweep: schemathesis against a real ``fedge serve`` on loopback,
once per credential kind (none, operator, device, dashboard session), with a
fixed number of cases per operation and a fixed seed.

Used by tests/aggregation_service/test_api_fuzz.py (a bounded pass in
``make test``) and bench/bench_sweep.py (a larger one, for the README).
Identifiers the fuzzer cannot invent — the model's name, an assignment id —
come from schemathesis dictionaries, so most cases get past "unknown model"
to the check-in, upload and operator logic behind it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.aggregation_service.conftest import OPERATOR, initial_weights, synthetic_manifest
from tests.aggregation_service.realserver import (
    ServerProcess,
    start_server,
    stop_server,
    write_config,
)

MODEL = "digits"
KINDS = ("none", "operator", "device", "dashboard")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


@dataclass(frozen=True)
class KindResult:
    kind: str
    cases: int
    failures: int
    exit_code: int
    output: str


@dataclass(frozen=True)
class SweepResult:
    kinds: tuple[KindResult, ...]
    server_alive: bool
    server_5xx: int

    @property
    def cases(self) -> int:
        return sum(k.cases for k in self.kinds)


async def _register(config: Path) -> None:
    from aggregation_service import AggregationService, load_config

    service = AggregationService(load_config(config, environ={"FEDGE_OPERATOR_TOKEN": OPERATOR}))
    await service.start()
    await service.push_synthetic(
        MODEL, synthetic_manifest({"w": (4, 3), "b": (3,)}, name=MODEL), initial_weights()
    )
    await service.stop()


async def _credentials(url: str) -> dict[str, list[str]]:
    """Header lines per credential kind (and assignment ids for the dictionary)."""
    op = {"Authorization": f"Bearer {OPERATOR}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/v1/enrollment-tokens", json={"uses": 1}, headers=op) as r:
            token = (await r.json())["token"]
        # A token for the fuzzer's own enrollments (each case may use one up).
        async with s.post(
            f"{url}/v1/enrollment-tokens", json={"uses": 1_000_000}, headers=op
        ) as r:
            fuzz_token = (await r.json())["token"]
        async with s.post(f"{url}/v1/devices/enroll", json={"enrollment_token": token}) as r:
            device = (await r.json())["device_token"]
        assignments = []
        for _ in range(40):
            async with s.post(
                f"{url}/v1/devices/checkin",
                json={"model": MODEL, "eligible": True},
                headers={"Authorization": f"Bearer {device}"},
            ) as r:
                answer = await r.json()
            if answer.get("action") == "train":
                assignments.append(answer["plan"]["assignment_id"])
            if len(assignments) >= 5:
                break
        async with s.post(
            f"{url}/login", data={"token": OPERATOR}, allow_redirects=False
        ) as r:
            cookie = r.cookies["fedge_session"].value
        async with s.get(f"{url}/", headers={"Cookie": f"fedge_session={cookie}"}) as r:
            page = await r.text()
    match = re.search(r'<meta name="fedge-csrf" content="([^"]+)">', page)
    assert match is not None, "the dashboard page carries no CSRF token"
    return {
        "none": [],
        "operator": [f"Authorization: Bearer {OPERATOR}"],
        "device": [f"Authorization: Bearer {device}"],
        "dashboard": [f"Cookie: fedge_session={cookie}", f"X-Fedge-CSRF: {match.group(1)}"],
        "assignments": assignments,
        "enrollment": [fuzz_token],
    }


def _config(path: Path, assignments: list[str], enrollment: list[str]) -> None:
    def values(items: list[Any]) -> str:
        return json.dumps(items)

    path.write_text(
        "\n".join(
            [
                "[dictionaries.models]",
                f"values = {values([MODEL])}",
                "[dictionaries.versions]",
                "values = [1]",
                "[dictionaries.assignments]",
                f"values = {values(assignments)}",
                "[dictionaries.enrollment]",
                f"values = {values(enrollment)}",
                "[parameters]",
                '"body.enrollment_token" = { dictionary = "enrollment", probability = 0.5 }',
                '"path.model" = { dictionary = "models", probability = 0.9 }',
                '"path.version" = { dictionary = "versions", probability = 0.8 }',
                '"body.model" = { dictionary = "models", probability = 0.9 }',
                '"header.Fedge-Model" = { dictionary = "models", probability = 0.9 }',
                '"header.Fedge-Assignment" = { dictionary = "assignments", probability = 0.7 }',
                '"header.Fedge-Base-Version" = { dictionary = "versions", probability = 0.8 }',
                "",
            ]
        ),
        encoding="utf-8",
    )


def _schemathesis(
    url: str, config: Path, headers: list[str], kind: str, *, max_examples: int, seed: int
) -> KindResult:
    exe = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    args = [
        exe,
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    for header in headers:
        args += ["-H", header]
    if kind == "dashboard":  # logging out would end the session the run uses
        args += ["--exclude-path", "/logout"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    done = subprocess.run(
        args, check=False, capture_output=True, text=True, env=env, timeout=900
    )
    out = done.stdout + done.stderr
    cases = re.search(r"(\d+) generated", out)
    failures = re.search(r"found (\d+) unique failure", out)
    return KindResult(
        kind,
        int(cases.group(1)) if cases else 0,
        int(failures.group(1)) if failures else 0,
        done.returncode,
        out,
    )


def run_sweep(workdir: Path, *, max_examples: int, seed: int = 1) -> SweepResult:
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    config = write_config(
        workdir / "server.yaml",
        data,
        rate_limit={"rate_per_s": 100000.0, "burst": 100000},
    )
    asyncio.run(_register(config))
    server: ServerProcess = start_server(data, config, workdir)
    try:
        creds = asyncio.run(_credentials(server.url))
        st_config = workdir / "schemathesis.toml"
        _config(st_config, creds["assignments"], creds["enrollment"])
        kinds = tuple(
            _schemathesis(
                server.url, st_config, creds[kind], kind, max_examples=max_examples, seed=seed
            )
            for kind in KINDS
        )
        alive = server.proc.poll() is None
    finally:
        stop_server(server)
    log = (workdir / "server.log").read_text(errors="replace")
    return SweepResult(kinds, alive, log.count("internal error on "))
