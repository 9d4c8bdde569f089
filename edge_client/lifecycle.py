"""The agent's lifecycle as an explicit state machine.

Every transition is checked against :data:`TRANSITIONS` (an illegal one is a
bug and raises :class:`IllegalTransition`) and logged, and listeners (the
status file, the simulator) see each one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from edge_client.errors import IllegalTransition
from fedge.clock import Clock

log = logging.getLogger(__name__)


class AgentState(enum.Enum):
    STARTING = "starting"  # reading state, resuming the upload queue
    WAITING_FOR_ELIGIBILITY = "waiting_for_eligibility"  # not charging/idle/…: nothing runs
    CHECKING_IN = "checking_in"  # asking the server for a plan
    PACED = "paced"  # the server said "come back after retry_after"
    DOWNLOADING = "downloading"  # graph + weights (or delta) into the cache
    TRAINING = "training"  # the child process runs train steps on local data
    ENCODING = "encoding"  # trained − base → codec with error feedback → queue
    UPLOADING = "uploading"  # draining the on-disk upload queue
    BACKING_OFF = "backing_off"  # after an error: exponential backoff with full jitter
    STOPPED = "stopped"  # shut down


S = AgentState
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    S.STARTING: frozenset({S.WAITING_FOR_ELIGIBILITY, S.UPLOADING}),
    S.WAITING_FOR_ELIGIBILITY: frozenset({S.CHECKING_IN, S.UPLOADING}),
    S.CHECKING_IN: frozenset({S.DOWNLOADING, S.PACED, S.BACKING_OFF, S.WAITING_FOR_ELIGIBILITY}),
    S.PACED: frozenset({S.WAITING_FOR_ELIGIBILITY}),
    S.DOWNLOADING: frozenset({S.TRAINING, S.BACKING_OFF}),
    # TRAINING → WAITING_FOR_ELIGIBILITY: a condition lapsed; the attempt is abandoned.
    S.TRAINING: frozenset({S.ENCODING, S.WAITING_FOR_ELIGIBILITY, S.BACKING_OFF}),
    S.ENCODING: frozenset({S.UPLOADING, S.BACKING_OFF}),
    S.UPLOADING: frozenset({S.WAITING_FOR_ELIGIBILITY, S.CHECKING_IN, S.BACKING_OFF}),
    S.BACKING_OFF: frozenset({S.WAITING_FOR_ELIGIBILITY}),
    S.STOPPED: frozenset(),
}
# Any state may stop (shutdown, --once finished), and any working state may fail
# into BACKING_OFF (an unexpected error is logged and backed off from, never a crash loop).
for _state in AgentState:
    if _state is not S.STOPPED:
        TRANSITIONS[_state] = TRANSITIONS[_state] | {S.STOPPED}
    if _state not in (S.STOPPED, S.BACKING_OFF):
        TRANSITIONS[_state] = TRANSITIONS[_state] | {S.BACKING_OFF}

Listener = Callable[[AgentState, AgentState, str], None]


class Lifecycle:
    def __init__(self, clock: Clock, listener: Listener | None = None) -> None:
        self._clock = clock
        self._state = AgentState.STARTING
        self._since = clock.monotonic()
        self._listeners: list[Listener] = [listener] if listener else []
        self.history: list[tuple[AgentState, AgentState, str]] = []

    @property
    def state(self) -> AgentState:
        return self._state

    def seconds_in_state(self) -> float:
        return self._clock.monotonic() - self._since

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def to(self, new: AgentState, why: str = "") -> None:
        old = self._state
        if new is old:
            return
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(f"illegal agent transition {old.value} → {new.value} ({why})")
        log.info("state %s → %s%s", old.value, new.value, f": {why}" if why else "")
        self._state = new
        self._since = self._clock.monotonic()
        self.history.append((old, new, why))
        for listener in self._listeners:
            listener(old, new, why)
