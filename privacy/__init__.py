"""fedge's privacy package: differential privacy with an accountant, secure
aggregation, robust aggregation and empirical privacy audits.

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
  advantage) against a :class:`fedge.runtime.TrainableModel`, ROC helpers.
- The offline audits (``fedge audit``, :mod:`privacy.cli`; docs/privacy.md §5):
  :mod:`privacy.audit_lira` (likelihood-ratio membership attack with shadow
  models), :mod:`privacy.audit_inversion` (gradient inversion of a device's
  update under each protection; scoring in :mod:`privacy.audit_images`, the
  TensorFlow gradient-matching attack in :mod:`privacy.audit_gradient`),
  :mod:`privacy.audit_canary` (one-run ε from canary clients; estimator in
  :mod:`privacy.audit_epsilon`, the DP-FedAvg emulation in
  :mod:`privacy.audit_fedavg`), :mod:`privacy.audit_setup` (data, reference
  export, missing-extra errors). They import TensorFlow, scipy, scikit-learn
  and matplotlib only inside their functions.

Only the numpy-only modules are imported here; import the others by name.

Exceptions::

    FedgeError
    └── PrivacyError
        ├── PrivacyConfigError (ValueError)   bad or guarantee-breaking config
        ├── AccountingError                   the accountant cannot answer
        ├── SecAggError
        │   ├── SecAggAbandoned               round abandoned, nothing revealed
        │   └── ProtocolViolation             a participant lied (``.device``)
        └── AuditError                        an audit cannot run (bad data, flags, missing extra)
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
