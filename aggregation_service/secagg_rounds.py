"""Secure aggregation of synchronous rounds over HTTP (docs/privacy.md,
"Secure aggregation in the service"; docs/protocol.md, "Secure aggregation").

With ``mode: sync`` and a ``secagg`` section, each round the service opens
runs the four SecAgg+ exchanges of :mod:`privacy.secagg` with the devices it
selects, instead of collecting codec frames. One :class:`SecAggRound` per
round holds the :class:`~privacy.secagg.SecAggServer` and the phase clock:

=========  ===================================  ==================================
phase      devices POST                         closes (early when all expected sent)
=========  ===================================  ==================================
keys       ``keys`` (KeyAdvert)                 start + 20 % of report_deadline_s
shares     ``shares`` (ShareKeys)               start + 30 % of report_deadline_s
inputs     ``masked-input`` (MaskedInput)       the round's report deadline
unmask     ``unmask`` (UnmaskResponse)          deadline + max(grace, 10 % of it)
=========  ===================================  ==================================

After each close the server's answers wait in an outbox that devices fetch
with GET ``setup`` / ``shares`` / ``unmask`` (204 + Retry-After while the
phase is still open). The early close of ``keys`` needs the selection to be
full (``clients_per_round × over_selection`` devices) — until then more
devices may still join. Deadlines run on the service's clock, so a
simulation on a virtual clock closes phases in virtual time.

The result (``finalize()``: the survivors' sum, fixed-point decoded) becomes
a sealed :class:`~aggregation_service.buffer.Buffer` with one unit of weight
per survivor, which the ordinary publisher turns into a version (central DP
noise on the sum, the server optimizer). An abandoned round (too few keys,
shares or inputs, a disconnected survivor graph, too few or inconsistent
unmask shares) is counted in ``fedge_secagg_rounds_total{outcome=<reason>}``
and as an abandoned sync round; the next check-in opens a new round. The
server keeps no single device's input from it.

Only memory holds a round: a restarted service has lost every running round
(its masked inputs are useless without the unmask phase); devices polling it
get 404 ``unknown_round`` and check in again.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregation_service.buffer import Buffer
from aggregation_service.errors import ApiError, bad_request, conflict, not_found
from aggregation_service.strategies.fedavg_sync import SyncRound
from privacy.errors import ProtocolViolation, SecAggAbandoned, SecAggError
from privacy.secagg import (
    KeyAdvert,
    MaskedInput,
    Message,
    SecAggConfig,
    SecAggResult,
    SecAggServer,
    ShareKeys,
    UnmaskResponse,
    decode_message,
    encode_message,
    unflatten,
)

if TYPE_CHECKING:
    from aggregation_service.service import AggregationService, ModelRuntime

log = logging.getLogger("aggregation_service.secagg")

KEYS_FRACTION = 0.2  # of report_deadline_s: the key phase (the selection window)
SHARES_FRACTION = 0.3
UNMASK_FRACTION = 0.1  # at least this much of report_deadline_s after the deadline
POLL_S = 2.0  # Retry-After of a 204 (capped by the time left in the phase)
RECENT_ROUNDS = 8  # finished rounds remembered per service, for late pollers' answers
CONTENT_TYPE = "application/octet-stream"


class Phase(str, enum.Enum):
    KEYS = "keys"
    SHARES = "shares"
    INPUTS = "inputs"
    UNMASK = "unmask"
    FINALIZING = "finalizing"  # unmask closed, the sum is being computed
    DONE = "done"
    ABANDONED = "abandoned"


# POST endpoint → (the phase that accepts it, its message type)
POSTS: dict[str, tuple[Phase, type]] = {
    "keys": (Phase.KEYS, KeyAdvert),
    "shares": (Phase.SHARES, ShareKeys),
    "masked-input": (Phase.INPUTS, MaskedInput),
    "unmask": (Phase.UNMASK, UnmaskResponse),
}
# GET endpoint → the phase whose close fills it
GETS: dict[str, Phase] = {"setup": Phase.KEYS, "shares": Phase.SHARES, "unmask": Phase.INPUTS}
_ORDER = (Phase.KEYS, Phase.SHARES, Phase.INPUTS, Phase.UNMASK, Phase.FINALIZING, Phase.DONE)


def _abandon_reason(phase: Phase, detail: str) -> str:
    """The stable metric label of an abandonment at ``phase``."""
    if phase is Phase.KEYS:
        return "too_few_keys"
    if phase is Phase.SHARES:
        return "too_few_shares"
    if phase is Phase.INPUTS:
        return "disconnected_graph" if "not connected" in detail else "too_few_inputs"
    return "inconsistent_shares" if "commitment" in detail else "too_few_unmask_shares"


@dataclass(eq=False)  # compared by identity
class SecAggRound:
    """One round's protocol state, phase clock and outboxes (memory only)."""

    model: str
    sync: SyncRound
    server: SecAggServer
    layout: tuple[tuple[str, tuple[int, ...]], ...]
    target: int  # devices the round selects; the key phase may close early once full
    ends: dict[Phase, float]  # monotonic close time of each collecting phase
    ends_at: dict[Phase, float]  # the same on wall time, for the plan
    phase: Phase = Phase.KEYS
    participants: dict[str, str] = field(default_factory=dict)  # device → assignment id
    answered: dict[Phase, set[str]] = field(default_factory=dict)  # sent (or refused)
    digests: dict[tuple[Phase, str], bytes] = field(default_factory=dict)  # replay detection
    outbox: dict[str, bytes] = field(default_factory=dict)  # device → encoded answer
    outbox_for: Phase | None = None  # the phase whose close filled the outbox
    reason: str | None = None  # abandonment label
    detail: str = ""
    result: SecAggResult | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def round_id(self) -> str:
        return self.sync.round_id

    @property
    def config(self) -> SecAggConfig:
        return self.server.config

    def expected(self) -> set[str] | None:
        """Who must still send in the current phase for it to close early; None
        while the key phase can still admit devices."""
        if self.phase is Phase.KEYS:
            return set(self.participants) if len(self.participants) >= self.target else None
        if self.phase in (Phase.SHARES, Phase.INPUTS, Phase.UNMASK):
            return set(self.outbox)  # every device that was sent the previous answer
        return set()

    def complete(self) -> bool:
        expected = self.expected()
        return expected is not None and expected <= self.answered.get(self.phase, set())

    def plan(self, clock_now: float) -> dict[str, Any]:
        """The ``secagg`` section of a device's check-in plan."""
        base = f"/v1/devices/secagg/{self.round_id}"
        return {
            "round_id": self.round_id,
            "config": self.config.to_dict(),
            "vector_length": self.server.vector_length,
            "layout": [[name, list(shape)] for name, shape in self.layout],
            "deadlines_at": {p.value: round(t, 3) for p, t in self.ends_at.items()},
            "deadlines_s": {p.value: round(t - clock_now, 3) for p, t in self.ends_at.items()},
            "urls": {name: f"{base}/{name}" for name in ("keys", "setup", "shares",
                                                          "masked-input", "unmask")},
        }


class SecAggRounds:
    """The service's secure aggregation rounds: opened with a sync round,
    driven through the phases by one task each, answered over HTTP by the
    handlers in :mod:`aggregation_service.app`."""

    def __init__(self, service: AggregationService) -> None:
        self._svc = service
        self._rounds: dict[str, SecAggRound] = {}  # by round id, oldest first
        self._current: dict[str, SecAggRound] = {}  # model → its open round

    # --- opening and joining --------------------------------------------------------

    def open(self, rt: ModelRuntime, sync: SyncRound, target: int) -> SecAggRound:
        cfg = rt.config
        assert cfg.secagg is not None
        layout = tuple((t.name, tuple(t.shape)) for t in rt.manifest.trainable)
        length = sum(math.prod(shape) for _, shape in layout)
        d = cfg.report_deadline_s
        offsets = {
            Phase.KEYS: KEYS_FRACTION * d,
            Phase.SHARES: SHARES_FRACTION * d,
            Phase.INPUTS: d,
            Phase.UNMASK: d + max(cfg.deadline_grace_s, UNMASK_FRACTION * d),
        }
        start_mono = sync.deadline_mono - d
        start_at = sync.deadline_at - d
        rnd = SecAggRound(
            model=rt.name,
            sync=sync,
            server=SecAggServer(cfg.secagg, length),
            layout=layout,
            target=target,
            ends={p: start_mono + o for p, o in offsets.items()},
            ends_at={p: start_at + o for p, o in offsets.items()},
        )
        self._rounds[rnd.round_id] = rnd
        self._current[rt.name] = rnd
        # Remember a few finished rounds (late pollers get 409, not 404); never
        # forget an open one.
        open_now = {id(r) for r in self._current.values()}
        finished = [rid for rid, r in self._rounds.items() if id(r) not in open_now]
        for rid in finished[: max(0, len(finished) - RECENT_ROUNDS)]:
            del self._rounds[rid]
        self._svc._spawn(self._drive(rt, rnd))
        log.info("model %s: secure aggregation round %s opened (%d parameters)",
                 rt.name, rnd.round_id, length)
        return rnd

    def current(self, model: str) -> SecAggRound | None:
        return self._current.get(model)

    def describe(self, model: str) -> dict[str, Any] | None:
        """The open round for the operator: phase, counts, deadlines (never a
        device's message)."""
        rnd = self._current.get(model)
        if rnd is None:
            return None
        return {
            "round_id": rnd.round_id,
            "phase": rnd.phase.value,
            "selected": len(rnd.participants),
            "target": rnd.target,
            "sent": {p.value: len(d) for p, d in rnd.answered.items()},
            "deadlines_at": {p.value: round(t, 3) for p, t in rnd.ends_at.items()},
        }

    def admission(self, model: str, device: str) -> float | None:
        """None if ``device`` may join the model's open round, else how long
        to wait (until the round is over)."""
        rnd = self._current.get(model)
        if rnd is None:
            return None
        if rnd.phase is Phase.KEYS and device not in rnd.participants:
            return None
        return max(0.0, rnd.ends[Phase.UNMASK] - self._svc.clock.monotonic())

    def join(self, rnd: SecAggRound, device: str, assignment_id: str) -> dict[str, Any]:
        rnd.participants[device] = assignment_id
        rnd.progress.set()  # the selection may now be full
        return rnd.plan(self._svc.clock.time())

    # --- the HTTP side ----------------------------------------------------------------

    def _round(self, round_id: str, device: str) -> SecAggRound:
        rnd = self._rounds.get(round_id)
        if rnd is None:
            raise not_found(
                "unknown_round",
                f"no secure aggregation round {round_id!r} (finished long ago, or lost in a "
                "service restart): check in again",
            )
        if device not in rnd.participants:
            raise ApiError(403, "not_in_round", f"device {device} is not in round {round_id}")
        if rnd.phase is Phase.ABANDONED:
            raise conflict("round_abandoned", f"round {round_id} was abandoned ({rnd.reason})")
        return rnd

    def refuse(self, error: ApiError) -> ApiError:
        self._svc.metrics.secagg_refused.inc(error.code)
        return error

    def max_body_bytes(self, round_id: str) -> int:
        """A masked input's ring elements plus room for the JSON headers."""
        rnd = self._rounds.get(round_id)
        if rnd is None:
            return 1 << 16
        item = rnd.config.modulus_bits // 8
        return rnd.server.vector_length * item + (1 << 16) + 512 * len(rnd.participants)

    def check_post(self, round_id: str, endpoint: str, device: str) -> SecAggRound:
        """Everything that can be refused before the body is read."""
        if endpoint not in POSTS:
            raise self.refuse(not_found("unknown_endpoint", f"no secure aggregation step "
                                        f"{endpoint!r}; expected one of {sorted(POSTS)}"))
        try:
            rnd = self._round(round_id, device)
        except ApiError as exc:
            raise self.refuse(exc) from None
        phase, _ = POSTS[endpoint]
        if rnd.phase is not phase:
            raise self.refuse(conflict(
                "wrong_phase",
                f"round {round_id} is in phase {rnd.phase.value!r}; {endpoint!r} is sent in "
                f"phase {phase.value!r}",
            ))
        return rnd

    def receive(self, rnd: SecAggRound, endpoint: str, device: str, body: bytes) -> dict[str, Any]:
        """Decode and apply one device message. A replay of the same bytes is
        answered like the first (a retry after a lost answer); other bytes for
        a step already taken are 409 ``already_sent``."""
        phase, kind = POSTS[endpoint]
        if rnd.phase is not phase:  # the phase closed while the body was read
            raise self.refuse(conflict("wrong_phase", f"phase {phase.value!r} has closed"))
        digest = hashlib.sha256(body).digest()
        previous = rnd.digests.get((phase, device))
        if previous is not None:
            if previous == digest:
                return {"status": "duplicate", "round_id": rnd.round_id, "phase": phase.value}
            raise self.refuse(conflict(
                "already_sent", f"{device} already sent its {endpoint!r} message this round"
            ))
        try:
            msg: Message = decode_message(body, max_vector_length=rnd.server.vector_length)
        except SecAggError as exc:
            raise self.refuse(bad_request("bad_secagg_message", str(exc))) from exc
        if not isinstance(msg, kind):
            raise self.refuse(bad_request(
                "bad_secagg_message", f"{endpoint!r} carries a {kind.__name__}, "
                f"not a {type(msg).__name__}"
            ))
        if msg.device != device:
            raise self.refuse(ApiError(
                403, "device_mismatch",
                f"the message names device {msg.device!r}; this token is {device!r}",
            ))
        receivers: dict[Phase, Callable[[Any], None]] = {
            Phase.KEYS: rnd.server.receive_keys,
            Phase.SHARES: rnd.server.receive_shares,
            Phase.INPUTS: rnd.server.receive_masked_input,
            Phase.UNMASK: rnd.server.receive_unmask,
        }
        try:
            receivers[phase](msg)
        except ProtocolViolation as exc:
            # The device is out of the round from here on (treated as dropped);
            # it counts as answered so the phase need not wait for it.
            rnd.answered.setdefault(phase, set()).add(device)
            rnd.digests[(phase, device)] = digest
            rnd.progress.set()
            raise self.refuse(ApiError(422, "protocol_violation", str(exc))) from exc
        rnd.digests[(phase, device)] = digest
        rnd.answered.setdefault(phase, set()).add(device)
        rnd.progress.set()
        return {"status": "received", "round_id": rnd.round_id, "phase": phase.value}

    def poll(self, round_id: str, endpoint: str, device: str) -> bytes | float:
        """The server's answer for ``device`` after ``endpoint``'s phase
        closed, or the seconds to wait before asking again."""
        if endpoint not in GETS:
            raise self.refuse(not_found("unknown_endpoint", f"nothing to fetch at {endpoint!r}; "
                                        f"expected one of {sorted(GETS)}"))
        try:
            rnd = self._round(round_id, device)
        except ApiError as exc:
            raise self.refuse(exc) from None
        wanted = GETS[endpoint]
        if _ORDER.index(rnd.phase) <= _ORDER.index(wanted):
            left = rnd.ends[wanted] - self._svc.clock.monotonic()
            return float(max(1, min(math.ceil(POLL_S), math.ceil(left)))) if left > 0 else 1.0
        if rnd.phase in (Phase.FINALIZING, Phase.DONE):
            raise self.refuse(conflict("round_closed", f"round {round_id} is over"))
        if rnd.outbox_for is not wanted:
            raise self.refuse(conflict(
                "wrong_phase", f"round {round_id} is past {endpoint!r} (now {rnd.phase.value!r})"
            ))
        answer = rnd.outbox.get(device)
        if answer is None:
            raise self.refuse(conflict(
                "excluded", f"{device} is no longer in round {round_id}: it missed or failed an "
                "earlier step"
            ))
        return answer

    # --- the phase driver ----------------------------------------------------------------

    async def _wait_phase(self, rt: ModelRuntime, rnd: SecAggRound) -> bool:
        """Until the phase may close (everyone sent, or its deadline). False if
        the round was superseded meanwhile (push, rollback, config change)."""
        clock = self._svc.clock
        while True:
            if rt.round is not rnd.sync:
                return False
            left = rnd.ends[rnd.phase] - clock.monotonic()
            if left <= 0 or rnd.complete():
                return True
            rnd.progress.clear()
            sleeper = asyncio.ensure_future(clock.sleep(left))
            waker = asyncio.ensure_future(rnd.progress.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)

    def _post(self, rnd: SecAggRound, answers: Mapping[str, Message], closed: Phase) -> None:
        rnd.outbox = {d: encode_message(m) for d, m in answers.items()}
        rnd.outbox_for = closed

    async def _drive(self, rt: ModelRuntime, rnd: SecAggRound) -> None:
        server = rnd.server
        try:
            if not await self._wait_phase(rt, rnd):
                self._superseded(rnd)
                return
            self._post(rnd, server.close_keys(), Phase.KEYS)
            rnd.phase = Phase.SHARES
            if not await self._wait_phase(rt, rnd):
                self._superseded(rnd)
                return
            self._post(rnd, server.close_shares(), Phase.SHARES)
            rnd.phase = Phase.INPUTS
            if not await self._wait_phase(rt, rnd):
                self._superseded(rnd)
                return
            self._post(rnd, server.close_inputs(), Phase.INPUTS)
            rnd.phase = Phase.UNMASK
            if not await self._wait_phase(rt, rnd):
                self._superseded(rnd)
                return
            rnd.phase = Phase.FINALIZING
            rnd.outbox = {}
            result: SecAggResult = await self._svc._cpu_run(server.finalize)
        except SecAggAbandoned as exc:
            await self._abandoned(rt, rnd, str(exc))
            return
        rnd.result = result
        buf = Buffer.zeros(rt.manifest.trainable, rnd.round_id)
        flat = unflatten(np.asarray(result.total, dtype=np.float64), rnd.layout)
        buf.sums = {name: np.array(value, dtype=np.float64) for name, value in flat.items()}
        # One unit of weight per survivor: the server cannot weigh inputs it
        # never sees (example counts would also reveal per-device information).
        buf.weight_sum = float(len(result.survivors))
        buf.count = len(result.survivors)
        buf.devices = set(result.survivors)
        buf.assignments = [rnd.participants[d] for d in result.survivors]
        async with rt.lock:
            if rt.round is not rnd.sync:
                self._superseded(rnd)
                return
            self._svc._queue_round_buffer(rt, buf)
            self._finish(rt, rnd, Phase.DONE)
        self._svc.metrics.secagg_rounds.inc(rt.name, "completed")
        if result.inconsistent:
            log.warning("model %s round %s: inconsistent unmask shares from %s", rt.name,
                        rnd.round_id, sorted({h for _, h in result.inconsistent}))
        log.info("model %s: secure aggregation round %s summed %d inputs (%d dropped)",
                 rt.name, rnd.round_id, buf.count, len(result.dropped))

    async def _abandoned(self, rt: ModelRuntime, rnd: SecAggRound, detail: str) -> None:
        reason = _abandon_reason(rnd.phase, detail)
        rnd.detail = detail
        async with rt.lock:
            if rt.round is not rnd.sync:
                self._superseded(rnd)
                return
            empty = Buffer.zeros(rt.manifest.trainable, rnd.round_id)
            self._svc._queue_round_buffer(rt, empty, abandoned=True)
            rnd.reason = reason
            self._finish(rt, rnd, Phase.ABANDONED)
        self._svc.metrics.secagg_rounds.inc(rt.name, reason)
        log.warning("model %s: secure aggregation round %s abandoned (%s): %s",
                    rt.name, rnd.round_id, reason, detail)

    def _superseded(self, rnd: SecAggRound) -> None:
        """A push, rollback or config change replaced the round: drop it quietly."""
        if rnd.phase not in (Phase.DONE, Phase.ABANDONED):
            rnd.reason = "superseded"
            rnd.phase = Phase.ABANDONED
            rnd.outbox = {}
            if self._current.get(rnd.model) is rnd:
                del self._current[rnd.model]
            self._svc.metrics.secagg_rounds.inc(rnd.model, "superseded")

    def _finish(self, rt: ModelRuntime, rnd: SecAggRound, phase: Phase) -> None:
        rnd.phase = phase
        rnd.outbox = {}
        rnd.sync.closed = True
        rt.round = None
        if self._current.get(rt.name) is rnd:
            del self._current[rt.name]
        # Every plan of the round is used up, contributed or not.
        for assignment in rnd.participants.values():
            rt.open_assignments.pop(assignment, None)
        if rnd.result is not None:
            self._svc._reported.extend(rnd.participants[d] for d in rnd.result.survivors)
