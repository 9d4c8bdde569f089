"""The agent's exception tree (drawn in the package docstring)."""

from __future__ import annotations

from fedge.errors import FedgeError


class AgentError(FedgeError):
    """Root of every error the device agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The agent's YAML config (or a CLI flag) is invalid; the message names the key."""


class NotEnrolledError(AgentError):
    """No device identity in the state directory: run ``fedge agent init`` first."""


class EnrollmentError(AgentError):
    """The server refused the enrollment token."""


class IllegalTransition(AgentError, RuntimeError):
    """The lifecycle was asked to move between two states that are not connected (a bug)."""


class StateWriteError(AgentError, OSError):
    """A state file could not be written (disk full, read-only, permissions)."""


class StateReadError(AgentError):
    """A state file exists but cannot be parsed; it is set aside and ignored."""


class EligibilityError(AgentError):
    """A device-state provider failed (its command is missing, printed bad JSON, …)."""


class UnsafeNameError(AgentError, ValueError):
    """A name that would become a file name (a model name, a hash) could lead
    outside the state directory: refused before any file is touched."""


class DataError(AgentError, ValueError):
    """Local training data is missing, malformed, or does not fit the model."""


class ServerError(AgentError):
    """The server answered, but not with something this agent can use.

    ``retryable`` tells the caller whether the same request may succeed later
    (5xx, 429, garbled bodies) or never will (4xx validation, 409 stale)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after


class DownloadError(AgentError):
    """A model file or weights frame could not be fetched or did not verify."""


class IntegrityError(DownloadError):
    """Downloaded bytes do not match their sha256: the file is discarded, never trained on."""


class TrainingError(AgentError):
    """Training could not run (model cannot load, data does not fit, worker protocol error)."""


class RuntimeCrash(TrainingError):
    """The training worker died (a native crash in the TFLite runtime, usually a signal)."""

    def __init__(self, message: str, *, signal: int | None = None, returncode: int | None = None):
        super().__init__(message)
        self.signal = signal
        self.returncode = returncode
