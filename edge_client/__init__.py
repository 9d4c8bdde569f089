"""fedge's edge_client package."""
