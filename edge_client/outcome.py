"""How one agent cycle ended, and what `fedge agent run --once` exits with.

The values are the strings the agent has always written to ``status.json``
and printed with ``--once``; :class:`Outcome` is a ``StrEnum``, so a result
still compares equal to (and serialises as) its string.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    UPLOADED = "uploaded"  # the server accepted this cycle's update (202)
    INELIGIBLE = "ineligible"  # a policy condition was not met; nothing ran
    PACED = "paced"  # the server (or its last retry_after) said to come back later
    LAPSED = "lapsed"  # eligibility lapsed during training; the attempt was abandoned
    CRASHED = "crashed"  # the training worker died (runtime crash)
    DROPPED = "dropped"  # the server refused the update for good (stale, deadline, invalid)
    PENDING = "upload_pending"  # the update is queued on disk; the upload will be retried
    ERROR = "error"  # network, server or local error; backing off
    NOTHING_TRAINED = "nothing_trained"  # the deadline allowed no example
    DATA_ERROR = "data_error"  # the local data does not fit the model (the user's to fix)
    UNKNOWN_MODEL = "unknown_model"  # the server has no model by the configured name
    REFUSED_PLAN = "refused_plan"  # a plan for another model, or naming unsafe paths

    @property
    def exit_code(self) -> int:
        """`fedge agent run --once`: 0 did work, 3 nothing to do now, 2 the
        user's mistake (config, data, model name), 1 any other error."""
        if self is Outcome.UPLOADED:
            return EXIT_DID_WORK
        if self in (Outcome.INELIGIBLE, Outcome.PACED, Outcome.LAPSED):
            return EXIT_NOTHING_TO_DO
        if self in (Outcome.DATA_ERROR, Outcome.UNKNOWN_MODEL):
            return EXIT_USER_ERROR
        return EXIT_ERROR


EXIT_DID_WORK = 0
EXIT_ERROR = 1
EXIT_USER_ERROR = 2  # also what `fedge` exits with for a bad flag or config
EXIT_NOTHING_TO_DO = 3
