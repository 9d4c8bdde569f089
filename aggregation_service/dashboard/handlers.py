"""HTTP side of the dashboard: login/logout, the pages, the state endpoint,
the operator controls, and the static files.

Authentication is a server-side session (see :mod:`.sessions`) behind an
``HttpOnly; SameSite=Strict`` cookie. Every state-changing call also needs the
session's CSRF token in ``X-Fedge-CSRF`` (the page reads it from a ``<meta>``
tag) and, when the browser sends one, an ``Origin`` naming this host.
SameSite=Strict already keeps the cookie off cross-site requests; the token
and the origin check make that explicit instead of trusting one browser rule.
"""

from __future__ import annotations

import html
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from aggregation_service.bodies import read_capped
from aggregation_service.dashboard.sessions import Session, Sessions
from aggregation_service.dashboard.state import build_state, to_json
from aggregation_service.errors import ApiError, bad_request
from aggregation_service.service import AggregationService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COOKIE = "fedge_session"
CSRF_HEADER = "X-Fedge-CSRF"
STATIC_DIR = Path(__file__).with_name("static")
_CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
_LOGIN_CAP = 4096  # a login form is one token field; anything larger is not one

# No inline script or style anywhere: the pages load their code from /dashboard/static.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on
    # the login form post, which the origin check must refuse.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Dashboard:
    service: AggregationService
    sessions: Sessions
    pages: dict[str, str]  # name → HTML template
    static: dict[str, tuple[bytes, str]]  # file name → (bytes, content type)


DASHBOARD = web.AppKey("dashboard", Dashboard)


def load_dashboard(service: AggregationService) -> Dashboard:
    """Read the pages and static files once: they are small and never change at run time."""
    pages = {p.stem: p.read_text(encoding="utf-8") for p in STATIC_DIR.glob("*.html")}
    static = {
        p.name: (p.read_bytes(), _CONTENT_TYPES[p.suffix])
        for p in sorted(STATIC_DIR.iterdir())
        if p.suffix in _CONTENT_TYPES
    }
    return Dashboard(service, Sessions(service.clock), pages, static)


# --- helpers -----------------------------------------------------------------------------


def _page(dash: Dashboard, name: str, status: int = 200, **values: str) -> web.Response:
    text = dash.pages[name]
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return web.Response(
        text=text, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=SECURITY_HEADERS)


def current_session(request: web.Request) -> Session | None:
    return request.app[DASHBOARD].sessions.get(request.cookies.get(COOKIE))


def _require_session(request: web.Request) -> Session:
    session = current_session(request)
    if session is None:
        raise ApiError(401, "unauthorized", "no valid dashboard session; log in at /")
    return session


def _check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser, or a same-origin GET-style request: the CSRF token decides
    try:
        netloc = urllib.parse.urlsplit(origin).netloc
    except ValueError:  # e.g. an unclosed IPv6 bracket
        netloc = None
    if netloc != request.host:
        raise ApiError(403, "bad_origin", f"cross-origin request from {origin!r} refused")


def _require_change(request: web.Request) -> Session:
    """A session, a same-origin request and the session's CSRF token."""
    session = _require_session(request)
    _check_origin(request)
    if not Sessions.csrf_matches(session, request.headers.get(CSRF_HEADER)):
        raise ApiError(
            403, "bad_csrf", f"missing or wrong {CSRF_HEADER} header; reload the dashboard"
        )
    return session


async def _json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object body ({} for an absent body where ``optional``)."""
    if optional and not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected application/json, got {request.content_type!r}",
        )
    raw = await read_capped(request, request.app[DASHBOARD].service.config.max_json_bytes)
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: a body of nothing but '[' nests deeper than the parser goes.
        raise bad_request("bad_json", f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise bad_request("bad_json", "body must be a JSON object")
    return data


def _version(data: dict[str, Any]) -> int | None:
    """The body's optional ``version``: an integer ≥ 1, or None when absent."""
    value = data.get("version")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request("bad_field", f"field 'version' must be an integer ≥ 1, got {value!r}")
    return value


# --- pages, login, logout ------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    session = current_session(request)
    if session is None:
        return _page(dash, "login", error="")
    return _page(dash, "index", csrf=session.csrf)


async def login(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    _check_origin(request)
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(
            415,
            "unsupported_media_type",
            "the login form posts application/x-www-form-urlencoded with a 'token' field",
        )
    raw = await read_capped(request, _LOGIN_CAP)
    try:
        form = urllib.parse.parse_qs(raw.decode("utf-8"), max_num_fields=4, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request("bad_form", f"the login form is not readable: {exc}") from exc
    token = (form.get("token") or [""])[0].strip()
    if not token:
        return _page(dash, "login", status=400, error="Enter the operator token.")
    if not dash.service.check_operator(token):  # constant-time comparison
        dash.service.metrics.dashboard_logins.inc("wrong_token")
        return _page(dash, "login", status=401, error="Wrong operator token.")
    dash.service.metrics.dashboard_logins.inc("ok")
    # A fresh id at every login (no session fixation); the one it replaces ends now.
    previous = request.cookies.get(COOKIE)
    if previous:
        dash.sessions.drop(previous)
    session_id, _ = dash.sessions.create()
    response = web.Response(status=303, headers={**SECURITY_HEADERS, "Location": "/"})
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.secure,
        max_age=int(dash.sessions.max_age_s),
    )
    return response


async def logout(request: web.Request) -> web.Response:
    _require_change(request)
    request.app[DASHBOARD].sessions.drop(request.cookies[COOKIE])
    response = _json({"status": "logged_out"})
    response.del_cookie(COOKIE, path="/")
    return response


# --- data and controls ---------------------------------------------------------------------


async def state(request: web.Request) -> web.Response:
    _require_session(request)
    document = await build_state(request.app[DASHBOARD].service)
    return web.Response(
        text=to_json(document), content_type="application/json", headers=SECURITY_HEADERS
    )


async def promote(request: web.Request) -> web.Response:
    _require_change(request)
    version = _version(await _json_object(request))
    if version is None:
        raise bad_request("bad_field", "missing field 'version'")
    service = request.app[DASHBOARD].service
    return _json(await service.promote(request.match_info["model"], version))


async def rollback(request: web.Request) -> web.Response:
    _require_change(request)
    version = _version(await _json_object(request, optional=True))
    service = request.app[DASHBOARD].service
    return _json(await service.rollback(request.match_info["model"], version))


async def pause(request: web.Request) -> web.Response:
    _require_change(request)
    service = request.app[DASHBOARD].service
    return _json(await service.set_paused(request.match_info["model"], True))


async def resume(request: web.Request) -> web.Response:
    _require_change(request)
    service = request.app[DASHBOARD].service
    return _json(await service.set_paused(request.match_info["model"], False))


async def revoke_device(request: web.Request) -> web.Response:
    _require_change(request)
    service = request.app[DASHBOARD].service
    return _json(await service.revoke_device(request.match_info["device"]))


async def static_file(request: web.Request) -> web.Response:
    found = request.app[DASHBOARD].static.get(request.match_info["name"])
    if found is None:
        raise ApiError(404, "not_found", "no such dashboard file")
    body, content_type = found
    return web.Response(
        body=body,
        content_type=content_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
