"""fedge's model_export package."""
