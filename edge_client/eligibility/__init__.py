"""When may this device train? Providers report its state; the policy decides.

See :mod:`edge_client.eligibility.state` for the provider seam and
:mod:`edge_client.eligibility.policy` for the decision and its reason codes.
"""

from __future__ import annotations

from edge_client.config import EligibilityConfig
from edge_client.eligibility.external import CommandProvider, TermuxBatteryProvider
from edge_client.eligibility.linux import (
    NetworkProvider,
    ProcLoadProvider,
    SysfsPowerProvider,
    ThermalProvider,
)
from edge_client.eligibility.policy import Eligibility, Policy
from edge_client.eligibility.state import (
    ALWAYS_ELIGIBLE,
    CachedProvider,
    CompositeProvider,
    DeviceState,
    SimulatedStateProvider,
    StateProvider,
    StaticStateProvider,
)
from fedge.clock import Clock

__all__ = [
    "ALWAYS_ELIGIBLE",
    "CachedProvider",
    "CommandProvider",
    "CompositeProvider",
    "DeviceState",
    "Eligibility",
    "NetworkProvider",
    "Policy",
    "ProcLoadProvider",
    "SimulatedStateProvider",
    "StateProvider",
    "StaticStateProvider",
    "SysfsPowerProvider",
    "TermuxBatteryProvider",
    "ThermalProvider",
    "build_provider",
]


def build_provider(config: EligibilityConfig, clock: Clock) -> CompositeProvider:
    """The providers named in the config, composed in order. Subprocess-backed
    providers are cached for ``max_age_s`` (they are re-read between batches)."""
    root = config.sysfs_root
    providers: list[StateProvider] = []
    for name in config.providers:
        provider: StateProvider
        if name == "sysfs":
            provider = SysfsPowerProvider(root)
        elif name == "load":
            provider = ProcLoadProvider(root)
        elif name == "thermal":
            provider = ThermalProvider(root)
        elif name == "network":
            provider = NetworkProvider(config.metered_interfaces, root)
        elif name == "termux":
            provider = TermuxBatteryProvider(timeout_s=config.command_timeout_s)
        else:
            provider = CommandProvider(config.command, config.command_timeout_s)
        if config.max_age_s > 0 and name in ("termux", "command"):
            provider = CachedProvider(provider, clock, config.max_age_s)
        providers.append(provider)
    return CompositeProvider(providers)
