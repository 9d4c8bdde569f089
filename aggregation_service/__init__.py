"""fedge's aggregation service: an aiohttp app that turns devices' compressed
updates into new model versions (FedBuff by default, synchronous rounds as an
option), durably and safely.

Modules: :mod:`.config` (frozen config), :mod:`.app` (HTTP), :mod:`.service`
(the core, usable without HTTP), :mod:`.store` (SQLite), :mod:`.blobs`
(content-addressed files), :mod:`.updatelog` (fsync'd append-only log with
group commit), :mod:`.buffer`, :mod:`.strategies`, :mod:`.optimizers`,
:mod:`.pacing`, :mod:`.ratelimit`, :mod:`.metrics`, :mod:`.openapi`,
:mod:`.server` (``fedge serve``), :mod:`.cli`.

Exceptions::

    fedge.errors.FedgeError
    └── ServiceError
        ├── ConfigError (ValueError)   bad server.yaml / config patch; names the key
        ├── StorageError               data directory unusable or corrupt, log write failed
        └── ApiError                   a refused request: HTTP status + stable code + detail

``quantization.CodecError``, ``fedge.manifest.ManifestError`` and the runtime's
errors are translated to ``ApiError`` at the service boundary.
"""

# Lazy imports in __getattr__ are deliberate (see there).
# ruff: noqa: PLC0415

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aggregation_service.config import ServiceConfig, TrainingConfig, load_config
from aggregation_service.errors import ApiError, ConfigError, ServiceError, StorageError

if TYPE_CHECKING:
    from aggregation_service.app import create_app
    from aggregation_service.service import AggregationService


def __getattr__(name: str) -> Any:
    # The app and the core load aiohttp and the runtime adapter: only on use, so
    # `fedge --help` (which imports our cli module) stays light.
    if name == "create_app":
        from aggregation_service.app import create_app

        return create_app
    if name == "AggregationService":
        from aggregation_service.service import AggregationService

        return AggregationService
    raise AttributeError(name)


__all__ = [
    "AggregationService",
    "ApiError",
    "ConfigError",
    "ServiceConfig",
    "ServiceError",
    "StorageError",
    "TrainingConfig",
    "create_app",
    "load_config",
]
