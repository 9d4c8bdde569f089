"""fedge's privacy package: differential privacy with an accountant, secure
aggregation, robust aggregation and an empirical membership-inference audit.

Shared by the device side and the service (like :mod:`quantization`), so it
never imports TensorFlow or aiohttp. Modules, one concern each:

- :mod:`privacy.dp` — :class:`DPConfig`, the Gaussian mechanism on an
  aggregated sum, adaptive clipping (Andrew et al. 2021), local DP, and the
  codec compatibility check. numpy only: safe on a device.
- :mod:`privacy.accountant` — (ε, δ) per published version and cumulatively,
  with ``dp-accounting`` (server side).
- :mod:`privacy.shamir` — Shamir secret sharing over GF(2^521 − 1).
- :mod:`privacy.secagg` — SecAgg+-style secure aggregation for synchronous
  rounds as transport-agnostic state machines (needs ``cryptography``).
- :mod:`privacy.robust` — norm bounds, anomaly scoring, quarantine/throttle
  policy, coordinate-wise median and trimmed mean.
- :mod:`privacy.audit` — loss-threshold membership-inference attack (AUC and
  advantage) against a :class:`fedge.runtime.TrainableModel`; ``fedge audit``
  (:mod:`privacy.cli`) runs it from the command line.

Only the numpy-only modules are imported here; import the others by name.

Exceptions::

    FedgeError
    └── PrivacyError
        ├── PrivacyConfigError (ValueError)   bad or guarantee-breaking config
        ├── AccountingError                   the accountant cannot answer
        ├── SecAggError
        │   ├── SecAggAbandoned               round abandoned, nothing revealed
        │   └── ProtocolViolation             a participant lied (``.device``)
        └── AuditError                        unusable audit data
"""

from privacy.dp import (
    AccountingMethod,
    AdaptiveClipper,
    AdaptiveClipping,
    ClipResult,
    DPConfig,
    DPMode,
    Participation,
    add_local_noise,
    add_noise,
    check_codec_compatible,
    clip_update,
)
from privacy.errors import (
    AccountingError,
    AuditError,
    PrivacyConfigError,
    PrivacyError,
    ProtocolViolation,
    SecAggAbandoned,
    SecAggError,
)

__all__ = [
    "AccountingError",
    "AccountingMethod",
    "AdaptiveClipper",
    "AdaptiveClipping",
    "AuditError",
    "ClipResult",
    "DPConfig",
    "DPMode",
    "Participation",
    "PrivacyConfigError",
    "PrivacyError",
    "ProtocolViolation",
    "SecAggAbandoned",
    "SecAggError",
    "add_local_noise",
    "add_noise",
    "check_codec_compatible",
    "clip_update",
]
