"""Configuration, parsed once into frozen dataclasses.

Two levels:

- :class:`ServiceConfig` — the process: data directory, address, credentials,
  limits, logging (``fedge serve --config server.yaml``).
- :class:`TrainingConfig` — per model, changeable at run time through
  ``PATCH /v1/models/{model}/config``. A patch is merged onto the current
  config's dict and parsed again, so a patch is validated exactly like a file.

Every error names the key (``training.buffer_size: expected an integer ≥ 1,
got 0``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from aggregation_service.codec import validate_codec_spec
from aggregation_service.errors import ConfigError
from privacy.dp import DPConfig, DPMode, check_codec_compatible
from privacy.errors import PrivacyConfigError
from privacy.robust import RobustConfig

if TYPE_CHECKING:  # privacy.secagg imports `cryptography`: loaded only when secagg is configured
    from privacy.secagg import SecAggConfig

OPERATOR_TOKEN_ENV = "FEDGE_OPERATOR_TOKEN"


class AggregationMode(str, enum.Enum):
    ASYNC = "async"  # FedBuff: every K accepted updates make a version
    SYNC = "sync"  # rounds: select, over-select, close at the deadline


class Aggregator(str, enum.Enum):
    MEAN = "mean"  # the weighted running sum: O(model) memory
    MEDIAN = "median"  # sync only: coordinate-wise median of the round's updates
    TRIMMED_MEAN = "trimmed_mean"  # sync only: coordinate-wise trimmed mean


class OptimizerName(str, enum.Enum):
    FEDAVG = "fedavg"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"


# --- small typed readers: each names the key it reads -----------------------------------


def _int(data: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{where}.{key}: expected an integer ≥ {minimum}, got {value!r}")
    return value


def _float(
    data: Mapping[str, Any],
    key: str,
    where: str,
    default: float,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    maximum: float | None = None,
) -> float:
    value = data.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    value = float(value)
    too_low = value <= minimum if strict else value < minimum
    too_high = maximum is not None and value > maximum
    if too_low or too_high or not math.isfinite(value):
        bound = f"> {minimum}" if strict else f"≥ {minimum}"
        if maximum is not None:
            bound += f" and ≤ {maximum}"
        raise ConfigError(f"{where}.{key}: expected a finite number {bound}, got {value!r}")
    return value


def _opt_float(data: Mapping[str, Any], key: str, where: str) -> float | None:
    if data.get(key) is None:
        return None
    return _float(data, key, where, 0.0, strict=True)


def _bool(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _str_list(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _section(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.{key}: expected a mapping, got {type(value).__name__}")
    return value


def _no_unknown(data: Mapping[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")


def _enum(
    data: Mapping[str, Any], key: str, where: str, kind: type[enum.Enum], default: Any
) -> Any:
    value = data.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        names = [m.value for m in kind]
        raise ConfigError(f"{where}.{key}: expected one of {names}, got {value!r}") from None


# --- per-model training config ---------------------------------------------------------


@dataclass(frozen=True)
class OptimizerConfig:
    """Server optimizer (Reddi et al. 2021, "Adaptive Federated Optimization")."""

    name: OptimizerName = OptimizerName.FEDAVG
    learning_rate: float = 1.0
    momentum: float = 0.9  # fedavgm
    beta1: float = 0.9  # fedadam / fedyogi
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: the ε of Adam, large on purpose (Reddi et al.)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> OptimizerConfig:
        _no_unknown(data, cls, where)
        return cls(
            name=_enum(data, "name", where, OptimizerName, OptimizerName.FEDAVG),
            # Bounded: a rate like 1e308 passes as finite but makes every step
            # overflow. Reddi et al. tune server rates within 10^-3 … 10^1.
            learning_rate=_float(data, "learning_rate", where, 1.0, strict=True, maximum=1000.0),
            momentum=_float(data, "momentum", where, 0.9, maximum=0.999999),
            beta1=_float(data, "beta1", where, 0.9, maximum=0.999999),
            beta2=_float(data, "beta2", where, 0.99, maximum=0.999999),
            tau=_float(data, "tau", where, 1e-3, strict=True),
        )


@dataclass(frozen=True)
class ClientPlan:
    """What a device is told to do with its local data."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    max_examples: int = 1000
    fedprox_mu: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ClientPlan:
        _no_unknown(data, cls, where)
        return cls(
            epochs=_int(data, "epochs", where, 1, minimum=1),
            batch_size=_int(data, "batch_size", where, 32, minimum=1),
            learning_rate=_float(data, "learning_rate", where, 0.05, strict=True, maximum=1000.0),
            max_examples=_int(data, "max_examples", where, 1000, minimum=1),
            fedprox_mu=_float(data, "fedprox_mu", where, 0.0),
        )


@dataclass(frozen=True)
class Eligibility:
    """Which checking-in devices may be given a plan."""

    require_eligible: bool = True  # the device's own policy said it may train
    min_memory_mb: int = 0
    runtimes: tuple[str, ...] = ()  # runtime name prefixes, e.g. "ai-edge-litert"; empty: any
    profiles: tuple[str, ...] = ()  # profile names; empty: any

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Eligibility:
        _no_unknown(data, cls, where)
        return cls(
            require_eligible=_bool(data, "require_eligible", where, True),
            min_memory_mb=_int(data, "min_memory_mb", where, 0, minimum=0),
            runtimes=_str_list(data, "runtimes", where),
            profiles=_str_list(data, "profiles", where),
        )


@dataclass(frozen=True)
class DPSettings:
    """The ``dp`` section: :class:`privacy.dp.DPConfig` plus ``population``, a
    lower bound on the devices that could contribute to one step (None: the
    accountant charges every step with q = 1, the conservative choice)."""

    dp: DPConfig
    population: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> DPSettings:
        rest = dict(data)
        population = rest.pop("population", None)
        if population is not None and (
            not isinstance(population, int) or isinstance(population, bool) or population < 1
        ):
            raise ConfigError(f"{where}.population: expected an integer ≥ 1, got {population!r}")
        try:
            dp = DPConfig.from_dict(rest, where)
        except PrivacyConfigError as exc:
            # DPConfig's own checks name keys from "dp."; name them from `where`
            # ("training.dp.…", a fleet file's "server.dp.…").
            message = str(exc)
            if message.startswith("dp.") and not message.startswith(where):
                message = where + message[2:]
            raise ConfigError(message) from exc
        if dp.clip_norm is None:
            raise ConfigError(
                f"{where}.clip_norm: the service needs a clip norm to bound each update "
                "(the sensitivity of the noised sum)"
            )
        return cls(dp, population)

    def to_dict(self) -> dict[str, Any]:
        return {**self.dp.to_dict(), "population": self.population}

    @property
    def central(self) -> bool:
        return self.dp.mode is DPMode.CENTRAL

    @property
    def adaptive(self) -> bool:
        return self.dp.adaptive is not None


@dataclass(frozen=True)
class TrainingConfig:
    mode: AggregationMode = AggregationMode.ASYNC
    buffer_size: int = 10  # K
    staleness_exponent: float = 0.5  # a in (1 + τ)^−a
    max_staleness: int = 10  # refuse updates whose base is more versions old than this
    report_deadline_s: float = 600.0
    deadline_grace_s: float = 60.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    client: ClientPlan = field(default_factory=ClientPlan)
    codec: Mapping[str, Any] = field(default_factory=lambda: {"density": 0.01, "bits": 8})
    eligibility: Eligibility = field(default_factory=Eligibility)
    over_provisioning: float = 1.3  # async: devices training at once ≈ K × this
    clients_per_round: int = 10  # sync
    over_selection: float = 1.3  # sync: select clients_per_round × this
    min_reports: int = 0  # sync: 0 means clients_per_round
    max_update_norm: float | None = None  # L2 bound on a decoded update; None: no bound
    pace_min_retry_s: float = 30.0
    pace_max_retry_s: float = 900.0
    # Privacy and robustness (docs/privacy.md): all off by default.
    dp: DPSettings | None = None
    robust: RobustConfig | None = None
    aggregator: Aggregator = Aggregator.MEAN
    trim_fraction: float = 0.1  # aggregator: trimmed_mean, per side
    # Secure aggregation of each sync round (privacy.secagg; docs/privacy.md
    # "Secure aggregation in the service"). None: off.
    secagg: SecAggConfig | None = None

    @property
    def required_reports(self) -> int:
        return self.min_reports or self.clients_per_round

    @property
    def update_norm_bound(self) -> float | None:
        """The L2 bound every decoded update must meet: ``max_update_norm``,
        tightened to ``dp.clip_norm`` with central DP at a fixed bound (the
        noise's sensitivity). With adaptive clipping the service checks each
        update against its base version's bound instead; in local mode an
        update carries the device's noise, far above the clip norm."""
        dp = self.dp
        fixed = dp.dp.clip_norm if dp is not None and dp.central and not dp.adaptive else None
        bounds = [b for b in (self.max_update_norm, fixed) if b]
        return min(bounds) if bounds else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "training") -> TrainingConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        _no_unknown(data, cls, where)
        codec = _section(data, "codec", where) or {"density": 0.01, "bits": 8}
        try:
            codec = validate_codec_spec(codec)
        except ValueError as exc:
            raise ConfigError(f"{where}.codec: {exc}") from exc
        config = cls(
            mode=_enum(data, "mode", where, AggregationMode, AggregationMode.ASYNC),
            buffer_size=_int(data, "buffer_size", where, 10, minimum=1),
            staleness_exponent=_float(data, "staleness_exponent", where, 0.5),
            max_staleness=_int(data, "max_staleness", where, 10, minimum=0),
            report_deadline_s=_float(data, "report_deadline_s", where, 600.0, strict=True),
            deadline_grace_s=_float(data, "deadline_grace_s", where, 60.0),
            optimizer=OptimizerConfig.from_dict(
                _section(data, "optimizer", where), f"{where}.optimizer"
            ),
            client=ClientPlan.from_dict(_section(data, "client", where), f"{where}.client"),
            codec=codec,
            eligibility=Eligibility.from_dict(
                _section(data, "eligibility", where), f"{where}.eligibility"
            ),
            over_provisioning=_float(data, "over_provisioning", where, 1.3, minimum=1.0),
            clients_per_round=_int(data, "clients_per_round", where, 10, minimum=1),
            over_selection=_float(data, "over_selection", where, 1.3, minimum=1.0),
            min_reports=_int(data, "min_reports", where, 0, minimum=0),
            max_update_norm=_opt_float(data, "max_update_norm", where),
            pace_min_retry_s=_float(data, "pace_min_retry_s", where, 30.0, strict=True),
            pace_max_retry_s=_float(data, "pace_max_retry_s", where, 900.0, strict=True),
            dp=_dp_section(data, where),
            robust=_robust_section(data, where),
            aggregator=_enum(data, "aggregator", where, Aggregator, Aggregator.MEAN),
            trim_fraction=_float(data, "trim_fraction", where, 0.1, maximum=0.49),
            secagg=_secagg_section(data, where),
        )
        _check_privacy(config, where)
        if config.pace_max_retry_s < config.pace_min_retry_s:
            raise ConfigError(f"{where}.pace_max_retry_s: must be ≥ pace_min_retry_s")
        if config.min_reports > config.clients_per_round:
            raise ConfigError(f"{where}.min_reports: must be ≤ clients_per_round")
        return config

    def to_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, tuple):
                return list(value)
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return value

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (DPSettings, RobustConfig)) or f.name == "secagg":
                out[f.name] = None if value is None else value.to_dict()
                continue
            if dataclasses.is_dataclass(value):
                value = {g.name: plain(getattr(value, g.name)) for g in dataclasses.fields(value)}
            out[f.name] = plain(value)
        return out

    def patched(self, patch: Any) -> TrainingConfig:
        """A new config with ``patch`` (a partial dict, nested sections merged) applied."""
        if not isinstance(patch, Mapping):
            raise ConfigError("config patch: expected a JSON object")
        merged = self.to_dict()
        for key, value in patch.items():
            if (
                isinstance(value, Mapping)
                and isinstance(merged.get(key), Mapping)
                and key != "codec"
            ):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return TrainingConfig.from_dict(merged)


def _dp_section(data: Mapping[str, Any], where: str) -> DPSettings | None:
    section = _section(data, "dp", where)
    return DPSettings.from_dict(section, f"{where}.dp") if section else None


def _robust_section(data: Mapping[str, Any], where: str) -> RobustConfig | None:
    section = _section(data, "robust", where)
    if not section:
        return None
    try:
        return RobustConfig.from_dict(section, f"{where}.robust")
    except PrivacyConfigError as exc:
        raise ConfigError(str(exc)) from exc


def _check_privacy(config: TrainingConfig, where: str) -> None:
    """Cross-checks between the privacy sections and the rest (docs/privacy.md, Wiring)."""
    if config.secagg is not None:
        _check_secagg(config, config.secagg, where)
    if config.aggregator is not Aggregator.MEAN:
        if config.mode is not AggregationMode.SYNC:
            raise ConfigError(
                f"{where}.aggregator: {config.aggregator.value!r} needs the individual updates "
                "of a synchronous round; in async mode use 'mean' (and robust: for screening)"
            )
        if config.dp is not None:
            raise ConfigError(
                f"{where}.aggregator: {config.aggregator.value!r} does not combine with dp: the "
                "noise is calibrated to the sensitivity of a sum, not of a median"
            )
    if config.dp is not None:
        dp = config.dp.dp
        _check_dp_modes(config, where)
        try:
            if config.secagg is None:  # with secagg the device clips to secagg.clip_norm instead
                check_codec_compatible(dp, config.codec)
        except PrivacyConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from exc
        limit = config.max_update_norm
        fixed = dp.mode is DPMode.CENTRAL and dp.adaptive is None
        if fixed and dp.clip_norm is not None and limit is not None and limit > dp.clip_norm:
            raise ConfigError(
                f"{where}.max_update_norm: {limit:g} is above dp.clip_norm = {dp.clip_norm:g}; "
                "with DP the service enforces the clip norm, so leave max_update_norm unset "
                "or at most dp.clip_norm"
            )


def _check_dp_modes(config: TrainingConfig, where: str) -> None:
    """Local DP and adaptive clipping with the rest of the config: what would
    waste or break the guarantee (docs/privacy.md, "Refused configurations").
    Their combinations with secagg are refused in :func:`_check_secagg`."""
    assert config.dp is not None
    dp = config.dp.dp
    if dp.mode is DPMode.LOCAL and config.codec.get("clip_norm") is not None:
        raise ConfigError(
            f"{where}.codec.clip_norm: in local mode the device clips at dp.clip_norm *before* "
            "adding its noise; a codec clip stage would then clip the noised vector (norm ≈ "
            "√parameters × noise_multiplier × clip_norm): still private, but it throws away "
            "almost all of the signal. Remove codec.clip_norm"
        )
    limit = config.max_update_norm
    if dp.adaptive is not None and limit is not None and limit < dp.adaptive.max_clip_norm:
        raise ConfigError(
            f"{where}.max_update_norm: {limit:g} is below dp.adaptive.max_clip_norm = "
            f"{dp.adaptive.max_clip_norm:g}: once the adaptive bound grew past it, honest "
            "updates would be refused. Leave max_update_norm unset (the service enforces each "
            "version's bound) or lower dp.adaptive.max_clip_norm"
        )


def _secagg_section(data: Mapping[str, Any], where: str) -> SecAggConfig | None:
    value = data.get("secagg")
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}.secagg: expected a mapping with degree, threshold, clip_norm and "
            f"max_clients (optional min_clients, modulus_bits), or null to turn it off; "
            f"got {value!r}"
        )
    from privacy.secagg import SecAggConfig  # noqa: PLC0415 - loads `cryptography`: only when asked

    try:
        return SecAggConfig.from_dict(value, f"{where}.secagg")
    except PrivacyConfigError as exc:
        raise ConfigError(str(exc)) from exc


def _check_secagg(config: TrainingConfig, secagg: SecAggConfig, where: str) -> None:
    """Secure aggregation fits only synchronous rounds whose every input the
    server can sum blind (docs/privacy.md, "Secure aggregation in the service")."""
    from privacy.secagg import check_codec_for_secagg, check_mode  # noqa: PLC0415

    try:
        check_mode(config.mode.value)
        check_codec_for_secagg(config.codec)
    except PrivacyConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from exc
    selected = math.ceil(config.clients_per_round * config.over_selection)
    if secagg.max_clients < selected:
        raise ConfigError(
            f"{where}.secagg.max_clients: {secagg.max_clients} is below the {selected} devices a "
            f"round selects (clients_per_round {config.clients_per_round} × over_selection "
            f"{config.over_selection:g}); the fixed-point scale must hold every selected input"
        )
    if secagg.min_clients > config.clients_per_round:
        raise ConfigError(
            f"{where}.secagg.min_clients: {secagg.min_clients} is above clients_per_round "
            f"{config.clients_per_round}: no round could ever complete"
        )
    if config.aggregator is not Aggregator.MEAN:
        raise ConfigError(
            f"{where}.aggregator: {config.aggregator.value!r} needs the individual updates, "
            "which secure aggregation hides from the server; use 'mean'"
        )
    if config.robust is not None:
        raise ConfigError(
            f"{where}.robust: anomaly screening scores individual updates, which secure "
            "aggregation hides from the server; remove robust or turn secagg off"
        )
    if config.max_update_norm is not None:
        raise ConfigError(
            f"{where}.max_update_norm: the server cannot check the norm of a masked update; "
            "under secure aggregation the bound is secagg.clip_norm, applied on the device"
        )
    dp = config.dp.dp if config.dp is not None else None
    if dp is not None:
        if dp.mode is DPMode.LOCAL or dp.adaptive is not None:
            raise ConfigError(
                f"{where}.dp: with secure aggregation only central DP with a fixed clip norm "
                "is wired (local noise and adaptive clipping need device-side hooks the "
                "secure aggregation path does not have)"
            )
        if dp.clip_norm is not None and secagg.clip_norm > dp.clip_norm * (1 + 1e-9):
            raise ConfigError(
                f"{where}.secagg.clip_norm: {secagg.clip_norm:g} is above dp.clip_norm = "
                f"{dp.clip_norm:g}; devices clip to secagg.clip_norm, which bounds the "
                "sensitivity of the noised sum, so it must be at most dp.clip_norm"
            )


# --- the process -----------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """Per-device token bucket on the injected clock."""

    rate_per_s: float = 2.0
    burst: int = 20

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> RateLimit:
        _no_unknown(data, cls, where)
        return cls(
            rate_per_s=_float(data, "rate_per_s", where, 2.0, strict=True),
            burst=_int(data, "burst", where, 20, minimum=1),
        )


@dataclass(frozen=True)
class ConnectionLimits:
    """Defences against slow and piled-up connections (docs/service.md).

    A connection must send a complete request head within ``header_timeout_s``
    of opening (or of its first byte after a response), and a body at least
    ``min_body_rate_bps`` on average after ``body_timeout_s``; an idle
    keep-alive connection closes after ``keepalive_timeout_s``. At most
    ``max_connections`` are open at once (0: derived from the process's
    open-file limit), at most ``max_connections_per_peer`` from one address
    (0: no per-address cap — set it so behind a proxy, which is one address)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate_bps: int = 16 << 10
    keepalive_timeout_s: float = 75.0
    max_connections: int = 0
    max_connections_per_peer: int = 256

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ConnectionLimits:
        _no_unknown(data, cls, where)
        return cls(
            header_timeout_s=_float(data, "header_timeout_s", where, 10.0, strict=True),
            body_timeout_s=_float(data, "body_timeout_s", where, 30.0, strict=True),
            min_body_rate_bps=_int(data, "min_body_rate_bps", where, 16 << 10, minimum=1),
            keepalive_timeout_s=_float(data, "keepalive_timeout_s", where, 75.0, strict=True),
            max_connections=_int(data, "max_connections", where, 0, minimum=0),
            max_connections_per_peer=_int(data, "max_connections_per_peer", where, 256, minimum=0),
        )

    def body_deadline_s(self, size: int) -> float:
        """Seconds allowed to read a body of ``size`` bytes (or up to a cap)."""
        return self.body_timeout_s + size / self.min_body_rate_bps


@dataclass(frozen=True)
class ServiceConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    operator_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_json: bool = False
    port_file: Path | None = None  # write the bound port here (port 0 in tests)
    # fsync the update log before acknowledging. Off only for experiments: with it
    # off an acknowledged update can be lost by a power cut (not by a process crash).
    fsync: bool = True
    log_segment_bytes: int = 64 << 20
    max_model_bytes: int = 256 << 20  # push: model.tflite + manifest
    max_eval_bytes: int = 64 << 20
    max_json_bytes: int = 64 << 10
    frame_overhead_bytes: int = 64 << 10  # allowed above the dense float32 size of an update
    rate_limit: RateLimit = field(default_factory=RateLimit)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    training: TrainingConfig = field(default_factory=TrainingConfig)  # default for new models

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "config") -> ServiceConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping at the top level")
        _no_unknown(data, cls, where)
        if "data_dir" not in data or not isinstance(data["data_dir"], (str, Path)):
            raise ConfigError(f"{where}.data_dir: expected a directory path")

        def path(key: str) -> Path | None:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, (str, Path)):
                raise ConfigError(f"{where}.{key}: expected a path, got {value!r}")
            return Path(value)

        host = data.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"{where}.host: expected a host name or address")
        port = data.get("port", 8080)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ConfigError(f"{where}.port: expected an integer 0–65535, got {port!r}")
        token = data.get("operator_token")
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ConfigError(
                f"{where}.operator_token (or FEDGE_OPERATOR_TOKEN): expected a string of ≥ 16 "
                "characters; generate one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
            )
        config = cls(
            data_dir=Path(data["data_dir"]),
            host=host,
            port=port,
            operator_token=token,
            tls_cert=path("tls_cert"),
            tls_key=path("tls_key"),
            log_json=_bool(data, "log_json", where, False),
            port_file=path("port_file"),
            fsync=_bool(data, "fsync", where, True),
            log_segment_bytes=_int(data, "log_segment_bytes", where, 64 << 20, minimum=1 << 16),
            max_model_bytes=_int(data, "max_model_bytes", where, 256 << 20, minimum=1024),
            max_eval_bytes=_int(data, "max_eval_bytes", where, 64 << 20, minimum=1024),
            max_json_bytes=_int(data, "max_json_bytes", where, 64 << 10, minimum=1024),
            frame_overhead_bytes=_int(data, "frame_overhead_bytes", where, 64 << 10, minimum=0),
            rate_limit=RateLimit.from_dict(
                _section(data, "rate_limit", where), f"{where}.rate_limit"
            ),
            limits=ConnectionLimits.from_dict(_section(data, "limits", where), f"{where}.limits"),
            training=TrainingConfig.from_dict(
                _section(data, "training", where), f"{where}.training"
            ),
        )
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ConfigError(f"{where}.tls_cert/tls_key: give both or neither")
        return config

    def with_overrides(self, **changes: Any) -> ServiceConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(
    path: Path | None, *, data_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Read ``server.yaml`` (optional) and apply the data directory and the
    ``FEDGE_OPERATOR_TOKEN`` environment variable on top of it."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    if data_dir is not None:
        data["data_dir"] = str(data_dir)
    if environ.get(OPERATOR_TOKEN_ENV):
        data["operator_token"] = environ[OPERATOR_TOKEN_ENV]
    try:
        return ServiceConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
