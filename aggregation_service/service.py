"""The aggregation core, usable without HTTP.

:class:`AggregationService` owns the store (SQLite), the blob directory, the
update log and one :class:`ModelRuntime` per model. The aiohttp app is a thin
layer over its methods; the simulator and the tests may call them directly.

Acceptance of one update (``accept_update``), in order:

1. answer a retried idempotency key from memory or the store (duplicate);
2. check the assignment, its deadline (+ grace) and the base version's
   staleness along the lineage;
3. under the model's lock: ``decode_into`` the frame into the open buffer —
   it validates the whole frame (layout, finiteness, norm bound) before it
   touches the sum, so a bad frame changes nothing — then append the raw
   frame and its metadata to the update log. The lock makes log order equal
   summation order;
4. wait for the log's group fsync, then answer 202.

When a buffer holds K updates (or a sync round closes) it is sealed and a
fresh one opens; the publisher waits until the sealed buffer's last record
is durable, steps the server optimizer, writes the weights blob (fsync),
then commits one SQLite transaction with the version row, the log checkpoint
and the buffer's idempotency keys. Crash windows: docs/aggregation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import io
import json
import logging
import math
import random
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregation_service import codec, privacy_hooks
from aggregation_service.blobs import BlobStore
from aggregation_service.buffer import Buffer
from aggregation_service.config import (
    AggregationMode,
    Aggregator,
    ServiceConfig,
    TrainingConfig,
)
from aggregation_service.errors import (
    ApiError,
    ConfigError,
    ServiceError,
    StorageError,
    bad_request,
    conflict,
    not_found,
    unprocessable,
)
from aggregation_service.metrics import Metrics
from aggregation_service.optimizers import make_optimizer
from aggregation_service.pacing import async_target, steer, sync_target
from aggregation_service.secagg_rounds import SecAggRounds
from aggregation_service.store import Assignment, ModelRow, Publication, Store, VersionRow
from aggregation_service.strategies.fedavg_sync import RoundOutcome, SyncRound, round_outcome
from aggregation_service.strategies.fedbuff import staleness_weight
from aggregation_service.updatelog import LogRecord, UpdateLog
from fedge.clock import Clock, SystemClock
from fedge.errors import FedgeError
from fedge.manifest import Manifest, ManifestError
from fedge.runtime import TrainableModel
from privacy.robust import Action
from quantization import weights_digest

log = logging.getLogger("aggregation_service")

WeightsReader = Callable[[bytes, Manifest], dict[str, np.ndarray]]
Evaluator = Callable[
    [bytes, Manifest, Mapping[str, np.ndarray], np.ndarray, np.ndarray], dict[str, float]
]


def runtime_weights_reader(model: bytes, manifest: Manifest) -> dict[str, np.ndarray]:
    """Load the graph in the server's TFLite runtime and read its initial
    weights: proves the model runs here. Blocking; call in an executor."""
    return TrainableModel(model, manifest).get_weights()


def runtime_evaluator(
    model: bytes,
    manifest: Manifest,
    weights: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
) -> dict[str, float]:
    """Run the ``evaluate`` signature on held-out data. Blocking."""
    m = TrainableModel(model, manifest)
    m.set_weights(weights)
    return m.evaluate(x, y)


def _digest_of(weights: Mapping[str, np.ndarray], manifest: Manifest) -> str:
    return weights_digest({t.name: weights[t.name] for t in manifest.tensors})


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Names that some file systems and shells treat specially; a model name may end
# up in a path, a URL or an operator's shell, so they are refused everywhere.
_RESERVED_NAMES = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{p}{i}" for p in ("com", "lpt") for i in range(10)]
)


def model_name_problem(model: str) -> str | None:
    """Why ``model`` cannot name a model, or None: 1–64 ASCII letters, digits,
    '-', '_', '.', starting with a letter or digit, not a reserved device name."""
    if not _MODEL_NAME.fullmatch(model):
        return (
            "model names are 1–64 ASCII letters, digits, '-', '_' and '.', "
            f"starting with a letter or digit; got {model[:80]!r}"
        )
    if model.split(".", maxsplit=1)[0].lower() in _RESERVED_NAMES:
        return f"{model!r} is a reserved device name on some systems; choose another"
    return None


def token_bytes(token: str) -> bytes:
    """A client's token as bytes. JSON can carry lone surrogates ("\\ud800") and
    aiohttp decodes header bytes that are not UTF-8 to surrogates: such a token
    matches nothing, but encoding it must not fail."""
    return token.encode("utf-8", "surrogatepass")


def hash_token(token: str) -> str:
    # Tokens are 32 random bytes: a plain hash is enough (nothing to brute-force).
    return hashlib.sha256(token_bytes(token)).hexdigest()


def _check_finite(
    weights: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray], config: TrainingConfig
) -> None:
    for kind, arrays in (("weights", weights), ("optimizer state", state)):
        for name, value in arrays.items():
            if not np.all(np.isfinite(value)):
                opt = config.optimizer
                raise NonFiniteStep(
                    f"the server step made {kind} {name!r} non-finite "
                    f"(optimizer {opt.name.value}, learning_rate {opt.learning_rate:g}); "
                    "lower training.optimizer.learning_rate, set training.max_update_norm, "
                    "or roll back"
                )


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, *[], **{k.replace("/", "__"): v for k, v in arrays.items()})  # type: ignore[arg-type]
    return out.getvalue()


def _npz_load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k.replace("__", "/"): z[k] for k in z.files}


@dataclass(frozen=True)
class UpdateRequest:
    device_id: str
    model: str
    assignment_id: str
    base_version: int
    examples: int
    idempotency_key: str
    body: bytes
    clip_bit: int | None = None  # Fedge-Clip-Bit (adaptive clipping), None if not sent


@dataclass(frozen=True)
class PublicationProblem:
    """Why a model's publications stopped. ``blocking`` problems (the step
    itself is impossible: non-finite weights) wait for the operator to change
    the config, roll back or resume; others (I/O) are retried every 5 s."""

    code: str
    detail: str
    since: float
    blocking: bool
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "state": "blocked" if self.blocking else "retrying",
            "reason": self.code,
            "detail": self.detail,
            "since": self.since,
            "attempts": self.attempts,
        }


class NonFiniteStep(ServiceError):
    """The server optimizer step produced non-finite weights or moments."""


@dataclass(frozen=True)
class UpdateReceipt:
    update_id: str
    duplicate: bool


@dataclass
class OpenAssignment:
    device_id: str
    version: int
    deadline_at: float
    round_id: str | None


@dataclass
class ModelRuntime:
    """In-memory state of one model: O(model size) + O(K) + open assignments."""

    name: str
    config: TrainingConfig
    paused: bool
    live_version: int | None
    training: VersionRow
    manifest: Manifest
    weights: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    parents: dict[int, int | None]
    buffer: Buffer
    sealed: deque[Buffer] = field(default_factory=deque)
    open_assignments: dict[str, OpenAssignment] = field(default_factory=dict)
    checkpoint: int = 0  # the persisted log checkpoint: recovery replays from here
    pending_keys: dict[str, tuple[str, asyncio.Future[None]]] = field(default_factory=dict)
    # Keys of the last published buffer: a retry racing its publication still
    # finds its key here without a database read under the lock.
    recent_keys: dict[str, str] = field(default_factory=dict)
    round: SyncRound | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    publisher: asyncio.Task[None] | None = None
    intake: list[_Intake] = field(default_factory=list)
    intake_task: asyncio.Task[None] | None = None
    # Set while the pipelined intake waits for its one in-flight batch: the
    # next upload to queue wakes it so that batch gets a successor at once.
    intake_waiter: asyncio.Future[None] | None = None
    wake_publisher: asyncio.Event = field(default_factory=asyncio.Event)
    # Set while publications fail; a blocking problem also stops check-ins and
    # uploads for the model until ``unblocked`` is set by an operator action.
    problem: PublicationProblem | None = None
    unblocked: asyncio.Event = field(default_factory=asyncio.Event)

    def staleness(self, base: int, limit: int) -> int | None:
        """Versions published since ``base`` along the current lineage, or None
        if ``base`` is not an ancestor within ``limit`` steps."""
        current: int | None = self.training.version
        for tau in range(limit + 1):
            if current is None:
                return None
            if current == base:
                return tau
            current = self.parents.get(current)
        return None

    @property
    def waits_for_operator(self) -> bool:
        """Publication is blocked and no operator action has released it yet."""
        return (
            self.problem is not None and self.problem.blocking and not self.unblocked.is_set()
        )

    def is_ancestor(self, base: int) -> bool:
        return self.staleness(base, len(self.parents)) is not None


@dataclass
class _Intake:
    """An upload waiting for the model's intake loop."""

    req: UpdateRequest
    assignment: OpenAssignment
    expected: dict[str, tuple[int, ...]]
    now: float
    future: asyncio.Future[tuple[str, asyncio.Future[None]] | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    tau: int = 0
    weight: float = 0.0
    round_id: str | None = None
    round_deadline: float | None = None
    max_norm: float | None = None  # adaptive DP: the bound of the update's base version
    clip_ref: float | None = None  # adaptive DP: the bound the weight was scaled to
    # The store's answer for the idempotency key (None: not published), asked
    # when the upload arrived and answered while it waits for the intake.
    published: asyncio.Future[str | None] | None = None


class _KeyLookups:
    """Published-key lookups grouped like the log's group commit: every key
    asked while one store hop is in flight goes in the next single hop, so
    under load a new upload costs the event loop a future, not a thread hop."""

    def __init__(self, store: Store, spawn: Callable[[Any], asyncio.Task[Any]]) -> None:
        self._store = store
        self._spawn = spawn
        self._waiting: dict[str, list[asyncio.Future[str | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def published(self, key: str) -> str | None:
        """The update id the store has for ``key``, or None."""
        return await self.lookup(key)

    def lookup(self, key: str) -> asyncio.Future[str | None]:
        """``published`` without waiting: the future of the store's answer."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        # An upload refused before it reads the answer must not leave a
        # "never retrieved" store error behind.
        future.add_done_callback(_retrieved)
        self._waiting.setdefault(key, []).append(future)
        if self._task is None or self._task.done():
            self._task = self._spawn(self._run())
        return future

    def _lookup(self, keys: list[str]) -> list[str | None]:
        return [self._store.published_key(k) for k in keys]  # on the store's thread

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            keys = list(batch)
            try:
                found = await self._store.run(self._lookup, keys)
            except BaseException as exc:
                for futures in (*batch.values(), *self._waiting.values()):
                    for f in futures:
                        if f.done():
                            continue
                        if isinstance(exc, asyncio.CancelledError):
                            f.cancel()
                        else:
                            f.set_exception(exc)
                self._waiting = {}
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return  # each waiting request got the error (a 503 for a StorageError)
            for key, update_id in zip(keys, found, strict=True):
                for f in batch[key]:
                    if not f.done():  # a request that went away meanwhile
                        f.set_result(update_id)


def _tighter(a: float | None, b: float | None) -> float | None:
    """The smaller of two optional bounds."""
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _follow(first: asyncio.Future[Any], item: _Intake) -> None:
    """Answer a same-key upload of the same batch like the first one."""
    if item.future.done():
        return
    if first.cancelled():
        item.future.cancel()
    elif first.exception() is not None:
        item.future.set_exception(first.exception())  # type: ignore[arg-type]
    else:
        item.future.set_result(None)  # resolved as a duplicate of the first


# The largest version number the store can hold (SQLite INTEGER).
MAX_VERSION = 2**63 - 1

# Intake batches per hold of a model's lock on the pipelined path: enough to
# keep the decode thread busy, few enough that a rollback or config patch
# waiting for the lock is not held off for long.
_PIPELINE_BATCHES = 32
# Check-in last-seen writes: at most one transaction per second, or per this many devices.
TOUCH_FLUSH_S = 1.0
TOUCH_FLUSH_MAX = 1024


@dataclass
class _Decoding:
    """An intake batch on the decode thread: ``claim`` is the most updates it
    can add to the open buffer."""

    items: list[_Intake]
    claim: int
    future: asyncio.Future[list[str | None]]


class _RandomIds:
    """Hex ids like ``secrets.token_hex(nbytes)``, drawn from the OS in blocks:
    one getrandom call per ``block`` ids instead of one per accepted update
    on the event loop (≈0.07 ms each under load)."""

    def __init__(self, nbytes: int, block: int = 256) -> None:
        self._width = 2 * nbytes
        self._block = block
        self._hex = ""
        self._pos = 0

    def next(self) -> str:
        if self._pos >= len(self._hex):
            self._hex, self._pos = secrets.token_hex(self._width // 2 * self._block), 0
        start, self._pos = self._pos, self._pos + self._width
        return self._hex[start : self._pos]


def _fail(items: list[_Intake], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


def _decode_batch(
    items: list[tuple[bytes, float, dict[str, tuple[int, ...]], float | None]],
    sums: dict[str, np.ndarray],
    capacity: int,
) -> list[str | None]:
    """Sum frames into ``sums`` in order until ``capacity`` succeeded; each
    item carries its own L2 bound (None: none). Returns one entry per
    processed item: None (summed) or the codec's error message. Runs on the
    decode thread.

    Consecutive items with the same tensor table and bound are decoded
    together (``codec.accumulate_many``): the same additions in the same
    order as one ``accumulate`` per item, which is what replay does."""
    outcomes: list[str | None] = []
    start = 0
    while start < len(items) and outcomes.count(None) < capacity:
        _, _, expected, max_norm = items[start]
        end = start + 1
        while end < len(items) and items[end][2] == expected and items[end][3] == max_norm:
            end += 1
        run = items[start:end]
        outcomes += codec.accumulate_many(
            [body for body, _, _, _ in run],
            sums,
            [weight for _, weight, _, _ in run],
            expected,
            max_norm=max_norm,
            limit=capacity - outcomes.count(None),
        )
        start = end
    return outcomes


class AggregationService:
    """Lifecycle: ``await start()`` (recovery included), use, ``await stop()``."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        weights_reader: WeightsReader = runtime_weights_reader,
        evaluator: Evaluator = runtime_evaluator,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.weights_reader = weights_reader
        self.evaluator = evaluator
        self.metrics = Metrics()
        data = config.data_dir
        self.store = Store(data / "fedge.sqlite3")
        self.blobs = BlobStore(data / "blobs", fsync=config.fsync)
        self.log = UpdateLog(
            data / "log", fsync=config.fsync, segment_bytes=config.log_segment_bytes
        )
        self.models: dict[str, ModelRuntime] = {}
        # Decoding and optimizer steps: CPU-bound numpy, one worker keeps ordering simple.
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="fedge-cpu")
        self._io = ThreadPoolExecutor(2, thread_name_prefix="fedge-io")
        self._publish_pool = ThreadPoolExecutor(1, thread_name_prefix="fedge-publish")
        self._eval_pool = ThreadPoolExecutor(1, thread_name_prefix="fedge-eval")
        self._device_cache: OrderedDict[str, str] = OrderedDict()
        self._delta_cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        # quantization.weights_digest per (model, version): sent with deltas.
        self._digests: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reported: list[str] = []
        # Check-ins' (state, last seen) per device, written in one transaction
        # at most once per TOUCH_FLUSH_S (or every TOUCH_FLUSH_MAX devices)
        # instead of one UPDATE and WAL commit per check-in.
        self._seen: dict[str, tuple[str, float]] = {}
        self._seen_flushed_at = -math.inf
        self._manifest_cache: dict[tuple[str, int], Manifest] = {}
        self._push_lock = asyncio.Lock()
        self._key_lookups = _KeyLookups(self.store, self._spawn)
        self._update_ids = _RandomIds(10)
        self._screens = privacy_hooks.Screens()  # robust: per-model anomaly scorer + policy
        self._round_updates = privacy_hooks.RoundUpdates()  # sync median / trimmed mean
        self._ledgers = privacy_hooks.Ledgers()  # DP accountants of recent versions
        self._clip = privacy_hooks.ClipState()  # DP: clip bound per version, bits per step
        self.secagg = SecAggRounds(self)  # sync rounds under secure aggregation (memory only)
        self.started = False
        self.metrics.buffer_fill.collect = lambda: {
            (n,): float(m.buffer.count) for n, m in self.models.items()
        }
        self.metrics.outstanding.collect = lambda: {
            (n,): float(len(m.open_assignments)) for n, m in self.models.items()
        }
        self.metrics.log_fsyncs.collect = lambda: {(): float(self.log.fsyncs)}

    # --- helpers ---------------------------------------------------------------------

    async def _cpu_run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._cpu, fn, *args)

    async def _io_run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def runtime(self, name: str) -> ModelRuntime:
        rt = self.models.get(name)
        if rt is None:
            raise not_found("unknown_model", f"no model named {name!r}")
        return rt

    async def version_row(self, model: str, version: int) -> VersionRow:
        self.runtime(model)
        # Versions are SQLite INTEGERs: a number outside int64 names no version
        # (and would overflow the driver's binding).
        in_range = 1 <= version <= MAX_VERSION
        row = await self.store.run(self.store.version, model, version) if in_range else None
        if row is None:
            raise not_found("unknown_version", f"model {model!r} has no version {version}")
        reports = await self.store.run(privacy_hooks.reports, self.store, model)
        return privacy_hooks.with_privacy(row, reports.get(version))

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.store.run(self.store.open)
        await self.store.run(privacy_hooks.ensure_schema, self.store)
        await self._io_run(self.log.open)
        for row in await self.store.run(self.store.models):
            self.models[row.name] = await self._load_runtime(row)
            reports = await self.store.run(privacy_hooks.reports, self.store, row.name)
            self._clip.load(row.name, reports)  # adaptive clipping: each version's bound
        await self._replay()
        for rt in self.models.values():
            rt.publisher = self._spawn(self._publisher(rt))
        self._spawn(self._sweeper())
        self.started = True

    async def stop(self) -> None:
        # Publish complete buffers first (bounded): a graceful stop leaves only
        # the open buffer to replay. A kill is handled by recovery anyway.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain_publications(), timeout=30.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.log.drain()
        await self._flush_reported()
        await self._flush_seen()
        await asyncio.get_running_loop().run_in_executor(None, self.log.close)
        await asyncio.get_running_loop().run_in_executor(None, self.store.shutdown)
        self._cpu.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self._publish_pool.shutdown(wait=True)
        self._eval_pool.shutdown(wait=True)

    async def crash_for_tests(self) -> None:
        """TEST SEAM: stop like a killed process would — no draining, no
        publication, no final flushes; only what is already on disk survives."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.get_running_loop().run_in_executor(None, self.log.close)
        await asyncio.get_running_loop().run_in_executor(None, self.store.shutdown)
        self._cpu.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self._publish_pool.shutdown(wait=True)
        self._eval_pool.shutdown(wait=True)

    async def _load_runtime(self, row: ModelRow) -> ModelRuntime:
        versions = await self.store.run(self.store.versions, row.name)
        training = next(v for v in versions if v.version == row.training_version)
        manifest = Manifest.from_json(training.manifest)
        frame = await self._io_run(self.blobs.get, training.weights_sha256)
        weights = await self._cpu_run(codec.decode_weights, frame, manifest)
        state: dict[str, np.ndarray] = {}
        if training.optimizer_sha256:
            state = _npz_load(await self._io_run(self.blobs.get, training.optimizer_sha256))
        config = TrainingConfig.from_dict(json.loads(row.config))
        rt = ModelRuntime(
            name=row.name,
            config=config,
            paused=row.paused,
            live_version=row.live_version,
            training=training,
            manifest=manifest,
            weights=weights,
            optimizer_state=state,
            parents={v.version: v.base_version for v in versions},
            buffer=Buffer.zeros(manifest.trainable),
        )
        rt.buffer.end_offset = row.checkpoint
        rt.checkpoint = row.checkpoint
        if not rt.paused:
            rt.resumed.set()
        now = self.clock.time()
        for a in await self.store.run(self._open_assignments_rows, row.name):
            if a.deadline_at + config.deadline_grace_s >= now:
                rt.open_assignments[a.assignment_id] = OpenAssignment(
                    a.device_id, a.version, a.deadline_at, a.round_id
                )
        return rt

    def _open_assignments_rows(self, model: str) -> list[Assignment]:
        rows = self.store.conn.execute(
            "SELECT * FROM assignments WHERE model = ? AND state = 'open'", (model,)
        ).fetchall()
        return [Assignment(*r) for r in rows]

    async def _replay(self) -> None:
        """Rebuild every model's buffer from the log records after its checkpoint,
        in log order, with the weights recorded at acceptance."""
        if not self.models:
            return
        start = min(self._checkpoint(rt) for rt in self.models.values())
        checkpoints = {name: self._checkpoint(rt) for name, rt in self.models.items()}
        records = await self._io_run(lambda: list(self.log.replay(start)))
        replayed = 0
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        for record in records:
            rt = self.models.get(str(record.header.get("model")))
            if rt is None or record.offset < checkpoints[rt.name]:
                continue
            await self._replay_one(rt, record, done)
            replayed += 1
        if replayed:
            log.info("recovered %d logged updates after the last publication", replayed)

    @staticmethod
    def _checkpoint(rt: ModelRuntime) -> int:
        return rt.checkpoint

    async def _replay_one(
        self, rt: ModelRuntime, record: LogRecord, done: asyncio.Future[None]
    ) -> None:
        h = record.header
        round_id = h.get("round")
        if (
            rt.config.mode is AggregationMode.SYNC
            and rt.buffer.count
            and rt.buffer.round_id != round_id
        ):
            self._seal(rt)  # the previous round closed before the crash
        base_manifest = await self._manifest(rt.name, int(h["base"]))
        try:
            await self._cpu_run(
                codec.accumulate,
                record.body,
                rt.buffer.sums,
                float(h["weight"]),
                codec.expected_for(base_manifest),
                None,
            )
        except codec.CodecError as exc:
            raise StorageError(f"logged update {h['update_id']} no longer decodes: {exc}") from exc
        if rt.config.aggregator is not Aggregator.MEAN:
            (dense,) = await self._cpu_run(
                privacy_hooks.decode_dense, [record.body], [codec.expected_for(base_manifest)]
            )
            if isinstance(dense, dict):
                self._round_updates.add(rt.buffer, dense)
        rt.buffer.round_id = round_id
        self._clip.tally(rt.buffer).add(h.get("clip_bit"), h.get("clip_ref"), str(h["device"]))
        rt.buffer.record(
            weight=float(h["weight"]),
            tau=int(h["tau"]),
            device=str(h["device"]),
            key=str(h["key"]),
            update_id=str(h["update_id"]),
            assignment=str(h["assignment"]),
            end_offset=record.end,
        )
        rt.buffer.durable = done
        rt.pending_keys[str(h["key"])] = (str(h["update_id"]), done)
        rt.open_assignments.pop(str(h["assignment"]), None)
        self._reported.append(str(h["assignment"]))
        if rt.config.mode is AggregationMode.SYNC:
            if round_id and (rt.round is None or rt.round.round_id != round_id):
                rt.round = SyncRound(
                    str(round_id),
                    int(h["base"]),
                    self.clock.monotonic()
                    + max(0.0, float(h["round_deadline"]) - self.clock.time()),
                    float(h["round_deadline"]),
                )
                self._spawn(self._round_closer(rt, rt.round))
            if rt.round is not None:
                rt.round.reported += 1
                if rt.round.reported >= rt.config.clients_per_round:
                    rt.round.closed = True
                    self._seal(rt)
        elif rt.buffer.count >= rt.config.buffer_size:
            self._seal(rt)

    async def _manifest(self, model: str, version: int) -> Manifest:
        key = (model, version)
        cached = self._manifest_cache.get(key)
        if cached is None:
            row = await self.version_row(model, version)
            cached = Manifest.from_json(row.manifest)
            self._manifest_cache[key] = cached
        return cached

    # --- operator: models and versions ------------------------------------------------

    async def push_version(
        self, model: str, manifest_bytes: bytes, model_bytes: bytes
    ) -> VersionRow:
        """Verify and store a graph + manifest as a new version that starts a lineage."""
        problem = model_name_problem(model)
        if problem is not None:
            raise bad_request("bad_model_name", problem)
        try:
            manifest = Manifest.from_json(manifest_bytes)
        except ManifestError as exc:
            raise unprocessable("bad_manifest", str(exc)) from exc
        try:
            manifest.check_model_bytes(model_bytes)
        except ManifestError as exc:
            raise unprocessable("sha256_mismatch", str(exc)) from exc
        try:
            weights = await self._cpu_run(self.weights_reader, model_bytes, manifest)
        except FedgeError as exc:
            raise unprocessable(
                "model_unloadable", f"the server's runtime cannot run it: {exc}"
            ) from exc
        self._check_weights(manifest, weights)
        return await self._add_pushed(model, manifest, model_bytes, weights)

    async def push_synthetic(
        self, model: str, manifest: Manifest, weights: Mapping[str, np.ndarray]
    ) -> VersionRow:
        """TEST SEAM (benchmarks, simulator experiments): register a version from a
        manifest and initial weights without a loadable graph. The manifest's
        sha256 is stored as the graph's id, the graph blob is empty. Not routed
        over HTTP."""
        self._check_weights(manifest, weights)
        return await self._add_pushed(
            model, manifest, b"", dict(weights), graph_sha=manifest.sha256
        )

    @staticmethod
    def _check_weights(manifest: Manifest, weights: Mapping[str, np.ndarray]) -> None:
        for spec in manifest.tensors:
            value = weights.get(spec.name)
            if value is None:
                raise unprocessable(
                    "weights_mismatch", f"the model has no weights for tensor {spec.name!r}"
                )
            if tuple(value.shape) != spec.shape or str(value.dtype) != spec.dtype:
                raise unprocessable(
                    "weights_mismatch",
                    f"tensor {spec.name!r} is {value.dtype}{list(value.shape)} in the model but "
                    f"{spec.dtype}{list(spec.shape)} in the manifest",
                )
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise unprocessable(
                    "weights_mismatch", f"tensor {spec.name!r} has non-finite values"
                )

    async def _add_pushed(
        self,
        model: str,
        manifest: Manifest,
        graph: bytes,
        weights: dict[str, np.ndarray],
        *,
        graph_sha: str | None = None,
    ) -> VersionRow:
        frame = await self._cpu_run(codec.encode_weights, weights)
        graph_digest = await self._io_run(self.blobs.put, graph)
        weights_digest = await self._io_run(self.blobs.put, frame)
        async with self._push_lock:
            return await self._add_pushed_locked(
                model, manifest, weights, graph_sha or graph_digest, weights_digest
            )

    async def _add_pushed_locked(
        self,
        model: str,
        manifest: Manifest,
        weights: dict[str, np.ndarray],
        graph_sha: str,
        weights_digest: str,
    ) -> VersionRow:
        rt = self.models.get(model)
        lock = rt.lock if rt else asyncio.Lock()
        async with lock:
            # Everything already queued in the log must be durable before the
            # checkpoint moves past it, or a crash could leave the checkpoint
            # beyond the log's end and skip later acknowledged records.
            checkpoint = self.log.end
            await self.log.drain()
            existing = await self.store.run(self.store.versions, model)
            version = (existing[-1].version + 1) if existing else 1
            now = self.clock.time()
            row = VersionRow(
                model=model,
                version=version,
                kind="pushed",
                base_version=None,
                graph_sha256=graph_sha,
                manifest=manifest.to_json(),
                weights_sha256=weights_digest,
                optimizer_sha256=None,
                num_updates=0,
                num_devices=0,
                mean_staleness=None,
                created_at=now,
                log_checkpoint=checkpoint,
                metrics=None,
            )
            config = rt.config if rt else self.config.training
            await self.store.run(
                self.store.add_pushed_version,
                row,
                config=json.dumps(config.to_dict()),
                now=now,
                checkpoint=checkpoint,
            )
            if rt is None:
                db_row = await self.store.run(self.store.model, model)
                assert db_row is not None
                rt = await self._load_runtime(db_row)
                self.models[model] = rt
                rt.publisher = self._spawn(self._publisher(rt))
            else:
                self._drop_buffers(rt)
                rt.training, rt.manifest, rt.weights = row, manifest, weights
                rt.optimizer_state = {}
                rt.parents[version] = None
                rt.buffer = Buffer.zeros(manifest.trainable)
                rt.buffer.end_offset = checkpoint
                rt.checkpoint = checkpoint
                rt.round = None
                await self._flush_reported()
                self._unblock(rt)
        log.info(
            "model %s: pushed version %d (%d parameters)", model, version, manifest.num_parameters
        )
        self._spawn(self._evaluate(model, version))
        return row

    def _drop_buffers(self, rt: ModelRuntime) -> None:
        dropped = rt.buffer.count + sum(b.count for b in rt.sealed)
        for b in (rt.buffer, *rt.sealed):
            self._round_updates.take(b)
            self._clip.take(b)
            # Their devices did report: the assignments stay used (written by
            # the caller's _flush_reported, right after the lineage change).
            self._reported.extend(b.assignments)
        if dropped:
            self.metrics.updates_discarded.inc(rt.name, amount=dropped)
            log.warning("model %s: %d buffered updates discarded (new lineage)", rt.name, dropped)
        rt.sealed.clear()

    async def list_models(self) -> list[dict[str, Any]]:
        return [await self.describe_model(name) for name in sorted(self.models)]

    async def describe_model(self, name: str) -> dict[str, Any]:
        rt = self.runtime(name)
        row = await self.store.run(self.store.model, name)
        assert row is not None
        versions = await self.store.run(self.store.versions, name)
        updates, devices = await self.store.run(self.store.lineage_stats, name)
        reports = await self.store.run(privacy_hooks.reports, self.store, name)
        versions = [privacy_hooks.with_privacy(v, reports.get(v.version)) for v in versions]
        return {
            "model": name,
            "paused": rt.paused,
            "live_version": row.live_version,
            "training_version": rt.training.version,
            "mode": rt.config.mode.value,
            "buffer": {
                "count": rt.buffer.count,
                "size": rt.config.buffer_size,
                "sealed": sum(b.count for b in rt.sealed),  # complete, being published
            },
            "outstanding_assignments": len(rt.open_assignments),
            # Why publications stopped, if they did (null while they work).
            "publication": rt.problem.to_json() if rt.problem is not None else None,
            "rounds_abandoned": row.rounds_abandoned,
            # The open secure aggregation round (phase, selected, sent), if any.
            "secagg_round": self.secagg.describe(name),
            "num_updates": updates,
            "num_devices": devices,
            "versions": [v.to_json() for v in versions],
            # Cumulative (ε, δ) of the training version's lineage; None without DP.
            "privacy": reports.get(rt.training.version),
        }

    async def promote(self, name: str, version: int) -> dict[str, Any]:
        rt = self.runtime(name)
        await self.version_row(name, version)
        row = await self.store.run(self.store.model, name)
        assert row is not None
        await self.store.run(
            self.store.set_model_fields, name, live_version=version, previous_live=row.live_version
        )
        rt.live_version = version
        log.info("model %s: version %d promoted (was %s)", name, version, row.live_version)
        return {"model": rt.name, "live_version": version, "previous_live": row.live_version}

    async def rollback(self, name: str, version: int | None) -> dict[str, Any]:
        """Make ``version`` (default: the live version before the last promotion)
        live again and continue training from it; the open buffer is dropped."""
        rt = self.runtime(name)
        row = await self.store.run(self.store.model, name)
        assert row is not None
        target = version if version is not None else row.previous_live
        if target is None:
            raise conflict(
                "nothing_to_roll_back", f"model {name!r} has no earlier promoted version"
            )
        target_row = await self.version_row(name, target)
        async with rt.lock:
            checkpoint = self.log.end
            await self.log.drain()  # see _add_pushed_locked: never checkpoint past the durable end
            await self.store.run(
                self.store.set_model_fields,
                name,
                live_version=target,
                previous_live=None,
                training_version=target,
                checkpoint=checkpoint,
            )
            self._drop_buffers(rt)
            rt.training = target_row
            rt.manifest = Manifest.from_json(target_row.manifest)
            frame = await self._io_run(self.blobs.get, target_row.weights_sha256)
            rt.weights = await self._cpu_run(codec.decode_weights, frame, rt.manifest)
            rt.optimizer_state = (
                _npz_load(await self._io_run(self.blobs.get, target_row.optimizer_sha256))
                if target_row.optimizer_sha256
                else {}
            )
            rt.buffer = Buffer.zeros(rt.manifest.trainable)
            rt.buffer.end_offset = checkpoint
            rt.checkpoint = checkpoint
            rt.round = None
            await self._flush_reported()
            self._unblock(rt)
        log.warning("model %s: rolled back to version %d", name, target)
        rt.live_version = target
        return {"model": name, "live_version": target, "training_version": target}

    async def set_paused(self, name: str, paused: bool) -> dict[str, Any]:
        rt = self.runtime(name)
        await self.store.run(self.store.set_model_fields, name, paused=int(paused))
        rt.paused = paused
        if paused:
            rt.resumed.clear()
        else:
            rt.resumed.set()
            self._unblock(rt)
        return {"model": name, "paused": paused}

    async def patch_config(self, name: str, patch: Any) -> TrainingConfig:
        rt = self.runtime(name)
        try:
            new = rt.config.patched(patch)
        except ConfigError as exc:
            raise unprocessable("bad_config", str(exc)) from exc
        await self.store.run(self.store.set_model_fields, name, config=json.dumps(new.to_dict()))
        async with rt.lock:
            old, rt.config = rt.config, new
            # A smaller K completes the open buffer at once.
            if new.mode is AggregationMode.ASYNC and rt.buffer.count >= new.buffer_size:
                self._seal(rt)
            if old.mode is not new.mode or old.secagg != new.secagg:
                rt.round = None
        self._unblock(rt)
        return new

    async def set_eval_data(self, name: str, data: bytes) -> dict[str, Any]:
        rt = self.runtime(name)
        try:
            arrays = _npz_load(data)
        except (ValueError, OSError, EOFError) as exc:
            raise bad_request("bad_eval_data", f"not a readable .npz file: {exc}") from exc
        if "x" not in arrays or "y" not in arrays:
            raise unprocessable(
                "bad_eval_data", f"the .npz needs arrays x and y, has {sorted(arrays)}"
            )
        x, y = arrays["x"], arrays["y"]
        m = rt.manifest
        if x.ndim < 1 or tuple(x.shape[1:]) != m.input.shape or len(y) != len(x) or len(x) == 0:
            raise unprocessable(
                "bad_eval_data",
                f"x must be [n, {', '.join(map(str, m.input.shape))}] and y [n, …] with n ≥ 1; "
                f"got x{list(x.shape)}, y{list(y.shape)}",
            )
        digest = await self._io_run(self.blobs.put, data)
        await self.store.run(self.store.set_model_fields, name, eval_blob=digest)
        self._spawn(self._evaluate(name, rt.training.version))
        return {"model": name, "examples": len(x), "sha256": digest}

    async def _evaluate(self, model: str, version: int) -> None:
        """Evaluate a version on the model's held-out data, if any; failures are logged."""
        try:
            row = await self.store.run(self.store.model, model)
            vrow = await self.store.run(self.store.version, model, version)
            if row is None or row.eval_blob is None or vrow is None:
                return
            manifest = Manifest.from_json(vrow.manifest)
            graph = await self._io_run(self.blobs.get, vrow.graph_sha256)
            if not graph:
                return  # synthetic versions have no graph to run
            frame = await self._io_run(self.blobs.get, vrow.weights_sha256)
            weights = await self._cpu_run(codec.decode_weights, frame, manifest)
            data = _npz_load(await self._io_run(self.blobs.get, row.eval_blob))
            # Its own thread: an evaluation must not hold up decoding uploads.
            metrics = await asyncio.get_running_loop().run_in_executor(
                self._eval_pool, self.evaluator, graph, manifest, weights, data["x"], data["y"]
            )
            metrics = {k: float(v) for k, v in metrics.items()} | {
                "examples": float(len(data["x"]))
            }
            await self.store.run(self.store.set_metrics, model, version, metrics)
            log.info("model %s version %d evaluated: %s", model, version, metrics)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("evaluation of %s version %d failed", model, version)

    # --- devices ---------------------------------------------------------------------

    async def create_enrollment_token(self, uses: int, ttl_s: float) -> dict[str, Any]:
        token = "et-" + secrets.token_urlsafe(32)
        now = self.clock.time()
        await self.store.run(
            self.store.add_enrollment_token, hash_token(token), uses, now + ttl_s, now
        )
        return {"token": token, "expires_at": now + ttl_s, "uses": uses}

    async def enroll(self, enrollment_token: str, profile: Mapping[str, Any]) -> dict[str, Any]:
        device_id = "dev-" + secrets.token_hex(8)
        device_token = "dt-" + secrets.token_urlsafe(32)
        ok = await self.store.run(
            self.store.enroll,
            hash_token(enrollment_token),
            device_id,
            hash_token(device_token),
            json.dumps(dict(profile)),
            self.clock.time(),
        )
        if not ok:
            raise ApiError(
                401, "bad_enrollment_token", "enrollment token unknown, used up or expired"
            )
        return {"device_id": device_id, "device_token": device_token}

    async def enroll_check(self, model: str, enrollment_token: str | None) -> dict[str, Any]:
        """The manifest of ``model``'s training version, for a device to check
        its data before enrolling. An enrollment token, if given, must be
        usable (401 otherwise) and is not spent; without one the caller has
        authenticated as a device."""
        if enrollment_token is not None:
            usable = await self.store.run(
                self.store.enrollment_token_usable, hash_token(enrollment_token), self.clock.time()
            )
            if not usable:
                raise ApiError(
                    401, "bad_enrollment_token", "enrollment token unknown, used up or expired"
                )
        rt = self.runtime(model)
        return {
            "model": model,
            "version": rt.training.version,
            "manifest": json.loads(rt.training.manifest),
        }

    async def authenticate_device(self, token: str) -> str | None:
        digest = hash_token(token)
        device = self._device_cache.get(digest)
        if device is None:
            device = await self.store.run(self.store.device_by_token, digest)
            if device is None:
                return None
            self._device_cache[digest] = device
            while len(self._device_cache) > 100_000:
                self._device_cache.popitem(last=False)
        return device

    async def revoke_device(self, device_id: str) -> dict[str, Any]:
        """Revoke a device's token at once (cached authentications included)
        and free its open assignments; updates it already had acknowledged
        stay. It can enroll again only with a new enrollment token."""
        released = await self.store.run(self.store.revoke_device, device_id)
        if released is None:
            raise not_found("unknown_device", f"no device {device_id!r}")
        for digest in [d for d, dev in self._device_cache.items() if dev == device_id]:
            del self._device_cache[digest]
        self._seen.pop(device_id, None)
        freed = 0
        for rt in self.models.values():
            for aid in [a for a, o in rt.open_assignments.items() if o.device_id == device_id]:
                del rt.open_assignments[aid]
                freed += 1
        log.warning("device %s revoked (%d open assignments freed)", device_id, freed)
        return {"device_id": device_id, "state": "revoked", "assignments_freed": freed}

    async def list_devices(self, *, limit: int, state: str | None) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.store.run(self.store.list_devices, limit, state)
        return rows

    def check_operator(self, token: str) -> bool:
        expected = self.config.operator_token
        return expected is not None and hmac.compare_digest(
            token_bytes(token), expected.encode()
        )

    async def checkin(self, device_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body.get("model")
        if not isinstance(name, str):
            raise bad_request("bad_field", "field 'model' must be a string")
        rt = self.runtime(name)
        cfg = rt.config
        eligible = bool(body.get("eligible", False))
        self._seen[device_id] = ("eligible" if eligible else "ineligible", self.clock.time())
        if (len(self._seen) >= TOUCH_FLUSH_MAX
                or self.clock.monotonic() - self._seen_flushed_at >= TOUCH_FLUSH_S):
            await self._flush_seen()

        def wait(reason: str, retry_after: float) -> dict[str, Any]:
            self.metrics.checkins.inc("wait", reason)
            return {
                "action": "wait",
                "retry_after": round(retry_after, 3),
                "reason": reason,
                "live_version": rt.live_version,
            }

        jitter = self.rng.uniform(0.5, 1.5)
        if rt.paused:
            return wait("paused", cfg.pace_max_retry_s * jitter)
        if rt.problem is not None and rt.problem.blocking:
            return wait("publication_blocked", cfg.pace_max_retry_s * jitter)
        refusal = self._ineligible(cfg, body)
        if refusal:
            return wait(refusal, cfg.pace_min_retry_s * 2 * jitter)
        screen = self._screens.get(name, cfg.robust)
        throttled = screen.policy.throttled(device_id, self.clock.time()) if screen else None
        if throttled is not None:  # robust: a device that keeps sending anomalous updates
            return wait("throttled", throttled)
        round_ = None
        if cfg.mode is AggregationMode.SYNC:
            round_ = self._current_round(rt)
            target = sync_target(cfg.clients_per_round, cfg.over_selection)
            outstanding = len(round_.selected)
            if cfg.secagg is not None:
                # Devices join a secure aggregation round only while it collects keys.
                busy = self.secagg.admission(name, device_id)
                if busy is not None:
                    return wait(
                        "secagg_round_in_progress",
                        busy + cfg.pace_min_retry_s * self.rng.uniform(0.0, 1.0),
                    )
        else:
            target = async_target(cfg.buffer_size, cfg.over_provisioning)
            outstanding = len(rt.open_assignments)
        decision = steer(
            outstanding,
            target,
            report_deadline_s=cfg.report_deadline_s,
            min_retry_s=cfg.pace_min_retry_s,
            max_retry_s=cfg.pace_max_retry_s,
            rng=self.rng,
        )
        if cfg.secagg is not None and outstanding < target:
            # A secure aggregation round selects only while it collects keys (a
            # fifth of the deadline): fill it at once rather than thin arrivals.
            decision = dataclasses.replace(decision, admit=True, retry_after=0.0)
        if not decision.admit:
            retry = decision.retry_after
            if round_ is not None and outstanding >= target:
                # Come back after this round closes, spread over the next minimum wait.
                retry = max(0.0, round_.deadline_mono - self.clock.monotonic())
                retry += cfg.pace_min_retry_s * self.rng.uniform(0.0, 1.0)
            return wait("pace_steering", retry)
        now = self.clock.time()
        version = rt.training.version
        deadline_at = round_.deadline_at if round_ else now + cfg.report_deadline_s
        assignment = Assignment(
            assignment_id="as-" + secrets.token_hex(10),
            device_id=device_id,
            model=name,
            version=version,
            round_id=round_.round_id if round_ else None,
            issued_at=now,
            deadline_at=deadline_at,
            state="open",
        )
        await self.store.run(self.store.add_assignment, assignment)
        rt.open_assignments[assignment.assignment_id] = OpenAssignment(
            device_id, version, deadline_at, assignment.round_id
        )
        if round_ is not None:
            round_.selected.add(assignment.assignment_id)
        secagg_round = self.secagg.current(name) if cfg.secagg is not None else None
        base = f"/v1/models/{name}/versions/{version}"
        urls = {
            "manifest": f"{base}/manifest.json",
            "model": f"{base}/model.tflite",
            "weights": f"{base}/weights",
        }
        codec_spec, dp_plan = dict(cfg.codec), {}
        if cfg.dp is not None:  # the bound of this version (adaptive), local noise
            dp_block, codec_spec = self._clip.plan(name, version, cfg.dp, cfg.codec)
            dp_plan = {"dp": dp_block}
        cached = body.get("cached_version")
        if isinstance(cached, int) and cached != version and rt.is_ancestor(cached):
            urls["delta"] = f"{base}/weights?from={cached}"
        self.metrics.checkins.inc("train", "")
        secagg_plan = (
            {"secagg": self.secagg.join(secagg_round, device_id, assignment.assignment_id)}
            if secagg_round is not None
            else {}
        )
        return {
            "action": "train",
            "live_version": rt.live_version,
            "plan": {
                **secagg_plan,
                "assignment_id": assignment.assignment_id,
                "model": name,
                "version": version,
                "graph_sha256": rt.training.graph_sha256,
                "weights_sha256": rt.training.weights_sha256,
                "urls": urls,
                "client": dict(vars(cfg.client)),
                "codec": codec_spec,
                "deadline_s": round(deadline_at - now, 3),
                "deadline_at": deadline_at,
                **dp_plan,
            },
        }

    @staticmethod
    def _ineligible(cfg: TrainingConfig, body: Mapping[str, Any]) -> str | None:
        req = cfg.eligibility
        if req.require_eligible and not body.get("eligible", False):
            return "not_eligible"
        profile = body.get("profile") or {}
        if req.min_memory_mb:
            memory = profile.get("memory_mb") if isinstance(profile, Mapping) else None
            if not isinstance(memory, (int, float)) or memory < req.min_memory_mb:
                return "requirements"
        if req.runtimes and not any(
            str(body.get("runtime", "")).startswith(r) for r in req.runtimes
        ):
            return "requirements"
        if req.profiles and (
            not isinstance(profile, Mapping) or profile.get("name") not in req.profiles
        ):
            return "requirements"
        return None

    def _current_round(self, rt: ModelRuntime) -> SyncRound:
        if rt.round is None or rt.round.closed:
            now = self.clock.time()
            rt.round = SyncRound(
                round_id="rd-" + secrets.token_hex(6),
                version=rt.training.version,
                deadline_mono=self.clock.monotonic() + rt.config.report_deadline_s,
                deadline_at=now + rt.config.report_deadline_s,
            )
            rt.buffer.round_id = rt.round.round_id
            if rt.config.secagg is not None:  # the secure aggregation phases close it
                target = sync_target(rt.config.clients_per_round, rt.config.over_selection)
                self.secagg.open(rt, rt.round, target)
            else:
                self._spawn(self._round_closer(rt, rt.round))
        return rt.round

    async def _round_closer(self, rt: ModelRuntime, round_: SyncRound) -> None:
        await self.clock.sleep(max(0.0, round_.deadline_mono - self.clock.monotonic()))
        async with rt.lock:
            if round_.closed or rt.round is not round_:
                return
            round_.closed = True
            outcome = round_outcome(
                round_.reported,
                clients_per_round=rt.config.clients_per_round,
                min_reports=rt.config.required_reports,
                deadline_passed=True,
            )
            if rt.buffer.count == 0 and outcome is RoundOutcome.ABANDON and not round_.reported:
                rt.round = None  # nobody reported: nothing to record
                return
            self._seal(rt, abandon=outcome is RoundOutcome.ABANDON)
            rt.round = None

    # --- updates ---------------------------------------------------------------------

    def max_update_bytes(self, model: str) -> int:
        rt = self.runtime(model)
        return 4 * rt.manifest.num_trainable_parameters + self.config.frame_overhead_bytes

    async def accept_update(self, req: UpdateRequest) -> UpdateReceipt:
        started = time.perf_counter()
        rt = self.runtime(req.model)
        dup = await self._duplicate(rt, req.idempotency_key, ask_store=False)
        if dup is not None:
            return dup
        if rt.problem is not None and rt.problem.blocking:
            # Not acknowledged, so not lost: the device keeps the update and
            # retries with the same key once the operator has fixed the model.
            raise self._reject(
                ApiError(
                    503,
                    "publication_blocked",
                    f"model {rt.name!r} cannot publish ({rt.problem.code}); retry later",
                    headers={"Retry-After": str(round(rt.config.pace_max_retry_s))},
                )
            )
        # The store's answer for the key comes while the upload waits for the
        # intake (which reads it before admitting the upload), not before.
        published = self._key_lookups.lookup(req.idempotency_key)
        now = self.clock.time()
        checked = await self._check_assignment(rt, req, now)
        if isinstance(checked, ApiError):
            # A retry of an update folded into a version long ago (its
            # assignment is gone): still the same answer, not a refusal.
            update_id = await published
            if update_id is not None:
                self.metrics.updates_duplicate.inc(rt.name)
                return UpdateReceipt(update_id, True)
            raise self._reject(checked)
        base_manifest = await self._manifest(req.model, req.base_version)
        item = _Intake(req, checked, codec.expected_for(base_manifest), now, published=published)
        rt.intake.append(item)
        if rt.intake_waiter is not None and not rt.intake_waiter.done():
            rt.intake_waiter.set_result(None)
        if rt.intake_task is None or rt.intake_task.done():
            rt.intake_task = self._spawn(self._intake_loop(rt))
        outcome = await item.future
        if outcome is None:  # a retry of a key accepted meanwhile
            dup = await self._duplicate(rt, req.idempotency_key)
            if dup is None:  # pragma: no cover - the key was seen in memory a moment ago
                raise ApiError(503, "storage_unavailable", "idempotency record vanished")
            return dup
        update_id, durable = outcome
        try:
            await asyncio.shield(durable)
        except StorageError as exc:
            raise ApiError(503, "storage_unavailable", str(exc)) from exc
        self._reported.append(req.assignment_id)
        if len(self._reported) >= 64:
            self._spawn(self._flush_reported())
        self.metrics.updates_accepted.inc(req.model)
        self.metrics.ack_seconds.observe(time.perf_counter() - started)
        return UpdateReceipt(update_id, False)

    async def _check_assignment(
        self, rt: ModelRuntime, req: UpdateRequest, now: float
    ) -> OpenAssignment | ApiError:
        """The open assignment this upload reports on, or why it cannot."""
        cfg = rt.config
        open_a = rt.open_assignments.get(req.assignment_id)
        if open_a is None:
            row = await self.store.run(self.store.assignment, req.assignment_id)
            if row is None or row.device_id != req.device_id or row.model != req.model:
                return conflict(
                    "unknown_assignment",
                    f"no assignment {req.assignment_id!r} for this device and model",
                )
            # Open assignments leave memory only when an update is accepted for
            # them or their deadline + grace passes (the store's state lags behind).
            expired = row.deadline_at + cfg.deadline_grace_s < self.clock.time()
            if row.state == "reported" or not expired:
                return conflict(
                    "assignment_used",
                    "this assignment already has an accepted update (with another idempotency key)",
                )
            return conflict(
                "deadline_passed",
                f"assignment {req.assignment_id} expired at {row.deadline_at:.0f}",
            )
        if open_a.device_id != req.device_id:
            return conflict(
                "unknown_assignment",
                f"no assignment {req.assignment_id!r} for this device and model",
            )
        if open_a.version != req.base_version:
            return bad_request(
                "bad_header",
                f"Fedge-Base-Version {req.base_version} is not the assignment's "
                f"version {open_a.version}",
            )
        if now > open_a.deadline_at + cfg.deadline_grace_s:
            return conflict(
                "deadline_passed",
                f"the report deadline passed {now - open_a.deadline_at:.0f} s ago "
                f"(grace {cfg.deadline_grace_s:.0f} s)",
            )
        return open_a

    # --- the intake: group decoding -----------------------------------------------------

    async def _intake_loop(self, rt: ModelRuntime) -> None:
        """Fold queued uploads into the buffer in batches: one thread hop per
        batch instead of one per update (like the log's group commit), under
        the model's lock so that summation order is log order."""
        while rt.intake:
            async with rt.lock:
                if self._pipelined(rt):
                    await self._pipeline(rt)
                    continue
                batch, rt.intake = rt.intake, []
                try:
                    lookups = [i.published for i in batch if i.published is not None]
                    if not all(f.done() for f in lookups):
                        await asyncio.wait(lookups)
                    await self._process_batch(rt, batch)
                except BaseException as exc:
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    raise

    @staticmethod
    def _pipelined(rt: ModelRuntime) -> bool:
        """The plain path (async, mean, no screening) sums straight from the
        frames and can overlap decoding with booking; the others decode
        densely first and stay serial."""
        cfg = rt.config
        return (
            cfg.mode is AggregationMode.ASYNC
            and cfg.aggregator is Aggregator.MEAN
            and cfg.robust is None
        )

    @staticmethod
    async def _arrival_or(rt: ModelRuntime, done: asyncio.Future[Any]) -> None:
        """Wait until ``done`` completes or an upload joins the intake."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        done.add_done_callback(wake)
        rt.intake_waiter = waiter
        try:
            await waiter
        finally:
            rt.intake_waiter = None
            done.remove_done_callback(wake)

    async def _pipeline(self, rt: ModelRuntime) -> None:
        """Up to ``_PIPELINE_BATCHES`` intake batches under one hold of the
        model's lock, with the next batch decoding on the decode thread while
        the previous one is booked (logged) on the event loop.

        Order: the decode thread is one FIFO worker and batches are booked in
        submission order, so log order is still summation order and replay
        (one ``accumulate`` per logged frame) rebuilds the same sum bit for
        bit. A batch is queued behind an in-flight one only if both fit in
        the open buffer even if every update succeeds (``claim``): the buffer
        can then only seal at the booking of the last batch summed into it.
        Admission treats in-flight uploads like earlier ones of the same
        batch (same key: the first one's answer; same assignment: refused)."""
        keys: dict[str, _Intake] = {}
        assignments: set[str] = set()
        inflight: deque[_Decoding] = deque()
        ready: list[_Intake] = []  # admitted, not yet handed to the decode thread
        taken = 0
        max_norm = rt.config.update_norm_bound
        try:
            while True:
                if rt.intake and taken < _PIPELINE_BATCHES and len(inflight) < 2:
                    batch, rt.intake = rt.intake, []
                    taken += 1
                    try:
                        lookups = [i.published for i in batch if i.published is not None]
                        if not all(f.done() for f in lookups):
                            await asyncio.wait(lookups)
                    except BaseException as exc:
                        _fail(batch, exc)
                        raise
                    ready += [i for i in batch if self._admit(rt, i, keys, assignments)]
                if ready and len(inflight) < 2:
                    claimed = sum(job.claim for job in inflight)
                    room = (
                        rt.config.buffer_size - rt.buffer.count - claimed
                        if inflight
                        else self._capacity(rt)
                    )
                    if room > 0:
                        future = asyncio.get_running_loop().run_in_executor(
                            self._cpu,
                            _decode_batch,
                            [
                                (i.req.body, i.weight, i.expected, _tighter(i.max_norm, max_norm))
                                for i in ready
                            ],
                            rt.buffer.sums,
                            room,
                        )
                        inflight.append(_Decoding(ready, min(room, len(ready)), future))
                        ready = []
                        continue
                if not inflight:
                    return
                job = inflight[0]
                if len(inflight) < 2 and taken < _PIPELINE_BATCHES and not job.future.done():
                    # Give the decode thread a successor as soon as an upload
                    # queues rather than after this batch is booked.
                    await self._arrival_or(rt, job.future)
                    if not job.future.done():
                        continue
                errors: list[str | None] = await job.future
                inflight.popleft()
                for item, error in zip(job.items, errors, strict=False):
                    if error is not None:
                        item.future.set_exception(self._reject(unprocessable("bad_update", error)))
                    else:
                        self._book(rt, item)
                    # Answered: from here on the buffer's own state (pending
                    # keys, open assignments) speaks for it.
                    if keys.get(item.req.idempotency_key) is item:
                        del keys[item.req.idempotency_key]
                    assignments.discard(item.req.assignment_id)
                # The buffer filled part-way: the rest go first into the next one.
                ready = job.items[len(errors) :] + ready
        except BaseException as exc:
            # A failure of the decode itself (not of one frame): nothing in
            # flight may keep writing into the sum unobserved.
            for job in inflight:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(job.future)
                _fail(job.items, exc)
            _fail(ready, exc)
            raise

    def _admit(
        self,
        rt: ModelRuntime,
        item: _Intake,
        batch_keys: dict[str, _Intake],
        batch_assignments: set[str],
    ) -> bool:
        """Checks that depend on the buffer's state; False if the item was answered."""
        req, cfg = item.req, rt.config
        key = req.idempotency_key
        if item.published is not None:
            if item.published.cancelled():
                item.future.cancel()
                return False
            error = item.published.exception()
            if error is not None:  # the store failed: a 503, as for any store error
                item.future.set_exception(error)
                return False
            if item.published.result() is not None:  # folded into a version long ago
                item.future.set_result(None)
                return False
        first = batch_keys.get(key)
        if first is not None:  # the same key twice in one batch: answer like the first
            first.future.add_done_callback(functools.partial(_follow, item=item))
            return False
        if key in rt.pending_keys or key in rt.recent_keys:
            item.future.set_result(None)
            return False
        if req.assignment_id not in rt.open_assignments or req.assignment_id in batch_assignments:
            item.future.set_exception(
                self._reject(
                    conflict("assignment_used", "this assignment already has an accepted update")
                )
            )
            return False
        tau = rt.staleness(req.base_version, cfg.max_staleness)
        if tau is None:
            item.future.set_exception(
                self._reject(
                    conflict(
                        "stale_update",
                        f"update base version {req.base_version} is not within {cfg.max_staleness} "
                        f"versions of the training version {rt.training.version}",
                    )
                )
            )
            return False
        if cfg.mode is AggregationMode.SYNC:
            r = rt.round
            if r is None or r.closed or item.assignment.round_id != r.round_id:
                item.future.set_exception(
                    self._reject(
                        conflict(
                            "deadline_passed", "the round this assignment belonged to has closed"
                        )
                    )
                )
                return False
            item.round_id, item.round_deadline = r.round_id, r.deadline_at
        item.tau = tau
        # Under DP the weight is the staleness factor alone (≤ 1): example counts
        # would make one device's contribution, hence the sensitivity, unbounded.
        examples = 1 if cfg.dp is not None else req.examples
        item.weight = staleness_weight(examples, tau, cfg.staleness_exponent)
        if cfg.dp is not None and cfg.dp.adaptive:
            if req.clip_bit is None:
                item.future.set_exception(
                    self._reject(
                        bad_request(
                            "clip_bit_required",
                            "adaptive clipping is on: send Fedge-Clip-Bit (1 if the update's "
                            "norm was within the plan's dp.clip_norm before clipping, else 0)",
                        )
                    )
                )
                return False
            # Decode against the base version's bound; scale down to the current one.
            item.max_norm, factor, item.clip_ref = self._clip.admit(
                rt.name, cfg.dp, req.base_version, rt.training.version
            )
            item.weight *= factor
        batch_keys[key] = item
        batch_assignments.add(req.assignment_id)
        return True

    def _capacity(self, rt: ModelRuntime) -> int:
        cfg = rt.config
        if cfg.mode is AggregationMode.SYNC:
            reported = rt.round.reported if rt.round is not None else 0
            return max(1, cfg.clients_per_round - reported)
        return max(1, cfg.buffer_size - rt.buffer.count)

    async def _process_batch(self, rt: ModelRuntime, batch: list[_Intake]) -> None:
        keys: dict[str, _Intake] = {}
        assignments: set[str] = set()
        todo = [item for item in batch if self._admit(rt, item, keys, assignments)]
        max_norm = rt.config.update_norm_bound
        screen = self._screens.get(rt.name, rt.config.robust)
        dense: dict[int, dict[str, np.ndarray]] = {}
        keep_dense = rt.config.aggregator is not Aggregator.MEAN
        if (screen is not None or keep_dense) and todo:
            todo = await self._screen(rt, screen, todo, dense)
        while todo:
            if rt.config.mode is AggregationMode.SYNC and (rt.round is None or rt.round.closed):
                for item in todo:  # the round closed with an earlier part of this batch
                    item.future.set_exception(
                        self._reject(
                            conflict(
                                "deadline_passed",
                                "the round this assignment belonged to has closed",
                            )
                        )
                    )
                return
            sums = rt.buffer.sums
            errors: list[str | None] = await self._cpu_run(
                _decode_batch,
                [(i.req.body, i.weight, i.expected, _tighter(i.max_norm, max_norm)) for i in todo],
                sums,
                self._capacity(rt),
            )
            for item, error in zip(todo, errors, strict=False):
                if error is not None:
                    item.future.set_exception(self._reject(unprocessable("bad_update", error)))
                else:
                    if screen is not None and id(item) in dense:
                        screen.scorer.observe(dense[id(item)])
                    if keep_dense and id(item) in dense:
                        self._round_updates.add(rt.buffer, dense[id(item)])
                    self._book(rt, item)
            todo = todo[len(errors) :]

    async def _screen(
        self,
        rt: ModelRuntime,
        screen: privacy_hooks.Screen | None,
        todo: list[_Intake],
        dense: dict[int, dict[str, np.ndarray]],
    ) -> list[_Intake]:
        """Decode each update once into ``dense``; with ``robust``, score it before
        it touches the sum (docs/privacy.md §4) and answer quarantined ones 422
        and throttled devices 429."""
        now = self.clock.time()
        keep: list[_Intake] = []
        for item in todo:
            wait = screen.policy.throttled(item.req.device_id, now) if screen else None
            if wait is not None:
                item.future.set_exception(self._throttled(rt, item, wait))
            else:
                keep.append(item)
        decoded = await self._cpu_run(
            privacy_hooks.decode_dense, [i.req.body for i in keep], [i.expected for i in keep]
        )
        out: list[_Intake] = []
        for item, update in zip(keep, decoded, strict=True):
            if isinstance(update, str):
                item.future.set_exception(self._reject(unprocessable("bad_update", update)))
                continue
            if screen is None:
                dense[id(item)] = update
                out.append(item)
                continue
            decision = screen.decide(item.req.device_id, update, now)
            if decision.action is Action.THROTTLE:
                item.future.set_exception(
                    self._throttled(rt, item, decision.retry_after or screen.config.throttle_s)
                )
            elif decision.action is Action.QUARANTINE:
                reasons = [r.value for r in decision.reasons]
                for reason in reasons:
                    self.metrics.updates_quarantined.inc(rt.name, reason)
                item.future.set_exception(
                    self._reject(
                        unprocessable(
                            "anomalous_update",
                            f"update left out as anomalous ({', '.join(reasons)}); "
                            f"{decision.strikes} strike(s) for this device",
                        )
                    )
                )
            else:
                dense[id(item)] = update
                out.append(item)
        return out

    def _throttled(self, rt: ModelRuntime, item: _Intake, wait: float) -> ApiError:
        self.metrics.updates_throttled.inc(rt.name)
        return self._reject(
            ApiError(
                429,
                "throttled",
                f"device {item.req.device_id} sent repeated anomalous updates; "
                f"retry in {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
        )

    def _book(self, rt: ModelRuntime, item: _Intake) -> None:
        """Log an update already summed into the open buffer, and seal if complete."""
        req, cfg = item.req, rt.config
        update_id = "up-" + self._update_ids.next()
        header = {
            "model": req.model,
            "update_id": update_id,
            "key": req.idempotency_key,
            "device": req.device_id,
            "assignment": req.assignment_id,
            "base": req.base_version,
            "tau": item.tau,
            "weight": item.weight,
            "examples": req.examples,
            "t": item.now,
            "round": item.round_id,
            "round_deadline": item.round_deadline,
        }
        if cfg.dp is not None:  # replay rebuilds the step's clip-bit tally from these
            header["clip_bit"] = req.clip_bit
            header["clip_ref"] = item.clip_ref
        try:
            _, end, durable = self.log.append(header, req.body)
        except StorageError as exc:
            # The sum now holds an update that is not logged: only a restart
            # (which rebuilds from the log) makes the buffer trustworthy again.
            log.critical("update log unusable, restart required: %s", exc)
            item.future.set_exception(ApiError(503, "storage_unavailable", str(exc)))
            return
        rt.buffer.record(
            weight=item.weight,
            tau=item.tau,
            device=req.device_id,
            key=req.idempotency_key,
            update_id=update_id,
            assignment=req.assignment_id,
            end_offset=end,
        )
        rt.buffer.durable = durable
        if cfg.dp is not None:
            self._clip.tally(rt.buffer).add(req.clip_bit, item.clip_ref, req.device_id)
        rt.pending_keys[req.idempotency_key] = (update_id, durable)
        del rt.open_assignments[req.assignment_id]
        self.metrics.staleness.observe(item.tau)
        item.future.set_result((update_id, durable))
        if cfg.mode is AggregationMode.SYNC and rt.round is not None:
            rt.round.reported += 1
            if rt.round.reported >= cfg.clients_per_round:
                rt.round.closed = True
                self._seal(rt)
                rt.round = None
        elif cfg.mode is AggregationMode.ASYNC and rt.buffer.count >= cfg.buffer_size:
            self._seal(rt)

    async def _duplicate(
        self, rt: ModelRuntime, key: str, *, ask_store: bool = True
    ) -> UpdateReceipt | None:
        recent = rt.recent_keys.get(key)
        if recent is not None:
            self.metrics.updates_duplicate.inc(rt.name)
            return UpdateReceipt(recent, True)
        pending = rt.pending_keys.get(key)
        if pending is not None:
            update_id, durable = pending
            try:
                await asyncio.shield(durable)
            except StorageError as exc:
                raise ApiError(503, "storage_unavailable", str(exc)) from exc
            self.metrics.updates_duplicate.inc(rt.name)
            return UpdateReceipt(update_id, True)
        if not ask_store:
            return None
        published = await self._key_lookups.published(key)
        if published is not None:
            self.metrics.updates_duplicate.inc(rt.name)
            return UpdateReceipt(published, True)
        return None

    def _reject(self, error: ApiError) -> ApiError:
        self.metrics.updates_rejected.inc(error.code)
        return error

    async def _flush_seen(self) -> None:
        """Write the buffered check-in states (the fleet view's state and
        last-seen). A crash loses those since the last flush — at most the
        sweeper's 30 s — and each device's next check-in restores its own."""
        seen, self._seen = self._seen, {}
        self._seen_flushed_at = self.clock.monotonic()
        if seen:
            await self.store.run(
                self.store.touch_devices, [(d, st, t) for d, (st, t) in seen.items()]
            )

    async def _flush_reported(self) -> None:
        ids, self._reported = self._reported, []
        if ids:
            await self.store.run(self.store.mark_reported, ids)

    # --- publication -----------------------------------------------------------------

    def _seal(self, rt: ModelRuntime, *, abandon: bool = False) -> None:
        """Close the open buffer (caller holds the lock or is replaying) and queue it."""
        buf = rt.buffer
        if abandon:
            buf.round_id = "abandoned:" + (buf.round_id or "")
        rt.sealed.append(buf)
        fresh = Buffer.zeros(rt.manifest.trainable)
        fresh.end_offset = buf.end_offset
        rt.buffer = fresh
        rt.wake_publisher.set()

    def _queue_round_buffer(
        self, rt: ModelRuntime, buf: Buffer, *, abandoned: bool = False
    ) -> None:
        """Queue a buffer built outside the update log (a secure aggregation
        round's sum) for the publisher; the caller holds the lock. Its
        checkpoint is the latest already queued, so publishing it neither
        skips nor replays logged records."""
        if abandoned:
            buf.round_id = "abandoned:" + (buf.round_id or "")
        buf.end_offset = max([rt.checkpoint, *(b.end_offset for b in rt.sealed)])
        rt.sealed.append(buf)
        rt.wake_publisher.set()

    async def _publisher(self, rt: ModelRuntime) -> None:
        while True:
            await rt.wake_publisher.wait()
            rt.wake_publisher.clear()
            while rt.sealed:
                await rt.resumed.wait()
                buf = rt.sealed[0]
                if buf.durable is not None:
                    try:
                        await asyncio.shield(buf.durable)
                    except StorageError:
                        log.critical("model %s: cannot publish, the update log failed", rt.name)
                        return
                if not rt.sealed or rt.sealed[0] is not buf:
                    continue  # dropped by a push or rollback meanwhile
                try:
                    await self._publish(rt, buf)
                except asyncio.CancelledError:
                    raise
                except NonFiniteStep as exc:
                    # Retrying the same step with the same config gives the same
                    # result: stop taking work for this model and wait for the
                    # operator (PATCH config, resume or rollback). The sealed
                    # buffers stay: nothing acknowledged is lost.
                    self._record_problem(rt, "non_finite_step", str(exc), blocking=True)
                    rt.unblocked.clear()
                    await rt.unblocked.wait()
                    continue
                except Exception as exc:
                    self._record_problem(
                        rt, "publication_error", f"{type(exc).__name__}: {exc}", blocking=False
                    )
                    await self.clock.sleep(5.0)
                    continue
                if rt.problem is not None:
                    log.warning("model %s: publishing again after %s", rt.name, rt.problem.code)
                    rt.problem = None
                    self.metrics.publication_blocked.values[(rt.name,)] = 0.0
                if rt.sealed and rt.sealed[0] is buf:
                    rt.sealed.popleft()

    def _record_problem(self, rt: ModelRuntime, code: str, detail: str, *, blocking: bool) -> None:
        previous = rt.problem
        if previous is not None and previous.code == code and previous.detail == detail:
            rt.problem = dataclasses.replace(previous, attempts=previous.attempts + 1)
        else:
            rt.problem = PublicationProblem(code, detail, self.clock.time(), blocking)
            # Logged once per distinct problem, not once per retry.
            if blocking:
                log.error(
                    "model %s: publication blocked (%s): %s; check-ins and uploads for it wait "
                    "until the config is changed, the model resumed or rolled back",
                    rt.name, code, detail,
                )
            else:
                log.exception("model %s: publication failed; retrying every 5 s", rt.name)
        self.metrics.publication_failures.inc(rt.name, code)
        self.metrics.publication_blocked.values[(rt.name,)] = 1.0 if blocking else 0.0

    def _unblock(self, rt: ModelRuntime) -> None:
        """An operator changed something: let a blocked publisher try again."""
        rt.unblocked.set()
        rt.wake_publisher.set()

    async def _publish(self, rt: ModelRuntime, buf: Buffer) -> None:
        started = time.perf_counter()
        abandoned = bool(buf.round_id and buf.round_id.startswith("abandoned:"))
        base = rt.training
        if abandoned:
            self._round_updates.take(buf)
            pub = Publication(
                version=base,
                checkpoint=buf.end_offset,
                published_keys=tuple(buf.keys),
                abandoned_round=True,
                assignments=tuple(buf.assignments),
            )
            await self.store.run(self.store.publish, pub)
            rt.checkpoint = buf.end_offset
            rt.recent_keys = dict(buf.keys)
            for key, _ in buf.keys:
                rt.pending_keys.pop(key, None)
            self.metrics.rounds_abandoned.inc(rt.name)
            self.metrics.updates_discarded.inc(rt.name, amount=buf.count)
            log.warning("model %s: round abandoned with %d reports", rt.name, buf.count)
            return
        optimizer = make_optimizer(rt.config.optimizer)
        individual = self._round_updates.take(buf)
        robust = rt.config.aggregator is not Aggregator.MEAN and len(individual) == buf.count
        if rt.config.aggregator is not Aggregator.MEAN and not robust:
            log.warning(  # the aggregator was switched during this round
                "model %s: %d of %d dense updates kept; publishing the mean",
                rt.name,
                len(individual),
                buf.count,
            )
        version = max(rt.parents) + 1
        dp = rt.config.dp
        privacy: tuple[dict[str, Any], dict[str, Any], Any] | None = None
        noise_seed = 0
        tally = self._clip.take(buf)
        clip_info: dict[str, Any] = {}
        if dp is not None:
            noise_seed = await self.store.run(privacy_hooks.model_seed, self.store, rt.name)
            clip_info = privacy_hooks.adapt(
                dp,
                tally,
                base_bound=self._clip.bound(rt.name, base.version, dp),
                seed=noise_seed,
                version=version,
                expected=privacy_hooks.fixed_denominator(rt.config),
            )
            cached = self._ledgers.get(rt.name, base.version)
            ledger = (
                None
                if cached is not None
                else await self.store.run(
                    privacy_hooks.accountant_state, self.store, rt.name, base.version
                )
            )
            # RDP maths (tens of ms or more): on the publish thread, not the decode thread.
            report, ledger_after, accountant = await asyncio.get_running_loop().run_in_executor(
                self._publish_pool,
                privacy_hooks.account,
                ledger,
                dp,
                version,
                buf.count,
                cached,
            )
            report = {**report, **clip_info}
            if not dp.central:  # local DP: the per-device guarantee
                most = await self.store.run(
                    privacy_hooks.record_uploads, self.store, rt.name, version, tally.devices or {}
                )
                report = privacy_hooks.local_report(report, dp, most)
            privacy = (report, ledger_after, accountant)
        k = privacy_hooks.fixed_denominator(rt.config)

        def step() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], bytes, bytes]:
            if dp is not None:  # Gaussian noise on the sum, then a fixed denominator
                delta = privacy_hooks.dp_mean(
                    buf.sums,
                    dp,
                    privacy_hooks.noise_rng(noise_seed, version),
                    k,
                    clip_info.get("noise_clip_norm"),
                )
            elif robust:  # sync median / trimmed mean over the round's dense updates
                delta = privacy_hooks.robust_mean(individual, rt.config)
            else:
                delta = buf.mean()
            trainable = {k: rt.weights[k] for k in delta}
            with np.errstate(over="ignore", invalid="ignore"):  # checked just below
                new_trainable, state = optimizer.step(trainable, delta, rt.optimizer_state)
            _check_finite(new_trainable, state, rt.config)
            weights = {**rt.weights, **new_trainable}
            return weights, state, codec.encode_weights(weights), _npz_bytes(state)

        # On the publish thread, not the decode thread: uploads keep being
        # accepted while the optimizer steps and zstd compresses (GIL released).
        loop = asyncio.get_running_loop()
        weights, state, frame, state_bytes = await loop.run_in_executor(self._publish_pool, step)
        weights_sha = await self._io_run(self.blobs.put, frame)
        state_sha = await self._io_run(self.blobs.put, state_bytes) if state else None
        if privacy is not None:  # before the commit; a replay rewrites the same row
            report, ledger_state, _ = privacy
            await self.store.run(
                privacy_hooks.save_version, self.store, rt.name, version, report, ledger_state
            )
        row = VersionRow(
            model=rt.name,
            version=version,
            kind="aggregated",
            base_version=base.version,
            graph_sha256=base.graph_sha256,
            manifest=base.manifest,
            weights_sha256=weights_sha,
            optimizer_sha256=state_sha,
            num_updates=buf.count,
            num_devices=len(buf.devices),
            mean_staleness=buf.mean_staleness,
            created_at=self.clock.time(),
            log_checkpoint=buf.end_offset,
            metrics=None,
        )
        await self.store.run(
            self.store.publish,
            Publication(row, buf.end_offset, tuple(buf.keys), assignments=tuple(buf.assignments)),
        )
        # Committed: switch the live state over.
        rt.training, rt.weights, rt.optimizer_state = row, weights, state
        rt.parents[version] = base.version
        rt.checkpoint = buf.end_offset
        rt.recent_keys = dict(buf.keys)
        for key, _ in buf.keys:
            rt.pending_keys.pop(key, None)
        self.metrics.versions_published.inc(rt.name)
        if privacy is not None:
            self._ledgers.put(rt.name, version, privacy[2])
            self._clip.put(rt.name, version, float(privacy[0]["clip_norm"]))
            self.metrics.dp_clip_norm.values[(rt.name,)] = float(privacy[0]["clip_norm"])
            eps = privacy[0]["epsilon"]
            self.metrics.dp_epsilon.values[(rt.name,)] = math.inf if eps is None else float(eps)
            self.metrics.dp_delta.values[(rt.name,)] = float(privacy[0]["delta"])
        self.metrics.aggregation_seconds.observe(time.perf_counter() - started)
        log.info(
            "model %s: published version %d from %d updates (%d devices)",
            rt.name,
            version,
            buf.count,
            len(buf.devices),
        )
        low = min(m.checkpoint for m in self.models.values())
        self._spawn(self._io_run(self.log.prune, low))
        self._spawn(self._evaluate(rt.name, version))

    async def _drain_publications(self) -> None:
        while any(
            rt.sealed and not rt.paused and not rt.waits_for_operator
            for rt in self.models.values()
        ):
            await asyncio.sleep(0.005)

    async def wait_idle(self) -> None:
        """TEST SEAM: wait until every sealed buffer has been published."""
        await asyncio.wait_for(self._drain_publications(), timeout=60.0)

    # --- downloads -------------------------------------------------------------------

    async def weights_delta(self, model: str, version: int, from_version: int) -> bytes:
        key = (model, version, from_version)
        cached = self._delta_cache.get(key)
        if cached is not None:
            return cached
        row = await self.version_row(model, version)
        old = await self.store.run(self.store.version, model, from_version)
        if old is None or old.graph_sha256 != row.graph_sha256 or old.manifest != row.manifest:
            raise not_found(
                "no_delta", f"no delta from version {from_version}: fetch the full weights"
            )
        manifest = Manifest.from_json(row.manifest)
        new_frame = await self._io_run(self.blobs.get, row.weights_sha256)
        old_frame = await self._io_run(self.blobs.get, old.weights_sha256)

        def make() -> tuple[bytes, str]:
            new = codec.decode_weights(new_frame, manifest)
            delta = codec.encode_delta(new, codec.decode_weights(old_frame, manifest))
            return delta, _digest_of(new, manifest)

        made: tuple[bytes, str] = await self._cpu_run(make)
        frame, digest = made
        self._remember_digest(model, version, digest)
        self._delta_cache[key] = frame
        while len(self._delta_cache) > 32:
            self._delta_cache.popitem(last=False)
        return frame

    def _remember_digest(self, model: str, version: int, digest: str) -> None:
        self._digests[(model, version)] = digest
        while len(self._digests) > 256:
            self._digests.popitem(last=False)

    async def weights_digest(self, model: str, version: int) -> str:
        """``quantization.weights_digest`` of a version's weights (manifest
        order): what a device checks the weights it rebuilt from a delta
        against, instead of re-encoding them to the frame's sha256."""
        digest = self._digests.get((model, version))
        if digest is not None:
            return digest
        row = await self.version_row(model, version)
        manifest = Manifest.from_json(row.manifest)
        frame = await self._io_run(self.blobs.get, row.weights_sha256)
        computed: str = await self._cpu_run(
            lambda: _digest_of(codec.decode_weights(frame, manifest), manifest)
        )
        self._remember_digest(model, version, computed)
        return computed

    # --- housekeeping ----------------------------------------------------------------

    async def _sweeper(self) -> None:
        """Expire assignments past deadline + grace; flush reported marks."""
        while True:
            await self.clock.sleep(30.0)
            now = self.clock.time()
            for rt in self.models.values():
                grace = rt.config.deadline_grace_s
                for aid in [
                    a for a, o in rt.open_assignments.items() if o.deadline_at + grace < now
                ]:
                    del rt.open_assignments[aid]
            await self._flush_reported()
            await self._flush_seen()
            await self.store.run(self.store.expire_assignments, now)
            self.metrics.devices.values = {
                (k,): float(v)
                for k, v in (await self.store.run(self.store.devices_by_state)).items()
            }

    def health(self) -> dict[str, Any]:
        """``failing`` (HTTP 503: take this process out of rotation) when it
        cannot make updates durable; ``degraded`` (200: it serves, but an
        operator must look) when a model's publications fail."""
        problems = {n: rt.problem.to_json() for n, rt in self.models.items() if rt.problem}
        if not self.started or self.log.failed is not None:
            status = "failing"
        elif problems:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "models": len(self.models),
            "log_end": self.log.end,
            "publication_problems": problems,
        }
