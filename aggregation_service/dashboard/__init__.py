"""The operator dashboard: ``/`` in a browser.

A login form trades the operator token for a session cookie; the page then
polls ``GET /dashboard/api/state`` every 2 s and draws models, lineage,
evaluation charts, live counters, devices and privacy spend, with controls to
promote, roll back, pause and resume. See docs/dashboard.md.

``ROUTES`` joins the app's route table (so ``/openapi.json`` describes them
like every other route); :func:`setup` gives them their state.
"""

from __future__ import annotations

from aiohttp import web

from aggregation_service.dashboard import handlers
from aggregation_service.dashboard.handlers import DASHBOARD, Dashboard, load_dashboard
from aggregation_service.dashboard.sessions import Session, Sessions
from aggregation_service.service import AggregationService

__all__ = ["DASHBOARD", "ROUTES", "Dashboard", "Session", "Sessions", "setup"]

ROUTES: list[tuple[str, str, handlers.Handler]] = [
    ("GET", "/", handlers.index),
    ("POST", "/login", handlers.login),
    ("POST", "/logout", handlers.logout),
    ("GET", "/dashboard/static/{name}", handlers.static_file),
    ("GET", "/dashboard/api/state", handlers.state),
    ("POST", "/dashboard/api/models/{model}/promote", handlers.promote),
    ("POST", "/dashboard/api/models/{model}/rollback", handlers.rollback),
    ("POST", "/dashboard/api/models/{model}/pause", handlers.pause),
    ("POST", "/dashboard/api/models/{model}/resume", handlers.resume),
    ("POST", "/dashboard/api/devices/{device}/revoke", handlers.revoke_device),
]


def setup(app: web.Application, service: AggregationService) -> None:
    """Give the dashboard's routes (added from ``ROUTES`` by create_app) their
    sessions, pages and static files."""
    app[DASHBOARD] = load_dashboard(service)
