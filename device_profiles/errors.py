"""The device_profiles exception tree (drawn in the package docstring)."""

from __future__ import annotations

from fedge.errors import FedgeError


class SimulationError(FedgeError):
    """The simulator refused its input or could not run."""


class ProfileError(SimulationError, ValueError):
    """A profile or fleet file is malformed; the message names file and key."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}")


class FleetError(SimulationError, ValueError):
    """The fleet is well-formed but impossible (shapes, eligibility)."""


class DatasetError(SimulationError, ValueError):
    """The dataset cannot be loaded or partitioned as asked."""
