"""The privacy package's exceptions (drawn in :mod:`privacy`'s docstring)."""

from __future__ import annotations

from fedge.errors import FedgeError


class PrivacyError(FedgeError):
    """Base of every error the privacy package raises."""


class PrivacyConfigError(PrivacyError, ValueError):
    """A privacy configuration is invalid or would silently break a guarantee.

    The message names the key and says what to change."""


class AccountingError(PrivacyError):
    """The accountant cannot answer (bad step, bad δ, dp-accounting failed)."""


class SecAggError(PrivacyError):
    """Secure aggregation failed; see the subclasses."""


class SecAggAbandoned(SecAggError):
    """The round cannot complete (too many dropouts, too few shares): it is
    abandoned and nothing about any single device's input is revealed."""


class ProtocolViolation(SecAggError):
    """A participant sent something the protocol does not allow (a masked
    vector of the wrong length, shares inconsistent with its commitment, a
    message out of order). ``device`` names the culprit when it is known."""

    def __init__(self, message: str, device: str | None = None) -> None:
        super().__init__(message)
        self.device = device


class AuditError(PrivacyError):
    """An audit cannot run: unusable data, a bad flag or setting, or a
    missing optional dependency (the message names the extra to install)."""
