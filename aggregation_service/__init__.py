"""fedge's aggregation_service package."""
