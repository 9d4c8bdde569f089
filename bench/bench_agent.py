"""Device agent benchmark: memory and CPU while waiting, memory while training,
and how fast training stops when eligibility lapses.

- Idle: a real ``fedge agent run`` process waiting on an ineligible policy
  (a discharging battery in a fake sysfs tree; default 60 s re-checks), sampled
  over a 60 s window (``--quick``: 15 s). RSS and CPU seconds in the window,
  against a bare ``python -c "import numpy, aiohttp; sleep"`` process measured
  over the same window.
- Training: peak RSS (VmHWM) of the training worker training the reference
  ``mlp`` on the scikit-learn digits data (5 epochs), against model + data
  size (the target: within 40 MB of it) and against a worker-like process that
  only imports NumPy and ai-edge-litert.
- Lapse: the real agent trains (child process) against the real service on
  loopback; another task makes the device ineligible at a random moment; we
  count batches that finished after the lapse (target ≤ 1: only the one in
  flight) and the time from the lapse to the end of the cycle (worker stopped).

Run: ``.venv/bin/python bench/bench_agent.py [--quick]``; writes
``bench/results/agent.json``. Needs TensorFlow only to export the model once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedge.bench import emit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

Row = dict[str, Any]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def row(metric: str, value: float, unit: str, baseline: float | None, target: str | None,  # noqa: PLR0917
        note: str, benchmark: str) -> Row:
    return {
        "benchmark": benchmark, "metric": metric, "value": value, "unit": unit,
        "baseline": baseline,
        "ratio": (value / baseline) if baseline not in (None, 0) else None,
        "target": target, "note": note,
    }


def proc_status(pid: int, key: str) -> float:
    """A /proc/<pid>/status value in MB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def private_mb(pid: int) -> float:
    """USS: memory only this process holds (shared libraries' pages excluded)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def export_mlp(out: Path) -> Path:
    from model_export import export_reference

    export_reference("mlp", out, input_shape=(64,), classes=10)
    return out


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int32)


# --- idle ---------------------------------------------------------------------------------


def bench_idle(tmp: Path, window: float) -> list[Row]:
    from edge_client.storage import Identity, StateDir

    fake = tmp / "sysroot" / "sys/class/power_supply/BAT0"
    fake.mkdir(parents=True)
    (fake / "type").write_text("Battery\n")
    (fake / "status").write_text("Discharging\n")
    (fake / "capacity").write_text("55\n")
    state = StateDir(tmp / "idle-state")
    state.prepare()
    state.save_identity(Identity("dev-bench", "token", "http://127.0.0.1:9", time.time()))
    (tmp / "idle-data").mkdir()
    config = tmp / "idle.yaml"
    config.write_text(
        f"server: http://127.0.0.1:9\nmodel: digits\nstate_dir: {tmp / 'idle-state'}\n"
        f"data: {{kind: npz, path: {tmp / 'idle-data'}}}\n"
        f"eligibility: {{providers: [sysfs, load, thermal], sysfs_root: {tmp / 'sysroot'}}}\n"
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "fedge", "agent", "run", "--config", str(config)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    bare = subprocess.Popen(
        [sys.executable, "-c", f"import numpy, aiohttp, time; time.sleep({window + 60})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)  # imports, runtime probe (a child), the first cycle and its report
        cpu0, bare0 = cpu_seconds(agent.pid), cpu_seconds(bare.pid)
        rss_max = bare_max = 0.0
        end = time.monotonic() + window
        while time.monotonic() < end:
            rss_max = max(rss_max, proc_status(agent.pid, "VmRSS"))
            bare_max = max(bare_max, proc_status(bare.pid, "VmRSS"))
            time.sleep(1.0)
        cpu = cpu_seconds(agent.pid) - cpu0
        bare_cpu = cpu_seconds(bare.pid) - bare0
        status = json.loads((tmp / "idle-state" / "status.json").read_text())
    finally:
        for proc in (agent, bare):
            proc.terminate()
            proc.wait(10)
    assert status["eligibility"]["reasons"] == ["not_charging"], status["eligibility"]
    note = f"waiting on not_charging, {window:.0f} s window"
    return [
        row("agent RSS while waiting", rss_max, "MB", bare_max, "≤ 60 MB",
            note + "; baseline: bare python importing numpy+aiohttp", "agent idle"),
        row("agent CPU time while waiting", cpu, "s", bare_cpu, "near zero",
            note + f" ({100 * cpu / window:.3f} % of one core); baseline: the sleeping bare "
            "process", "agent idle"),
    ]


# --- training RSS ---------------------------------------------------------------------------


async def _train_rss(
    model_dir: Path, data_dir: Path, epochs: int
) -> tuple[float, float, int, int]:
    from edge_client.config import DataConfig
    from edge_client.trainer import ProcessTrainer, TrainingJob
    from fedge.manifest import load_model_dir
    from quantization import decode_weights  # noqa: F401  (the agent's own import set)

    manifest, graph = load_model_dir(model_dir)
    rng = np.random.default_rng(0)
    weights = {t.name: (rng.standard_normal(t.shape) * 0.05).astype(np.float32)
               for t in manifest.tensors}
    trainer = ProcessTrainer()
    job = TrainingJob(graph, manifest, weights, DataConfig("npz", path=str(data_dir)), epochs,
                      32, 0.05, None, 0.0, 0)
    session = await trainer.start(job)
    steps = 0
    while await session.step() is not None:
        steps += 1
    assert trainer.last_session is not None
    peak = proc_status(trainer.last_session.pid, "VmHWM")
    uss = private_mb(trainer.last_session.pid)
    await session.finish()
    return peak, uss, session.data_bytes, steps


def bench_training(tmp: Path, model_dir: Path) -> list[Row]:
    x, y = digits()
    data_dir = tmp / "digits"
    data_dir.mkdir()
    np.savez(data_dir / "digits.npz", x=x, y=y)
    peak, uss, data_bytes, steps = asyncio.run(_train_rss(model_dir, data_dir, epochs=5))
    model_bytes = (model_dir / "model.tflite").stat().st_size
    size_mb = (model_bytes + data_bytes) / (1 << 20)
    probe = subprocess.run(
        [sys.executable, "-c",
         "import numpy, ai_edge_litert.interpreter\n"
         "for line in open('/proc/self/status'):\n"
         "    line.startswith('VmHWM') and print(int(line.split()[1]) / 1024)\n"
         "print(sum(int(l.split()[1]) for l in open('/proc/self/smaps_rollup')\n"
         "          if l.startswith(('Private_Clean:', 'Private_Dirty:'))) / 1024)"],
        check=True, capture_output=True, text=True,
    )
    imports_mb, imports_uss = (float(v) for v in probe.stdout.split())
    note = (f"worker peak RSS, {steps} train steps (5 epochs × {len(x)} digits, batch 32); "
            f"model {model_bytes / 1024:.0f} KB + data {data_bytes / 1024:.0f} KB")
    return [
        row("training worker peak RSS − (model + data)", peak - size_mb, "MB", None,
            "≤ 40 MB", note, "agent training"),
        row("training worker peak RSS", peak, "MB", imports_mb, None,
            note + "; baseline: a process importing numpy + ai-edge-litert only",
            "agent training"),
        row("training worker private memory (USS) − (model + data)", uss - size_mb, "MB",
            None, "≤ 40 MB", note + "; USS excludes shared-library pages (libpython, "
            "libcrypto, numpy's and the runtime's .so) that RSS counts", "agent training"),
        row("training worker private memory (USS)", uss, "MB", imports_uss, None,
            note + "; baseline: USS of the numpy + ai-edge-litert import-only process",
            "agent training"),
    ]


# --- lapse ----------------------------------------------------------------------------------

OPERATOR = "bench-operator-token-0123456789"


def multipart(parts: dict[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    boundary = "fedge-bench-boundary"
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{filename}"\r\nContent-Type: {ctype}\r\n\r\n'.encode() + data + b"\r\n"
        for name, (filename, data, ctype) in parts.items()
    ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)



async def _lapse_trials(tmp: Path, model_dir: Path, data_dir: Path, trials: int
                        ) -> tuple[list[int], list[float], list[int]]:
    from aiohttp.test_utils import TestServer

    from aggregation_service.app import create_app
    from aggregation_service.config import ServiceConfig, TrainingConfig
    from edge_client.agent import LAPSED, Agent
    from edge_client.config import AgentConfig
    from edge_client.eligibility import ALWAYS_ELIGIBLE, DeviceState, SimulatedStateProvider
    from edge_client.protocol import ProtocolClient
    from edge_client.storage import Identity, StateDir
    from edge_client.trainer import ProcessTrainer, TrainingJob, TrainingSession
    from edge_client.transport import HttpTransport
    from fedge.clock import SystemClock

    training = TrainingConfig.from_dict({
        "buffer_size": 1000, "pace_min_retry_s": 0.01, "pace_max_retry_s": 0.02,
        "over_provisioning": 1000,
        "client": {"epochs": 50, "batch_size": 32, "learning_rate": 0.05,
                   "max_examples": 1_000_000},
    })
    server = TestServer(create_app(ServiceConfig(data_dir=tmp / "svc", operator_token=OPERATOR,
                                                 fsync=False, training=training)),
                        host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    operator = HttpTransport(url)
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    ctype, body = multipart({
        "manifest": ("manifest.json", (model_dir / "manifest.json").read_bytes(), "a/json"),
        "model": ("model.tflite", (model_dir / "model.tflite").read_bytes(), "a/octet-stream"),
    })
    resp = await operator.request("POST", "/v1/models/digits/versions",
                                  headers={**auth, "Content-Type": ctype}, body=body)
    assert resp.status == 201, resp
    resp = await operator.request(
        "POST", "/v1/enrollment-tokens", body=json.dumps({"uses": trials}).encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert resp.status == 201, resp
    token = resp.json()["token"]
    clock = SystemClock()
    lapsed = {"at": None}
    counts = {"steps": 0, "at_lapse": 0}

    class CountingTrainer:
        def __init__(self) -> None:
            self.inner = ProcessTrainer()

        async def probe_runtime(self) -> str:
            return await self.inner.probe_runtime()

        async def start(self, job: TrainingJob) -> TrainingSession:
            session = await self.inner.start(job)
            step = session.step

            async def counted() -> Any:
                result = await step()
                counts["steps"] += 1
                return result

            session.step = counted  # type: ignore[method-assign]
            return session

    def schedule(now: float) -> DeviceState:
        return ALWAYS_ELIGIBLE if lapsed["at"] is None else DeviceState(on_power=False)

    after, delays, steps = [], [], []
    rnd = random.Random(0)
    for i in range(trials):
        client = ProtocolClient(HttpTransport(url))
        device_id, device_token = await client.enroll(token, {"name": "bench"})
        await client.transport.close()
        cfg = AgentConfig.from_dict({
            "server": url, "model": "digits", "state_dir": str(tmp / f"lapse{i}"),
            "data": {"kind": "npz", "path": str(data_dir)},
        })
        state = StateDir(cfg.state_dir)
        state.prepare()
        state.save_identity(Identity(device_id, device_token, url, time.time()))
        trainer = CountingTrainer()
        agent = Agent(cfg, clock=clock, transport=HttpTransport(url), trainer=trainer,  # type: ignore[arg-type]
                      provider=SimulatedStateProvider(schedule, clock), state=state)
        lapsed["at"] = None
        counts["steps"] = 0
        async def flip(trainer: CountingTrainer) -> None:
            while trainer.inner.last_session is None or counts["steps"] < 5:
                await asyncio.sleep(0.0005)
            await asyncio.sleep(rnd.uniform(0, 0.01))
            lapsed["at"] = time.perf_counter()
            counts["at_lapse"] = counts["steps"]

        flipper = asyncio.create_task(flip(trainer))
        result = await agent.run_cycle()
        ended = time.perf_counter()
        await flipper
        assert result.outcome == LAPSED, result
        after.append(counts["steps"] - counts["at_lapse"])
        delays.append((ended - float(lapsed["at"] or 0)) * 1000)
        steps.append(counts["at_lapse"])
        await agent.close()
    await operator.close()
    await server.close()
    return after, delays, steps


def bench_lapse(tmp: Path, model_dir: Path, trials: int) -> list[Row]:
    x, y = digits()
    data_dir = tmp / "lapse-data"
    data_dir.mkdir()
    np.savez(data_dir / "digits.npz", x=x, y=y)
    after, delays, steps = asyncio.run(_lapse_trials(tmp, model_dir, data_dir, trials))
    note = (f"{trials} trials; lapse at a random moment after ≥5 batches (batches done at "
            f"lapse: {min(steps)}–{max(steps)}); child-process trainer, real service")
    return [
        row("batches finished after eligibility lapsed (max)", float(max(after)), "batches",
            None, "≤ 1", note + "; the batch in flight at the lapse may finish, none starts "
            f"after it (mean {np.mean(after):.2f})", "agent lapse"),
        row("lapse → cycle ended (median)", float(np.median(delays)), "ms", None, None,
            note + "; includes stopping the worker", "agent lapse"),
    ]


def run(quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="fedge-bench-agent-") as name:
        tmp = Path(name)
        model_dir = export_mlp(tmp / "mlp")
        rows = bench_training(tmp, model_dir)
        rows += bench_lapse(tmp, model_dir, trials=5 if quick else 20)
        rows += bench_idle(tmp, window=15.0 if quick else 60.0)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s idle window, 5 lapse trials")
    args = parser.parse_args()
    rows = run(args.quick)
    emit(rows, REPO / "bench" / "results" / "agent.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
