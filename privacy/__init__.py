"""fedge's privacy package."""
