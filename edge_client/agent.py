"""The device agent: one object that runs the lifecycle against the service.

A cycle is: wait for eligibility → (drain the upload queue) → check in →
download (cache, verify) → train batch by batch, re-checking eligibility and
the deadline between batches → encode with error feedback → persist in the
upload queue → upload with an idempotency key. :meth:`Agent.run_cycle` does
one and returns a :class:`CycleResult` (with its measurements and how long to
wait before the next); :meth:`Agent.run_forever` loops, and never lets an
error escape into a crash loop.

Everything the agent needs comes in through its constructor — the clock, the
transport, the state provider, the trainer, the state directory — so the
simulator runs the same object on a virtual clock, in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edge_client import codec
from edge_client.cache import CachedModel, ModelCache
from edge_client.config import AgentConfig
from edge_client.eligibility import Eligibility, Policy, StateProvider
from edge_client.eligibility.policy import RUNTIME_CRASH
from edge_client.errors import (
    AgentError,
    DataError,
    IntegrityError,
    NotEnrolledError,
    RuntimeCrash,
    ServerError,
    StateWriteError,
    TrainingError,
)
from edge_client.lifecycle import AgentState, Lifecycle
from edge_client.outcome import Outcome
from edge_client.protocol import AGENT_VERSION, Plan, ProtocolClient
from edge_client.retry import Backoff
from edge_client.status import FileStatus, StatusSink
from edge_client.storage import Identity, QueuedUpload, StateDir
from edge_client.trainer import TimedSession, Trainer, TrainingJob
from fedge.clock import Clock
from fedge.transport import Transport, TransportError

log = logging.getLogger(__name__)
S = AgentState

# Outcomes of a cycle (CycleResult.outcome), edge_client.outcome.Outcome.
UPLOADED = Outcome.UPLOADED
INELIGIBLE = Outcome.INELIGIBLE
PACED = Outcome.PACED
LAPSED = Outcome.LAPSED
CRASHED = Outcome.CRASHED
DROPPED = Outcome.DROPPED
PENDING = Outcome.PENDING
ERROR = Outcome.ERROR
NOTHING_TRAINED = Outcome.NOTHING_TRAINED
DATA_ERROR = Outcome.DATA_ERROR
UNKNOWN_MODEL = Outcome.UNKNOWN_MODEL
REFUSED_PLAN = Outcome.REFUSED_PLAN

UPLOAD_TRIES_PER_CYCLE = 3
MAX_RESULTS = 20
# The shortest sleep on a provider's change hint: a hint at (or, by float
# rounding, just before) the current instant must not spin the agent.
MIN_WAKE_S = 1.0


@dataclass(frozen=True)
class CycleResult:
    outcome: Outcome
    wait_s: float  # how long run_forever sleeps before the next cycle
    at: float  # wall time the cycle ended
    reasons: tuple[str, ...] = ()
    version: int | None = None
    examples: int = 0
    batches: int = 0
    mean_loss: float | None = None
    batches_after_lapse: int | None = None
    upload_bytes: int | None = None
    compression_ratio: float | None = None
    idempotency_key: str | None = None
    update_id: str | None = None
    detail: str = ""
    download: Mapping[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v not in (None, "", (), {})}
        out["outcome"] = str(self.outcome)
        out["reasons"] = list(self.reasons)
        out["download"] = dict(self.download)
        return out


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock,
        transport: Transport,
        provider: StateProvider,
        trainer: Trainer,
        state: StateDir | None = None,
        identity: Identity | None = None,
        rng: random.Random | None = None,
        status: StatusSink | None = None,
        ignore_eligibility: bool = False,
    ) -> None:
        self.config = config
        # `fedge agent run --once --ignore-eligibility`: try the agent on a
        # development machine (busy, no battery). Every cycle logs what it
        # ignored; the installed service unit never passes it.
        self.ignore_eligibility = ignore_eligibility
        self.clock = clock
        self.transport = transport
        self.provider = provider
        self.trainer = trainer
        self.state = state or StateDir(config.state_dir)
        self.rng = rng or random.Random(config.seed)
        # Its own stream, so jittered re-checks leave the training seeds and
        # backoff draws of a seeded agent as they were.
        self._recheck_rng = random.Random(
            None if config.seed is None else f"fedge-recheck-{config.seed}"
        )
        self.status = status or FileStatus(self.state)
        self.policy = Policy(config.policy, clock)
        self.lifecycle = Lifecycle(clock, self._on_transition)
        self.identity = identity
        self.client = ProtocolClient(transport, identity.device_token if identity else None)
        self.cache = ModelCache(self.state, self.client)
        self.backoff = Backoff(config.backoff.base_s, config.backoff.max_s, self.rng)
        self.runtime = "unknown"
        self.eligibility: Eligibility | None = None
        self.results: list[CycleResult] = []
        self.pending_reasons: set[str] = set()  # failures to report at the next check-in
        self._next_checkin_at = 0.0  # monotonic; honours the server's retry_after
        self._next_report_at = 0.0
        self._started = False
        self._accepted: dict[str, str] = {}  # idempotency key → update_id, last drain
        self._dropped: dict[str, str] = {}  # idempotency key → why, last drain
        self._ignored: tuple[str, ...] = ()  # reasons last ignored (--ignore-eligibility)
        # TEST SEAM: builds the privacy.secagg.SecAggClient of a secure aggregation
        # round (tests substitute a recording or lying client); None: the real one.
        self.secagg_client_factory: Callable[[str], Any] | None = None

    # --- plumbing -----------------------------------------------------------
    def _on_transition(self, old: AgentState, new: AgentState, why: str) -> None:
        self._write_status()

    def _write_status(self) -> None:
        self.status.publish(self.status_snapshot)

    def status_snapshot(self) -> dict[str, Any]:
        """What `fedge agent status` shows: state, eligibility, queue, last results."""
        return {
            "state": self.lifecycle.state.value,
            "since": self.clock.time(),
            "model": self.config.model,
            "runtime": self.runtime,
            "device_id": self.identity.device_id if self.identity else None,
            "eligibility": self.eligibility.to_dict() if self.eligibility else None,
            "pending_reasons": sorted(self.pending_reasons),
            "queue_length": self.state.queue_length(),
            "cached_version": self.cache.cached_version(self.config.model),
            "last_results": [r.to_dict() for r in self.results[-MAX_RESULTS:]],
        }

    def _finish(self, result: CycleResult) -> CycleResult:
        self.results.append(result)
        del self.results[:-MAX_RESULTS]
        log.info(
            "cycle: %s%s%s", result.outcome,
            f" ({', '.join(result.reasons)})" if result.reasons else "",
            f": {result.detail}" if result.detail else "",
        )
        self._write_status()
        return result

    def _result(self, outcome: Outcome, wait_s: float, **kwargs: Any) -> CycleResult:
        return self._finish(CycleResult(outcome, max(0.0, wait_s), self.clock.time(), **kwargs))

    def _to(self, state: AgentState, why: str = "") -> None:
        self.lifecycle.to(state, why)

    async def start(self) -> None:
        """Load identity and state, probe the runtime. Idempotent."""
        if self._started:
            return
        self.state.prepare()
        if self.identity is None:
            self.identity = self.state.load_identity()
            if self.identity is None:
                raise NotEnrolledError(
                    f"no device identity in {self.state.root} (run `fedge agent init`)"
                )
            self.client.token = self.identity.device_token
        previous = self.state.load_status() or {}
        self.pending_reasons |= set(previous.get("pending_reasons") or ())
        try:
            self.runtime = await self.trainer.probe_runtime()
        except AgentError as exc:
            log.warning("cannot determine the TFLite runtime: %s", exc)
            self.runtime = "none"
        log.info(
            "agent %s for model %r, runtime %s, %d queued upload(s)",
            self.identity.device_id, self.config.model, self.runtime, self.state.queue_length(),
        )
        self._started = True
        self._to(S.WAITING_FOR_ELIGIBILITY, "started")

    async def check_eligibility(self) -> Eligibility:
        state = await self.provider.read()
        self.eligibility = self.policy.evaluate(state)
        if self.ignore_eligibility and not self.eligibility.eligible:
            if self.eligibility.reasons != self._ignored:
                log.warning(
                    "ignoring eligibility (--ignore-eligibility): would not train now (%s)",
                    ", ".join(self.eligibility.reasons),
                )
            self._ignored = self.eligibility.reasons
            self.eligibility = replace(self.eligibility, eligible=True, reasons=())
        return self.eligibility

    def _backoff_wait(self, floor: float = 0.0) -> float:
        return self.backoff.next_wait(floor)

    def _ineligible_wait(self, eligibility: Eligibility) -> float:
        """How long an ineligible agent sleeps: until its state can change, if
        the provider can tell (a phone is woken by the power-connected
        broadcast, not by a timer), else the jittered re-check interval."""
        until = self.policy.next_change(eligibility, self.provider)
        if until is None:
            return self._recheck_wait()
        if math.isinf(until):  # never, as far as the provider knows: look again rarely
            return max(self.config.policy.report_interval_s, self._recheck_wait())
        return max(MIN_WAKE_S, until - self.clock.monotonic())

    def _recheck_wait(self) -> float:
        """The policy's re-check interval, jittered so a fleet that booted (or
        lost power) together does not re-check in lockstep."""
        policy = self.config.policy
        jitter = policy.recheck_jitter
        if jitter <= 0:
            return policy.recheck_interval_s
        return policy.recheck_interval_s * self._recheck_rng.uniform(1 - jitter, 1 + jitter)

    # --- the cycle ----------------------------------------------------------
    async def run_cycle(self) -> CycleResult:
        await self.start()
        if self.lifecycle.state is not S.WAITING_FOR_ELIGIBILITY:
            self._to(S.WAITING_FOR_ELIGIBILITY, "next cycle")
        policy = self.config.policy
        eligibility = await self.check_eligibility()
        now = self.clock.monotonic()

        if eligibility.eligible and self.state.queue_length():
            self._to(S.UPLOADING, "resuming queued uploads")
            drained = await self._drain_queue()
            if drained is not None:  # a retryable failure: back off, keep the queue
                self._to(S.BACKING_OFF, drained.detail)
                return drained
            self._to(S.WAITING_FOR_ELIGIBILITY, "queue drained")

        if not eligibility.eligible:
            if now >= self._next_report_at and now >= self._next_checkin_at:
                # Tell the server why we are not training (its fleet view), rarely.
                self._next_report_at = now + policy.report_interval_s
                with contextlib.suppress(AgentError, TransportError):
                    self._to(S.CHECKING_IN, "reporting ineligibility")
                    answer = await self.client.checkin(self._checkin_payload(eligibility))
                    if answer.action == "wait":
                        self._next_checkin_at = now + answer.retry_after
                if self.lifecycle.state is not S.WAITING_FOR_ELIGIBILITY:
                    self._to(S.WAITING_FOR_ELIGIBILITY, "not eligible")
            return self._result(
                INELIGIBLE, self._ineligible_wait(eligibility), reasons=eligibility.reasons
            )

        if now < self._next_checkin_at:
            wait = self._next_checkin_at - now
            if self.policy.next_change(eligibility, self.provider) is None:
                # Poll eligibility meanwhile; a provider that announces its
                # changes lets the agent sleep until the server's time.
                wait = min(wait, policy.recheck_interval_s)
            return self._result(PACED, wait, detail="waiting for the server's retry_after")

        # Check in.
        self._to(S.CHECKING_IN, "eligible")
        try:
            answer = await self.client.checkin(self._checkin_payload(eligibility))
        except (TransportError, ServerError) as exc:
            return self._checkin_failed(exc)
        self.pending_reasons.clear()
        if answer.plan is not None and answer.plan.model != self.config.model:
            # Only a broken or hostile server (or a man in the middle of plain
            # HTTP) sends this: never train, cache or write anything for it.
            wait = self._backoff_wait()
            log.error(
                "refusing a plan for model %r: this agent trains %r only (is %s the server "
                "you enrolled with?); backing off %.0f s",
                answer.plan.model, self.config.model, self.config.server, wait,
            )
            self._to(S.BACKING_OFF, "plan for another model")
            return self._result(
                REFUSED_PLAN, wait,
                detail=f"plan for model {answer.plan.model!r}, configured {self.config.model!r}",
            )
        if answer.action == "wait" or answer.plan is None:
            self._next_checkin_at = self.clock.monotonic() + answer.retry_after
            self._to(S.PACED, f"server: wait {answer.retry_after:.1f} s ({answer.reason})")
            self._to(S.WAITING_FOR_ELIGIBILITY, "paced")
            return self._result(
                PACED, answer.retry_after, detail=f"server said wait ({answer.reason})"
            )
        return await self._train_and_upload(answer.plan)

    def _checkin_failed(self, exc: TransportError | ServerError) -> CycleResult:
        wait = self._backoff_wait(_retry_floor(exc))
        outcome = ERROR
        if isinstance(exc, ServerError) and exc.code == "unsafe_plan":
            outcome = REFUSED_PLAN
            log.error("%s; backing off %.0f s", exc, wait)
        elif isinstance(exc, ServerError) and not exc.retryable:
            wait = max(wait, self.config.backoff.max_s)  # 401/403/4xx: no point hammering
            if exc.code == "unknown_model":
                outcome = UNKNOWN_MODEL
                log.error(
                    "the server %s has no model %r: fix `model:` in the agent's config (the "
                    "operator's `fedge models list` shows the names) or ask the operator to push "
                    "it; checking in again in %.0f s", self.config.server, self.config.model, wait,
                )
            else:
                log.error("check-in refused (%s); checking in again in %.0f s", exc, wait)
        self._to(S.BACKING_OFF, f"check-in failed: {exc}")
        return self._result(outcome, wait, detail=f"check-in: {exc}")

    def _checkin_payload(self, eligibility: Eligibility) -> dict[str, Any]:
        extra = sorted(self.pending_reasons - set(eligibility.reasons))
        reasons = list(eligibility.reasons) + extra
        return {
            "model": self.config.model,
            "eligible": eligibility.eligible,
            "reasons": reasons,
            "runtime": self.runtime,
            "profile": dict(self.config.profile),
            "cached_version": self.cache.cached_version(self.config.model),
            "agent_version": AGENT_VERSION,
        }

    async def _download(self, plan: Plan) -> CachedModel:
        try:
            return await self.cache.fetch(plan)
        except IntegrityError as exc:
            # A corrupted transfer: the bad bytes are gone; one immediate retry.
            log.warning("%s; downloading again", exc)
            return await self.cache.fetch(plan)

    async def _train_and_upload(self, plan: Plan) -> CycleResult:
        received = self.clock.monotonic()
        # Leave a tenth of the window (at most a minute) for encoding and upload.
        margin = min(60.0, 0.1 * plan.deadline_s)
        deadline = received + max(0.0, plan.deadline_s - margin)
        self._to(S.DOWNLOADING, f"version {plan.version} ({plan.assignment_id})")
        try:
            model = await self._download(plan)
        except (TransportError, AgentError, OSError) as exc:
            wait = self._backoff_wait(_retry_floor(exc))
            self._to(S.BACKING_OFF, f"download failed: {exc}")
            return self._result(ERROR, wait, version=plan.version, detail=f"download: {exc}")

        if plan.secagg is not None:
            return await self._secagg_round(plan, model, received, deadline)

        self._to(S.TRAINING, f"{plan.client.epochs} epoch(s), batch {plan.client.batch_size}")
        outcome = await self._train(plan, model, deadline)
        if isinstance(outcome, CycleResult):
            return outcome
        trained, examples, batches, losses, seconds = outcome

        self._to(S.ENCODING, f"{examples} examples")
        try:
            entry, payload, stats = await self._encode_and_queue(plan, model, trained, examples)
        except (AgentError, OSError) as exc:
            self._to(S.BACKING_OFF, f"encoding failed: {exc}")
            return self._result(
                ERROR, self._backoff_wait(), version=plan.version, examples=examples,
                batches=batches, detail=f"encode: {exc}",
            )
        self._to(S.UPLOADING, f"{len(payload)} bytes")
        drained = await self._drain_queue()
        base = {
            "version": plan.version, "examples": examples, "batches": batches,
            "mean_loss": float(np.mean(losses)) if losses else None,
            "upload_bytes": len(payload),
            "compression_ratio": stats.get("ratio"),
            "idempotency_key": entry.idempotency_key,
            "download": model.stats.to_dict(), "train_seconds": seconds,
        }
        if drained is not None:
            self._to(S.BACKING_OFF, drained.detail)
            return self._result(drained.outcome, drained.wait_s, detail=drained.detail, **base)
        mine = self._accepted.get(entry.idempotency_key)
        self._to(S.WAITING_FOR_ELIGIBILITY, "cycle done")
        if mine is None:
            return self._result(
                DROPPED, self._recheck_wait(),
                detail=self._dropped.get(entry.idempotency_key, "refused"), **base,
            )
        self.backoff.reset()
        return self._result(
            UPLOADED, self._recheck_wait(), update_id=mine, **base
        )

    async def _secagg_round(
        self, plan: Plan, model: CachedModel, received: float, deadline: float
    ) -> CycleResult:
        """A secure aggregation round instead of a codec upload: keys and
        shares, train, clip, then masked input and unmask (edge_client.secagg)."""
        from edge_client.secagg import (  # noqa: PLC0415 - loads `cryptography`: secagg plans only
            SecAggExchange,
            SecAggPlan,
            SecAggRoundError,
            clip_and_flatten,
        )

        base: dict[str, Any] = {"version": plan.version, "download": model.stats.to_dict()}
        try:
            splan = SecAggPlan.parse(plan.secagg)
            splan.check_manifest(model.manifest)
        except ServerError as exc:
            self._to(S.BACKING_OFF, f"secure aggregation plan: {exc}")
            return self._result(ERROR, self._backoff_wait(), detail=f"secagg plan: {exc}", **base)
        assert self.identity is not None
        factory = self.secagg_client_factory
        exchange = SecAggExchange(
            self.client, self.clock, self.identity.device_id, splan, received_at=received,
            **({"client_factory": factory} if factory is not None else {}),
        )

        def ended(exc: SecAggRoundError) -> CycleResult:
            # Refused by the server (abandoned round, excluded, …): try the next
            # round soon. No answer before a deadline (network): back off.
            self._to(S.BACKING_OFF, f"secure aggregation: {exc}")
            outcome, wait = (
                (DROPPED, self._recheck_wait()) if exc.code else (ERROR, self._backoff_wait())
            )
            return self._result(
                outcome, wait, upload_bytes=exchange.stats.bytes_up or None,
                detail=f"secure aggregation round {splan.round_id}: {exc}", **base,
            )

        try:
            await exchange.prepare()  # in DOWNLOADING: the round's setup, before any training
        except SecAggRoundError as exc:
            return ended(exc)
        self._to(S.TRAINING, f"{plan.client.epochs} epoch(s), secure aggregation round")
        outcome = await self._train(plan, model, deadline)
        if isinstance(outcome, CycleResult):
            return outcome  # a dropout after sharing keys: the round recovers without it
        trained, examples, batches, losses, seconds = outcome
        base.update(examples=examples, batches=batches, train_seconds=seconds,
                    mean_loss=float(np.mean(losses)) if losses else None)
        self._to(S.ENCODING, "clip, flatten, mask")
        update = {
            t.name: np.asarray(trained[t.name], np.float32)
            - np.asarray(model.weights[t.name], np.float32)
            for t in model.manifest.trainable
        }
        try:
            vector, _ = clip_and_flatten(update, splan)
            self._to(S.UPLOADING, f"masked input of {splan.vector_length} ring elements")
            await exchange.submit(vector)
        except SecAggRoundError as exc:
            return ended(exc)
        self._to(S.WAITING_FOR_ELIGIBILITY, "secure aggregation round done")
        self.backoff.reset()
        return self._result(
            UPLOADED, self._recheck_wait(), upload_bytes=exchange.stats.bytes_up,
            detail=f"secure aggregation round {splan.round_id}: masked input "
            f"{exchange.stats.masked_input_bytes} B, {exchange.stats.polls} polls",
            **base,
        )

    async def _train(
        self, plan: Plan, model: CachedModel, deadline: float
    ) -> CycleResult | tuple[dict[str, np.ndarray], int, int, list[float], float]:
        job = TrainingJob(
            graph_path=model.graph_path,
            manifest=model.manifest,
            weights=model.weights,
            data=self.config.data,
            epochs=plan.client.epochs,
            batch_size=plan.client.batch_size,
            learning_rate=plan.client.learning_rate,
            max_examples=plan.client.max_examples,
            fedprox_mu=plan.client.fedprox_mu,
            seed=self.rng.getrandbits(32),
            runtime=self.config.runtime.name,
            num_threads=self.config.runtime.num_threads,
        )
        started = self.clock.monotonic()
        examples = batches = 0
        losses: list[float] = []
        session = None
        # Re-read the state before every batch, unless the provider said it
        # cannot change before `holds_until`.
        holds_until = -math.inf
        try:
            session = await self.trainer.start(job)
            self.runtime = session.runtime
            while True:
                if self.clock.monotonic() >= holds_until:
                    eligibility = await self.check_eligibility()
                    if not eligibility.eligible:
                        # Stop now; nothing of this attempt is uploaded (the update
                        # would be from a device that was not allowed to train).
                        await session.abort()
                        self._to(S.WAITING_FOR_ELIGIBILITY,
                                 f"lapsed: {','.join(eligibility.reasons)}")
                        return self._result(
                            LAPSED, self._ineligible_wait(eligibility),
                            reasons=eligibility.reasons, version=plan.version,
                            examples=examples, batches=batches,
                            detail="eligibility lapsed during training",
                        )
                    until = self.policy.next_change(eligibility, self.provider)
                    holds_until = -math.inf if until is None else until
                now = self.clock.monotonic()
                if now >= deadline:
                    log.info("deadline reached after %d examples; stopping early", examples)
                    break
                limit = min(holds_until, deadline)
                if limit > now and isinstance(session, TimedSession):
                    # Nothing watched can change before `limit`: every batch that
                    # starts before it runs as it would one by one, with one wait.
                    steps = await session.steps_before(limit)
                else:
                    step = await session.step()
                    steps = [] if step is None else [step]
                if not steps:
                    break
                for step in steps:
                    examples += step.examples
                    batches += 1
                    losses.append(step.loss)
            if examples == 0:
                await session.abort()
                self._to(S.WAITING_FOR_ELIGIBILITY, "nothing trained")
                return self._result(
                    NOTHING_TRAINED, self._backoff_wait(), version=plan.version,
                    detail="no example trained before the deadline (or no data)",
                )
            trained = await session.finish()
        except RuntimeCrash as exc:
            self.pending_reasons.add(RUNTIME_CRASH)
            wait = max(self._backoff_wait(), self.config.backoff.crash_s * self.rng.uniform(0.5, 1))
            self._to(S.BACKING_OFF, str(exc))
            return self._result(
                CRASHED, wait, reasons=(RUNTIME_CRASH,), version=plan.version,
                examples=examples, batches=batches, detail=str(exc),
            )
        except (TrainingError, DataError) as exc:
            if session is not None:
                await session.abort()
            self._to(S.BACKING_OFF, f"training failed: {exc}")
            if isinstance(exc, DataError):
                wait = self._backoff_wait()
                log.error("the local data does not fit model %r version %d: %s (`fedge agent "
                          "check` re-runs this check); trying again in %.0f s",
                          plan.model, plan.version, exc, wait)
                return self._result(
                    DATA_ERROR, wait, version=plan.version, detail=f"data: {exc}"
                )
            return self._result(
                ERROR, self._backoff_wait(), version=plan.version, detail=f"training: {exc}"
            )
        except BaseException:
            # Shutdown (cancellation) or a bug: never leave a worker behind.
            if session is not None:
                await asyncio.shield(session.abort())
            raise
        return trained, examples, batches, losses, self.clock.monotonic() - started

    async def _encode_and_queue(
        self, plan: Plan, model: CachedModel, trained: Mapping[str, np.ndarray], examples: int
    ) -> tuple[QueuedUpload, bytes, Mapping[str, Any]]:
        trainable = model.manifest.trainable
        update = {
            t.name: np.asarray(trained[t.name], np.float32) - np.asarray(model.weights[t.name],
                                                                         np.float32)
            for t in trainable
        }
        residual = self.state.load_residual(plan.model)
        if residual is not None and (
            set(residual) != set(update)
            or any(residual[k].shape != update[k].shape for k in update)
        ):
            log.info("discarding a residual that does not fit version %d's tensors", plan.version)
            residual = None
        seed = self.rng.getrandbits(32)
        encoded = await asyncio.to_thread(
            codec.encode_update, update, plan.codec, residual, seed, plan.dp
        )
        entry = QueuedUpload(
            # Always from the OS's entropy, never from the (possibly seeded) rng: a
            # restarted agent with the same seed must not reuse a key, or the
            # server would take its new update for a retry of an old one.
            idempotency_key=str(uuid.uuid4()),
            assignment_id=plan.assignment_id,
            model=plan.model,
            base_version=plan.version,
            examples=examples,
            created_at=self.clock.time(),
            deadline_at=plan.deadline_at,
            clip_bit=encoded.clip_bit,
        )
        # The residual is saved before the update is queued: if power is lost in
        # between, error-feedback mass is lost (harmless) rather than sent twice.
        self.state.save_residual(plan.model, encoded.residual)
        self.state.enqueue(entry, encoded.payload)
        return entry, encoded.payload, encoded.stats

    # --- uploads ------------------------------------------------------------
    async def _drain_queue(self) -> CycleResult | None:
        """Upload every queued update. Returns None when the queue is empty (each
        entry accepted or dropped for good), or a result to back off with."""
        self._accepted = {}
        self._dropped = {}
        for entry, payload in list(self.state.queued()):
            current = entry
            for attempt in range(UPLOAD_TRIES_PER_CYCLE):
                current = replace(current, attempts=current.attempts + 1)
                try:
                    self.state.update_queued(current)
                except StateWriteError as exc:
                    log.warning("cannot record the upload attempt: %s", exc)
                try:
                    answer = await self.client.upload(current.headers(), payload)
                except (TransportError, ServerError) as exc:
                    retryable = not isinstance(exc, ServerError) or exc.retryable
                    if not retryable:
                        code = exc.code if isinstance(exc, ServerError) else None
                        log.warning(
                            "dropping update %s (assignment %s): the server refused it for good "
                            "(%s)", current.idempotency_key, current.assignment_id, code or exc,
                        )
                        self.state.dequeue(current.idempotency_key)
                        self._dropped[current.idempotency_key] = str(exc)
                        break
                    floor = _retry_floor(exc)
                    wait = self._backoff_wait(floor)
                    if attempt + 1 == UPLOAD_TRIES_PER_CYCLE:
                        return CycleResult(
                            PENDING, wait, self.clock.time(),
                            detail=f"upload of {current.idempotency_key} will be retried: {exc}",
                        )
                    log.warning("upload failed (%s); retrying in %.1f s", exc, wait)
                    await self.clock.sleep(wait)
                    continue
                update_id = str(answer.get("update_id", ""))
                log.info(
                    "update %s accepted as %s%s", current.idempotency_key, update_id,
                    " (duplicate)" if answer.get("duplicate") else "",
                )
                self.state.dequeue(current.idempotency_key)
                self._accepted[current.idempotency_key] = update_id
                self.backoff.reset()
                break
        return None

    # --- forever --------------------------------------------------------------
    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.start()
        # One waiter on `stop` for the agent's whole life, not one per cycle: a
        # simulator runs thousands of agents on one event, and every cancelled
        # waiter is an O(waiters) removal from the event's queue.
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stopper.done():
                # The cycle runs as a task so a stop request (SIGTERM) cancels it at
                # once, even mid-training; every state file is atomic, so a
                # cancelled cycle leaves nothing half-written.
                cycle = asyncio.ensure_future(self.run_cycle())
                await asyncio.wait({cycle, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not cycle.done():
                    cycle.cancel()
                    await asyncio.gather(cycle, return_exceptions=True)
                    break
                try:
                    wait = cycle.result().wait_s
                except Exception as exc:  # never a crash loop: log, back off, carry on
                    log.error("unexpected error in the agent cycle: %r", exc, exc_info=exc)
                    if self.lifecycle.state not in (S.BACKING_OFF, S.STOPPED):
                        self._to(S.BACKING_OFF, f"unexpected {type(exc).__name__}")
                    wait = self._backoff_wait()
                await self._sleep_or_stop(wait, stopper)
        finally:
            stopper.cancel()
        self._to(S.STOPPED, "shutdown")

    async def _sleep_or_stop(self, seconds: float, stopper: asyncio.Future[Any]) -> None:
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            await asyncio.gather(sleeper, return_exceptions=True)

    async def close(self) -> None:
        if self.lifecycle.state is not S.STOPPED:
            self._to(S.STOPPED, "closed")
        await self.transport.close()


def _retry_floor(exc: BaseException) -> float:
    """The server's Retry-After (429/503), the lower bound of the next wait."""
    if isinstance(exc, ServerError) and exc.retry_after is not None:
        return exc.retry_after
    return 0.0
