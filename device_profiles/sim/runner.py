"""One simulation: prepare the fleet, run it in each aggregation mode, report.

``prepare`` does everything that can fail on bad input before any virtual
time passes (data, partitions, model export, eligibility feasibility,
calibration). ``run_mode`` builds the real service app on a ManualClock,
pushes the model, enrolls every device through the device API and runs one
real ``edge_client.Agent`` per device until the virtual duration ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import logging
import math
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device_profiles.datasets import (
    Dataset,
    Scheme,
    load_digits_dataset,
    npz_dataset,
    synthetic_dataset,
)
from device_profiles.datasets import partition as split
from device_profiles.device import SimDevice
from device_profiles.errors import FleetError, SimulationError
from device_profiles.fleet import FleetSpec
from device_profiles.sim.driver import (
    Activity,
    SimEventLoop,
    VirtualTimeDriver,
    loop_jobs,
    quiesce,
)
from device_profiles.sim.metrics import (
    Recorder,
    Sample,
    UploadEvent,
    VersionEvent,
    privacy_fields,
)
from device_profiles.sim.report import RunResult
from device_profiles.sim.state import changes, schedule
from device_profiles.sim.tflite import Calibration, calibrate
from device_profiles.sim.trainer import InterpreterCache, SimTrainer
from device_profiles.sim.transport import InProcessTransport, SimulatedLink
from fedge.clock import ManualClock
from fedge.manifest import Manifest, load_model_dir
from fedge.transport import Response, Transport, TransportError

log = logging.getLogger(__name__)

MODES = ("async", "sync")
SIM_HOST = "http://fedge.simulated"


@dataclass(frozen=True)
class SimOptions:
    out: Path
    compare: bool = False  # run async and sync on the same fleet and seed
    mode: str | None = None  # override the fleet's server.mode
    server_url: str | None = None  # run against a real `fedge serve` over HTTP
    operator_token: str | None = None
    progress: bool = True
    workdir: Path | None = None  # kept after the run if given
    calibration_step_s: float | None = None  # pin the host calibration (determinism tests)
    ray: bool = False  # train on local Ray workers
    ray_address: str | None = None  # or on a Ray cluster
    ray_workers: int = 2
    model_dir: Path | None = None  # reuse an export instead of exporting
    # Secure aggregation: this many devices lose their link right after each
    # masked input (they never answer the unmask step), every round.
    secagg_dropouts: int = 0


@dataclass
class Prepared:
    fleet: FleetSpec
    dataset: Dataset
    devices: list[SimDevice]
    parts: list[np.ndarray]
    model_dir: Path
    manifest: Manifest
    calibration: Calibration
    workdir: Path
    client: Mapping[str, Any]  # the plan's client section, for the baseline
    owns_workdir: bool = False  # a temporary workdir: removed by cleanup()

    def cleanup(self) -> None:
        """Remove the temporary work directory (agents' state, service data,
        the export) unless the caller chose it with ``--workdir``."""
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def load_dataset(fleet: FleetSpec) -> Dataset:
    spec = fleet.dataset
    if spec.kind == "digits":
        return load_digits_dataset(test_fraction=spec.test_fraction, seed=fleet.seed)
    if spec.kind == "synthetic":
        return synthetic_dataset(test_fraction=spec.test_fraction, seed=fleet.seed,
                                 **dict(spec.options))
    assert spec.path is not None
    return npz_dataset(spec.path, test_fraction=spec.test_fraction, seed=fleet.seed)


def sample_devices(fleet: FleetSpec) -> list[SimDevice]:
    devices: list[SimDevice] = []
    for entry in fleet.entries:
        for _ in range(entry.count):
            devices.append(SimDevice.sample(len(devices), entry.profile, fleet.seed))
    return devices


def export_model(fleet: FleetSpec, dataset: Dataset, out: Path) -> Path:
    options = dict(fleet.model.options)
    shape = options.pop("input_shape", None)
    if shape is not None and tuple(shape) != dataset.input_shape:
        raise FleetError(
            f"{fleet.source}: model.options.input_shape {tuple(shape)} does not match the "
            f"dataset's examples {dataset.input_shape} ({fleet.dataset.kind})"
        )
    classes = options.pop("classes", dataset.num_classes)
    if classes != dataset.num_classes:
        raise FleetError(
            f"{fleet.source}: model.options.classes is {classes} but the dataset has "
            f"{dataset.num_classes} classes"
        )
    try:
        from model_export import export_reference  # noqa: PLC0415 — imports TensorFlow
    except ImportError as exc:
        raise SimulationError(
            f"exporting the reference model needs model_export and TensorFlow: {exc}"
        ) from exc
    export_reference(fleet.model.reference, out, input_shape=dataset.input_shape,
                     classes=dataset.num_classes, **options)
    return out


def fit_to_model(dataset: Dataset, manifest: Manifest) -> Dataset:
    """The dataset with its examples reshaped to the model's input shape when
    they hold the same number of values, as the agent's loader does
    (edge_client.data.conform): a 2-D (n, 40) dataset for an input of (40, 1)."""
    shape = manifest.input.shape
    if dataset.input_shape == shape or math.prod(dataset.input_shape) != math.prod(shape):
        return dataset  # equal, or a mismatch check_model reports
    return dataclasses.replace(
        dataset,
        x_train=dataset.x_train.reshape((len(dataset.x_train), *shape)),
        x_test=dataset.x_test.reshape((len(dataset.x_test), *shape)),
    )


def check_model(fleet: FleetSpec, dataset: Dataset, manifest: Manifest) -> None:
    if manifest.input.shape != dataset.input_shape:
        raise FleetError(
            f"{fleet.source}: the model takes inputs of shape {manifest.input.shape} but the "
            f"dataset's examples have shape {dataset.input_shape}"
        )
    classes = manifest.label.num_classes
    if classes is not None and classes < dataset.num_classes:
        raise FleetError(
            f"{fleet.source}: the model has {classes} classes but the dataset's labels go up "
            f"to {dataset.num_classes - 1}"
        )


def policy_config(fleet: FleetSpec) -> Any:
    from edge_client.config import PolicyConfig  # noqa: PLC0415
    from edge_client.errors import ConfigError  # noqa: PLC0415

    try:
        return PolicyConfig.from_dict(dict(fleet.policy))
    except ConfigError as exc:
        raise FleetError(f"{fleet.source}: {exc}") from exc


def training_config(fleet: FleetSpec, mode: str) -> Any:
    from aggregation_service.config import TrainingConfig  # noqa: PLC0415
    from aggregation_service.errors import ConfigError  # noqa: PLC0415

    data = {**dict(fleet.server), "mode": mode}
    if fleet.codec:
        data["codec"] = dict(fleet.codec)
    try:
        return TrainingConfig.from_dict(data, where="server")
    except ConfigError as exc:
        raise FleetError(f"{fleet.source}: {exc}") from exc


def eligible_devices(fleet: FleetSpec, devices: Sequence[SimDevice], step_s: float = 900.0
                     ) -> dict[str, int]:
    """How many devices of each profile are ever eligible to train during the
    run under the fleet's policy and the server's eligibility rules."""
    from edge_client.eligibility.policy import Policy  # noqa: PLC0415

    policy_cfg = policy_config(fleet)
    server = training_config(fleet, str(fleet.server.get("mode", "async"))).eligibility
    clock = ManualClock()
    policy = Policy(policy_cfg, clock)
    offset = fleet.start_utc_hour * 3600.0
    counts: dict[str, int] = {}
    steps = max(1, int(fleet.duration_h * 3600 / step_s))
    for device in devices:
        ok = device.memory_mb >= server.min_memory_mb and (
            not server.profiles or device.profile.name in server.profiles
        )
        if ok:
            state = schedule(device, offset)
            ok = any(policy.evaluate(state(k * step_s)).eligible for k in range(steps))
        counts[device.profile.name] = counts.get(device.profile.name, 0) + int(ok)
    return counts


def prepare(fleet: FleetSpec, options: SimOptions) -> Prepared:
    # Each simulated agent keeps its real on-disk state (status, cache, queue);
    # on tmpfs those thousands of small atomic writes cost microseconds, not ms.
    shm = Path("/dev/shm")
    scratch = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="fedge-sim-", dir=scratch))
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(fleet)
    devices = sample_devices(fleet)
    # Validate the policy and server config up front (errors name the key).
    policy_config(fleet)
    modes = MODES if options.compare else (options.mode or str(fleet.server.get("mode", "async")),)
    for mode in modes:
        if mode not in MODES:
            raise FleetError(f"{fleet.source}: server.mode must be one of {MODES}, got {mode!r}")
        config = training_config(fleet, mode)
    counts = eligible_devices(fleet, devices)
    if sum(counts.values()) == 0:
        raise FleetError(
            f"{fleet.source}: no device is ever eligible to train in {fleet.duration_h:g} h: "
            f"the policy {dict(fleet.policy)} and the server's eligibility rules exclude all "
            f"{len(devices)} devices (battery devices only charge in their nightly window; "
            "metered networks, idleness and min_memory_mb also count)"
        )
    weights = [d.examples_weight for d in devices]
    parts = split(dataset.y_train, len(devices), fleet.partition, seed=fleet.seed,
                  weights=weights if fleet.partition.scheme is Scheme.QUANTITY else None)
    model_dir = options.model_dir or export_model(fleet, dataset, workdir / "model")
    manifest, _ = load_model_dir(model_dir)
    dataset = fit_to_model(dataset, manifest)
    check_model(fleet, dataset, manifest)
    batch = config.client.batch_size
    if options.calibration_step_s is not None:
        calibration = Calibration(options.calibration_step_s, batch, 0, "pinned")
    else:
        calibration = calibrate(model_dir, dataset.x_train, dataset.y_train, batch)
    client = {
        "epochs": config.client.epochs, "batch_size": config.client.batch_size,
        "learning_rate": config.client.learning_rate, "max_examples": config.client.max_examples,
    }
    return Prepared(fleet, dataset, devices, parts, model_dir, manifest, calibration, workdir,
                    client, owns_workdir=options.workdir is None)


# --- the operator side, over any transport --------------------------------------------------


def _multipart(parts: Mapping[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    boundary = "fedge-" + secrets.token_hex(8)
    chunks = []
    for name, (filename, data, ctype) in parts.items():
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks)


class Operator:
    def __init__(self, transport: Transport, token: str) -> None:
        self.transport = transport
        self.auth = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, *, body: bytes | None = None,
                   content_type: str = "application/json", ok: tuple[int, ...] = (200, 201)
                   ) -> Any:
        resp: Response = await self.transport.request(
            method, path, headers={**self.auth, "Content-Type": content_type}, body=body
        )
        if resp.status not in ok:
            raise SimulationError(
                f"service refused {method} {path}: HTTP {resp.status} "
                f"{resp.body[:300].decode(errors='replace')}"
            )
        return resp.json()

    async def push(self, model: str, model_dir: Path) -> Any:
        ctype, body = _multipart({
            "manifest": ("manifest.json", (model_dir / "manifest.json").read_bytes(),
                         "application/json"),
            "model": ("model.tflite", (model_dir / "model.tflite").read_bytes(),
                      "application/octet-stream"),
        })
        return await self.call("POST", f"/v1/models/{model}/versions", body=body,
                               content_type=ctype)

    async def eval_data(self, model: str, x: np.ndarray, y: np.ndarray) -> Any:
        import io  # noqa: PLC0415

        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        return await self.call("PUT", f"/v1/models/{model}/eval-data", body=buf.getvalue(),
                               content_type="application/octet-stream")

    async def enrollment_token(self, uses: int) -> str:
        data = await self.call("POST", "/v1/enrollment-tokens",
                               body=json.dumps({"uses": uses, "ttl_s": 86400 * 365}).encode())
        return str(data["token"])

    async def model(self, model: str) -> Any:
        return await self.call("GET", f"/v1/models/{model}")


# --- metrics taps ---------------------------------------------------------------------------


class RecordingLink(SimulatedLink):
    """A simulated link that also tells the recorder what crossed it."""

    def __init__(self, inner: Transport, device: SimDevice, clock: ManualClock,
                 recorder: Recorder, dense_bytes: int, *, cut_after_input: bool = False) -> None:
        super().__init__(inner, device, clock)
        self.recorder = recorder
        self.dense_bytes = dense_bytes
        self.cut_after_input = cut_after_input

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        rec = self.recorder
        profile = self.device.profile.name
        secagg = path.startswith("/v1/devices/secagg/")
        if secagg and self.cut_after_input and path.endswith("/unmask"):
            raise TransportError(f"{method} {path}: simulated dropout after the masked input")
        up = len(body or b"")
        try:
            response = await super().request(method, path, headers=headers, body=body)
        except TransportError:
            rec.bytes_up += up  # sent, then lost
            rec.bytes_up_by_profile[profile] += up
            raise
        rec.bytes_up += up
        rec.bytes_up_by_profile[profile] += up
        rec.bytes_down += len(response.body)
        if path == "/v1/devices/checkin":
            rec.checkins += 1
            if response.status == 200:
                try:
                    answer = response.json()
                except TransportError:
                    answer = {}
                if isinstance(answer, dict) and answer.get("action") == "train":
                    rec.plans += 1
                    version = int(answer.get("plan", {}).get("version", 0))
                    rec.extra["observed_version"] = max(
                        int(rec.extra.get("observed_version", 0)), version)
                    rec.first_seen.setdefault(version, self.clock.monotonic() / 3600.0)
        elif path == "/v1/devices/updates" and method == "POST":
            hdrs = {k.lower(): v for k, v in (headers or {}).items()}
            base = int(hdrs.get("fedge-base-version", "0"))
            examples = int(hdrs.get("fedge-examples", "0"))
            observed = int(rec.extra.get("observed_version", 0))
            status = response.status
            duplicate = False
            if status == 202:
                try:
                    duplicate = bool(response.json().get("duplicate"))
                except (TransportError, AttributeError):
                    duplicate = False
                if not duplicate:
                    rec.accepted += 1
                    rec.accepted_by_profile[profile] += 1
                    rec.examples_by_profile[profile] += examples
            elif 400 <= status < 500 and status != 429:
                rec.rejected += 1
                rec.rejected_by_status[status] += 1
            if not duplicate:
                rec.uploads.append(UploadEvent(
                    t_h=self.clock.monotonic() / 3600.0, device=self.device.device_id,
                    profile=profile, base_version=base, version_at_ack=observed,
                    staleness=max(0, observed - base), status=status, payload_bytes=up,
                    dense_bytes=self.dense_bytes, examples=examples,
                ))
        elif secagg and method == "POST" and path.endswith("/masked-input"):
            # A masked input stands for an upload (accepted: counted like a 202).
            observed = int(rec.extra.get("observed_version", 0))
            status = 202 if response.status == 200 else response.status
            if status == 202:
                rec.accepted += 1
                rec.accepted_by_profile[profile] += 1
            elif 400 <= status < 500 and status != 429:
                rec.rejected += 1
                rec.rejected_by_status[status] += 1
            rec.uploads.append(UploadEvent(
                t_h=self.clock.monotonic() / 3600.0, device=self.device.device_id,
                profile=profile, base_version=observed, version_at_ack=observed, staleness=0,
                status=status, payload_bytes=up, dense_bytes=self.dense_bytes, examples=0,
            ))
        return response


# --- one run ---------------------------------------------------------------------------------


def dense_update_bytes(manifest: Manifest) -> int:
    return 4 * manifest.num_trainable_parameters


async def _run_mode(prep: Prepared, mode: str, options: SimOptions,
                    on_progress: Callable[[float, Recorder], None] | None) -> RunResult:
    from aiohttp import web  # noqa: PLC0415

    from aggregation_service.app import create_app  # noqa: PLC0415
    from aggregation_service.config import ServiceConfig  # noqa: PLC0415
    from aggregation_service.service import AggregationService  # noqa: PLC0415
    from edge_client.agent import Agent  # noqa: PLC0415
    from edge_client.config import AgentConfig  # noqa: PLC0415
    from edge_client.eligibility.state import SimulatedStateProvider  # noqa: PLC0415
    from edge_client.protocol import ProtocolClient  # noqa: PLC0415
    from edge_client.status import MemoryStatus  # noqa: PLC0415
    from edge_client.storage import AtomicWriter, Identity, StateDir  # noqa: PLC0415

    fleet = prep.fleet
    wall_start = time.perf_counter()
    epoch = 1_700_000_000.0 - (1_700_000_000.0 % 86400) + fleet.start_utc_hour * 3600.0
    clock = ManualClock(start=epoch)
    recorder = Recorder(mode=mode)
    token = options.operator_token or "op-" + secrets.token_urlsafe(24)
    rundir = prep.workdir / mode
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    driver = VirtualTimeDriver(clock)
    transport: Transport
    runner: Any = None
    if options.server_url:
        from edge_client.transport import HttpTransport  # noqa: PLC0415

        counting = _CountingTransport(HttpTransport(options.server_url))
        transport = counting
        driver = VirtualTimeDriver(clock, activities=[counting.in_flight])
    else:
        config = ServiceConfig(
            data_dir=rundir / "service", operator_token=token,
            fsync=False,  # a simulation needs no power-cut durability; the log is still written
            training=training_config(fleet, mode),
        )
        # A seeded random source makes the service's pace-steering jitter repeat.
        service = AggregationService(config, clock=clock, rng=random.Random(fleet.seed))
        app = create_app(config, clock=clock, service=service)
        runner = web.AppRunner(app)
        await runner.setup()
        inproc = InProcessTransport(app)
        # Before each request the transport waits for the service's background
        # work; meanwhile the driver sees the request in flight and waits too.
        inproc.quiesce = lambda: quiesce([j for j in [loop_jobs()] if j is not None])
        transport = inproc
        driver = VirtualTimeDriver(clock, activities=[inproc.in_flight])

    operator = Operator(transport, token)
    model_name = fleet.name.replace(" ", "-")
    await operator.push(model_name, prep.model_dir)
    if options.server_url:
        # A running service keeps its own defaults for a new model: apply the
        # fleet's training config through the operator API.
        await operator.call("PATCH", f"/v1/models/{model_name}/config",
                            body=json.dumps(training_config(fleet, mode).to_dict()).encode())
    await operator.eval_data(model_name, prep.dataset.x_test, prep.dataset.y_test)
    enroll_token = await operator.enrollment_token(len(prep.devices))

    policy_section = dict(fleet.policy)
    cache = InterpreterCache()
    pool = None
    if options.ray or options.ray_address:
        from device_profiles.sim.ray_trainer import RayPool  # noqa: PLC0415

        pool = RayPool((prep.model_dir / "model.tflite").read_bytes(),
                       prep.manifest.to_json(), address=options.ray_address,
                       workers=options.ray_workers)
    dense = dense_update_bytes(prep.manifest)
    offset = epoch
    agents: list[Any] = []
    writer = AtomicWriter(fsync=False)
    for device, idx in zip(prep.devices, prep.parts, strict=True):
        recorder.devices_by_profile[device.profile.name] += 1
        profile = {"name": device.profile.name, "memory_mb": int(device.memory_mb)}
        device_id, device_token = await ProtocolClient(transport).enroll(enroll_token, profile)
        state_dir = rundir / "devices" / device.device_id
        agent_config = AgentConfig.from_dict({
            "server": options.server_url or SIM_HOST,
            "model": model_name,
            "state_dir": str(state_dir),
            "data": {"kind": "npz", "path": str(state_dir / "data")},  # unused: SimTrainer
            "profile": profile,
            "policy": policy_section,
            "seed": device.seed % (2**31),
        })
        link = RecordingLink(transport, device, clock, recorder, dense,
                             cut_after_input=len(agents) < options.secagg_dropouts)
        trainer = SimTrainer(
            device, prep.dataset.x_train[idx], prep.dataset.y_train[idx], clock=clock,
            cache=cache, calibration_step_s=prep.calibration.step_s,
            calibration_batch=prep.calibration.batch_size, recorder=recorder, ray_pool=pool,
        )
        agent = Agent(
            agent_config, clock=clock, transport=link,
            provider=SimulatedStateProvider(schedule(device, offset), clock,
                                            changes(device, offset)),
            trainer=trainer, state=StateDir(state_dir, writer),
            identity=Identity(device_id, device_token, agent_config.server, clock.time()),
            # Nobody reads thousands of status files: keep each snapshot's
            # builder in memory (it was half the run time as JSON files).
            status=MemoryStatus(),
        )
        agents.append(agent)

    stop = asyncio.Event()
    policy = _eligibility_counter(fleet, prep.devices, offset)
    end = fleet.duration_h * 3600.0

    async def sampler() -> None:
        while True:
            await _sample(operator, model_name, clock, recorder, policy)
            if on_progress is not None:
                on_progress(clock.monotonic(), recorder)
            if clock.monotonic() >= end:
                return
            await clock.sleep(min(fleet.metrics_interval_s, end - clock.monotonic()))

    # Devices start at staggered, seeded offsets within the first minute
    # (a fleet does not boot in lockstep).
    async def start_agent(agent: Any, device: SimDevice) -> None:
        await clock.sleep((device.seed % 60_000) / 1000.0)
        await agent.run_forever(stop)

    tasks = [asyncio.ensure_future(start_agent(a, d)) for a, d in zip(agents, prep.devices,
                                                                       strict=True)]
    sampler_task = asyncio.ensure_future(sampler())
    await driver.run_until(end)
    await driver.settle()
    stop.set()
    await driver.settle()
    for task in [*tasks, sampler_task]:
        task.cancel()
    await asyncio.gather(*tasks, sampler_task, return_exceptions=True)
    await _versions(operator, model_name, epoch, recorder,
                    real_service=bool(options.server_url), end_h=fleet.duration_h)
    if pool is not None:
        recorder.extra["ray_calls"] = pool.calls
        pool.shutdown()
    if runner is not None:
        await runner.cleanup()
    else:
        await transport.close()
    wall = time.perf_counter() - wall_start
    recorder.extra.update({
        "interpreter_loads": cache.loads, "train_steps": recorder.train_steps,
        "driver_steps": driver.stats.steps, "events": driver.stats.woken,
    })
    return RunResult(
        mode=mode, recorder=recorder, duration_h=fleet.duration_h, wall_s=wall,
        events=driver.stats.woken, devices=len(prep.devices), dense_update_bytes=dense,
        info={"calibration_step_s": prep.calibration.step_s,
              "calibration_runtime": prep.calibration.runtime},
    )


class _CountingTransport:
    """Counts requests in progress over real HTTP (``--server``), so the
    driver never advances virtual time while one is on the wire."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.in_flight = Activity()

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        self.in_flight.begin()
        try:
            return await self.inner.request(method, path, headers=headers, body=body)
        finally:
            self.in_flight.end()

    async def close(self) -> None:
        await self.inner.close()


class _ClockAt:
    """A clock that reads whatever instant the eligibility counter sets."""

    def __init__(self, epoch: float) -> None:
        self.epoch = epoch
        self.now = 0.0

    def time(self) -> float:
        return self.epoch + self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - never awaited
        raise RuntimeError("the eligibility counter's clock does not sleep")


def _eligibility_counter(fleet: FleetSpec, devices: Sequence[SimDevice], offset: float
                         ) -> Callable[[float], int]:
    """``now -> how many devices' own policy would let them train now``.

    Each device's verdict is kept with the time until which it provably holds
    (the policy's ``next_change`` over the profile's state timeline), in a
    heap: a sample re-evaluates only the devices whose verdict may have
    changed since the last one, instead of all of them (at 10,000 devices the
    full count cost ≈ 1 s per sample)."""
    from edge_client.eligibility.policy import Policy  # noqa: PLC0415
    from edge_client.eligibility.state import SimulatedStateProvider  # noqa: PLC0415

    clock = _ClockAt(offset)
    policy = Policy(policy_config(fleet), clock)
    providers = [SimulatedStateProvider(schedule(d, offset), clock, changes(d, offset))
                 for d in devices]
    eligible = [False] * len(devices)
    due: list[tuple[float, int]] = [(-math.inf, i) for i in range(len(devices))]
    total = 0

    def count(now: float) -> int:
        nonlocal total
        clock.now = now
        stale = []
        while due and due[0][0] <= now:
            stale.append(heapq.heappop(due)[1])
        for i in stale:
            provider = providers[i]
            verdict = policy.evaluate(provider.schedule(now))
            total += int(verdict.eligible) - int(eligible[i])
            eligible[i] = verdict.eligible
            until = policy.next_change(verdict, provider)
            # Unknown (or no later than now): look again at the next sample.
            heapq.heappush(due, (now if until is None else max(until, now), i))
        return total

    return count


async def _sample(operator: Operator, model: str, clock: ManualClock, recorder: Recorder,
                  eligible: Callable[[float], int]) -> None:
    info = await operator.model(model)
    version = int(info.get("training_version", 0))
    accuracy = None
    for v in reversed(info.get("versions", [])):
        metrics = v.get("metrics") or {}
        if "accuracy" in metrics:
            accuracy = float(metrics["accuracy"])
            break
    rec = recorder
    since = rec.samples[-1].t_h if rec.samples else -1.0
    trained = len({u.device for u in rec.uploads if u.status == 202 and u.t_h > since})
    rec.extra["observed_version"] = max(int(rec.extra.get("observed_version", 0)), version)
    for v in info.get("versions", []):
        rec.first_seen.setdefault(int(v["version"]), clock.monotonic() / 3600.0)
    rec.samples.append(Sample(
        t_h=clock.monotonic() / 3600.0, version=version, accuracy=accuracy,
        eligible=eligible(clock.monotonic()), training=rec.training_now, trained=trained,
        checkins=rec.checkins,
        plans=rec.plans, updates_accepted=rec.accepted, updates_rejected=rec.rejected,
        dropouts=rec.dropouts, bytes_up=rec.bytes_up, bytes_down=rec.bytes_down,
    ))


async def _versions(operator: Operator, model: str, epoch: float, recorder: Recorder,
                    *, real_service: bool, end_h: float) -> None:
    """Each version with its evaluation. In process, the service's own
    timestamp is virtual; a real service (``--server``) stamps real time, so
    there the time is when the simulation first saw the version (a plan or a
    sample), an upper bound."""
    info = await operator.model(model)
    for v in info.get("versions", []):
        metrics = v.get("metrics") or {}
        number = int(v["version"])
        if real_service:
            t_h = recorder.first_seen.get(number, end_h)
        else:
            t_h = max(0.0, (float(v["created_at"]) - epoch) / 3600.0)
        recorder.versions.append(VersionEvent(
            t_h=t_h, version=number,
            accuracy=float(metrics["accuracy"]) if "accuracy" in metrics else None,
            loss=float(metrics["loss"]) if "loss" in metrics else None,
            **privacy_fields(v),
        ))


def run_mode(prep: Prepared, mode: str, options: SimOptions,
             on_progress: Callable[[float, Recorder], None] | None = None) -> RunResult:
    """Run one mode on a fresh event loop that counts executor jobs."""
    loop = SimEventLoop()
    try:
        return loop.run_until_complete(_run_mode(prep, mode, options, on_progress))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def modes_for(fleet: FleetSpec, options: SimOptions) -> tuple[str, ...]:
    if options.compare:
        return MODES
    return (options.mode or str(fleet.server.get("mode", "async")),)
