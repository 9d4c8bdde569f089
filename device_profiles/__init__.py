"""Device profiles and the fleet simulator.

YAML profiles of device classes (compute speed, memory, network, power,
availability, drop-out hazard, data size) and fleet files mixing them are
parsed once into frozen dataclasses (:mod:`device_profiles.profile`,
:mod:`device_profiles.fleet`). The simulator (:mod:`device_profiles.sim`)
runs the real ``edge_client`` agent logic against the real
``aggregation_service`` app on a virtual clock, training the exported TFLite
model for real. docs/simulation.md explains the design.

Exceptions::

    fedge.errors.FedgeError
    └── SimulationError                 anything the simulator refuses or cannot do
        ├── ProfileError (ValueError)   a bad profile or fleet YAML: names file and key
        ├── FleetError (ValueError)     an impossible fleet (shape mismatch, nobody eligible)
        └── DatasetError (ValueError)   a dataset that cannot be loaded or partitioned
"""

from device_profiles.errors import DatasetError, FleetError, ProfileError, SimulationError
from device_profiles.profile import DeviceProfile, builtin_profiles, load_profile

__all__ = [
    "DatasetError",
    "DeviceProfile",
    "FleetError",
    "ProfileError",
    "SimulationError",
    "builtin_profiles",
    "load_profile",
]
