"""The service fixtures (a real app on aiohttp's test server with a
ManualClock, a registered model, enrolled devices) reused for the dashboard."""

from tests.aggregation_service.conftest import make_env

__all__ = ["make_env"]
