"""The service's exception tree (drawn in the package docstring).

``ApiError`` carries an HTTP status and a stable machine-readable code; the
app's error middleware turns it into ``{"error": {"code", "detail"}}``. Every
other ``ServiceError`` is a user's or operator's mistake outside HTTP (bad
config file, bad data directory) and is printed by the command line.
"""

from __future__ import annotations

from fedge.errors import FedgeError


class ServiceError(FedgeError):
    """Root of aggregation_service's errors."""


class ConfigError(ServiceError, ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class StorageError(ServiceError):
    """The data directory is unusable or corrupt (a blob failed its hash check,
    the update log cannot be written)."""


class ApiError(ServiceError):
    """A request the service refuses: status, stable code, human-readable detail."""

    def __init__(
        self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def bad_request(code: str, detail: str) -> ApiError:
    return ApiError(400, code, detail)


def not_found(code: str, detail: str) -> ApiError:
    return ApiError(404, code, detail)


def conflict(code: str, detail: str) -> ApiError:
    return ApiError(409, code, detail)


def unprocessable(code: str, detail: str) -> ApiError:
    return ApiError(422, code, detail)
