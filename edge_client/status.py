"""Where the agent publishes its status snapshot (state, eligibility, last results).

The agent publishes on every lifecycle transition and at the end of every
cycle, passing a *builder* (a callable returning the snapshot) rather than the
snapshot itself, so a sink that nobody reads need not build it:

- :class:`FileStatus` (the default) builds it and writes ``status.json`` in the
  state directory, which ``fedge agent status`` reads; a failed write is logged,
  never raised (a full disk must not stop the agent).
- :class:`MemoryStatus` keeps the latest builder and builds on demand: the
  simulator gives one to each of its thousands of agents, and tests may too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from edge_client.errors import StateWriteError
from edge_client.storage import StateDir

log = logging.getLogger(__name__)

StatusBuilder = Callable[[], dict[str, Any]]


class StatusSink(Protocol):
    def publish(self, build: StatusBuilder) -> None: ...


class FileStatus:
    """Writes each snapshot to ``status.json`` (atomic, not fsynced)."""

    def __init__(self, state: StateDir) -> None:
        self.state = state

    def publish(self, build: StatusBuilder) -> None:
        try:
            self.state.save_status(build())
        except StateWriteError as exc:
            # The status file is for humans; a full disk must not stop the agent.
            log.warning("cannot write status: %s", exc)


class MemoryStatus:
    """Keeps the latest builder; :meth:`latest` builds the snapshot when asked."""

    def __init__(self) -> None:
        self.publishes = 0
        self._build: StatusBuilder | None = None

    def publish(self, build: StatusBuilder) -> None:
        self.publishes += 1
        self._build = build

    def latest(self) -> dict[str, Any] | None:
        """The agent's status as of now, or None if it never published."""
        return self._build() if self._build is not None else None
