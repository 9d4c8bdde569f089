"""fedge's device_profiles package."""
