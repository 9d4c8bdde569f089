"""The dashboard's HTTP surface on aiohttp's test server: login and the
session cookie, CSRF and origin checks on the controls, the state document
against /metrics and the API, bad input, session expiry and logout."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from aggregation_service.dashboard import sessions
from aggregation_service.openapi import openapi_document
from tests.aggregation_service.conftest import OPERATOR, SHAPES, Env, EnvFactory, frame

CSP = "default-src 'self'"


def _delta(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


async def _publish_one(env: Env, n: int = 3) -> None:
    for d in await env.enroll(n):
        plan = await env.plan(d)
        status, body = await env.upload(d, plan, frame(_delta(0.1)))
        assert status == 202, body
    await env.service.wait_idle()


async def _login(client: TestClient) -> str:
    """Log in; returns the page's CSRF token."""
    r = await client.post("/login", data={"token": OPERATOR}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    page = await (await client.get("/")).text()
    match = re.search(r'<meta name="fedge-csrf" content="([^"]+)">', page)
    assert match, page[:400]
    return match.group(1)


def _error(body: dict[str, Any]) -> str:
    return str(body["error"]["code"])


async def test_login_page_wrong_token_and_cookie_flags(make_env: EnvFactory) -> None:
    env = await make_env()
    c = env.client
    r = await c.get("/")
    page = await r.text()
    assert r.status == 200 and 'action="/login"' in page and "fedge-csrf" not in page
    assert r.headers["Content-Security-Policy"].startswith(CSP)
    assert "<script>" not in page and "style=" not in page  # nothing inline for the CSP to allow

    r = await c.post("/login", data={"token": "wrong-token-0123456789"}, allow_redirects=False)
    assert r.status == 401 and "Wrong operator token." in await r.text()
    assert "Set-Cookie" not in r.headers and not c.session.cookie_jar.filter_cookies(
        c.make_url("/")
    )
    r = await c.post("/login", data={"token": ""}, allow_redirects=False)
    assert r.status == 400 and "Enter the operator token." in await r.text()
    assert (await c.get("/dashboard/api/state")).status == 401

    r = await c.post("/login", data={"token": OPERATOR}, allow_redirects=False)
    assert r.status == 303
    cookie = r.headers["Set-Cookie"]
    flags = [f.strip() for f in cookie.split(";")]
    name, value = flags[0].split("=", 1)
    assert name == "fedge_session" and OPERATOR not in cookie and len(value) >= 40
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(flags)
    assert "Secure" not in flags  # plain HTTP here; test_browser checks Secure over TLS

    # Logging in again issues a new id and ends the old session.
    r = await c.post("/login", data={"token": OPERATOR}, allow_redirects=False)
    renewed = r.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert renewed != value
    assert (await c.get("/dashboard/api/state")).status == 200
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as bare:
        headers = {"Cookie": f"fedge_session={value}"}
        async with bare.get(c.make_url("/dashboard/api/state"), headers=headers) as old:
            assert old.status == 401
        headers = {"Cookie": f"fedge_session={renewed}"}
        async with bare.get(c.make_url("/dashboard/api/state"), headers=headers) as new:
            assert new.status == 200

    metrics = await (await c.get("/metrics")).text()
    assert 'fedge_dashboard_logins_total{result="wrong_token"} 1' in metrics
    assert 'fedge_dashboard_logins_total{result="ok"} 2' in metrics
    page = await (await c.get("/")).text()
    assert 'name="fedge-csrf"' in page and "/dashboard/static/dashboard.js" in page


async def test_state_without_a_session_or_with_a_forged_cookie_is_401(
    make_env: EnvFactory,
) -> None:
    env = await make_env()
    r = await env.client.get("/dashboard/api/state")
    assert r.status == 401 and _error(await r.json()) == "unauthorized"
    r = await env.client.get(
        "/dashboard/api/state", headers={"Cookie": "fedge_session=" + "A" * 43}
    )
    assert r.status == 401
    # The operator token is not a dashboard credential by itself.
    r = await env.client.get(
        "/dashboard/api/state", headers={"Authorization": f"Bearer {OPERATOR}"}
    )
    assert r.status == 401
    r = await env.client.post("/dashboard/api/models/m/pause", headers={"X-Fedge-CSRF": "x"})
    assert r.status == 401
    assert not env.service.runtime("m").paused


async def test_state_reports_the_numbers_of_metrics_and_the_api(make_env: EnvFactory) -> None:
    env = await make_env()
    await _publish_one(env)
    d = (await env.enroll(1))[0]
    plan = await env.plan(d)
    status, _ = await env.upload(d, plan, b"garbage")
    assert status == 422
    c = env.client
    await _login(c)
    state = await (await c.get("/dashboard/api/state")).json()

    api = await (await c.get("/v1/models", headers=env.op)).json()
    assert state["models"] == api["models"]
    model = state["models"][0]
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["versions"][1]["base_version"] == 1 and model["versions"][1]["num_updates"] == 3

    counters = state["counters"]
    metrics = await (await c.get("/metrics")).text()
    assert 'fedge_updates_accepted_total{model="m"} 3' in metrics
    assert counters["accepted"] == {"m": 3.0}
    assert 'fedge_updates_rejected_total{reason="bad_update"} 1' in metrics
    assert counters["rejected"] == {"bad_update": 1.0}
    assert counters["published"] == {"m": 1.0}
    assert counters["buffer_fill"] == {"m": 0.0}
    assert counters["staleness"]["total"] == 3 and counters["staleness"]["counts"][0] == 3
    assert counters["staleness"]["labels"][:2] == ["0", "1"]
    routes = counters["bytes_in"]["by_route"]
    assert routes["/v1/devices/updates"] > 0
    sent = float(
        re.search(r'fedge_bytes_in_total\{route="/v1/devices/updates"\} (\S+)', metrics)[1]
    )
    assert routes["/v1/devices/updates"] == sent
    assert counters["checkins"]["train"] >= 4
    assert counters["dp_epsilon"] == {}  # DP is off
    # Four enrolled devices, all with the test profile "t".
    assert state["devices"]["total"] == 4
    assert state["devices"]["by_profile"] == {"t": 4}
    assert sum(state["devices"]["by_state"].values()) == 4
    assert state["health"]["status"] == "ok"


async def test_controls_need_the_csrf_token_and_a_same_origin(make_env: EnvFactory) -> None:
    env = await make_env()
    await _publish_one(env)
    c = env.client
    csrf = await _login(c)
    url = "/dashboard/api/models/m/promote"
    r = await c.post(url, json={"version": 2})
    assert r.status == 403 and _error(await r.json()) == "bad_csrf"
    r = await c.post(url, json={"version": 2}, headers={"X-Fedge-CSRF": csrf[:-1] + "x"})
    assert r.status == 403 and _error(await r.json()) == "bad_csrf"
    r = await c.post(url, json={"version": 2}, headers={"X-Fedge-CSRF": "é" * 8})
    assert r.status == 403
    r = await c.post(
        url,
        json={"version": 2},
        headers={"X-Fedge-CSRF": csrf, "Origin": "https://evil.example"},
    )
    assert r.status == 403 and _error(await r.json()) == "bad_origin"
    info = await (await c.get("/v1/models/m", headers=env.op)).json()
    assert info["live_version"] != 2  # nothing happened

    ok = {"X-Fedge-CSRF": csrf, "Origin": str(c.make_url("")).rstrip("/")}
    r = await c.post(url, json={"version": 2}, headers=ok)
    assert r.status == 200 and (await r.json())["live_version"] == 2
    info = await (await c.get("/v1/models/m", headers=env.op)).json()
    assert info["live_version"] == 2

    r = await c.post("/dashboard/api/models/m/pause", headers=ok)
    assert r.status == 200 and env.service.runtime("m").paused
    r = await c.post("/dashboard/api/models/m/resume", headers=ok)
    assert r.status == 200 and not env.service.runtime("m").paused
    r = await c.post("/dashboard/api/models/m/rollback", json={"version": 1}, headers=ok)
    assert await r.json() == {"model": "m", "live_version": 1, "training_version": 1}
    r = await c.post("/dashboard/api/models/m/rollback", headers=ok)
    assert r.status == 409 and _error(await r.json()) == "nothing_to_roll_back"


JSON = "application/json"


@pytest.mark.parametrize(
    ("path", "body", "content_type", "expected"),
    [
        ("promote", b"{not json", JSON, (400, "bad_json")),
        ("promote", b"[2]", JSON, (400, "bad_json")),
        ("promote", b"[" * 60_000, JSON, (400, "bad_json")),
        ("promote", b"{}", JSON, (400, "bad_field")),
        ("promote", b'{"version": "2"}', JSON, (400, "bad_field")),
        ("promote", b'{"version": true}', JSON, (400, "bad_field")),
        ("promote", b'{"version": 0}', JSON, (400, "bad_field")),
        ("promote", b"version=2", "text/plain", (415, "unsupported_media_type")),
        ("promote", b'{"version": 99}', JSON, (404, "unknown_version")),
        ("rollback", b"{bad", JSON, (400, "bad_json")),
        ("rollback", b'{"version": 99}', JSON, (404, "unknown_version")),
        ("promote", b'{"version": 1, "pad": "' + b"x" * 70_000 + b'"}', JSON, (413, "too_large")),
    ],
)
async def test_bad_control_input_is_a_clear_4xx(
    make_env: EnvFactory, path: str, body: bytes, content_type: str, expected: tuple[int, str]
) -> None:
    env = await make_env()
    csrf = await _login(env.client)
    r = await env.client.post(
        f"/dashboard/api/models/m/{path}",
        data=body,
        headers={"X-Fedge-CSRF": csrf, "Content-Type": content_type},
    )
    answer = await r.json()
    assert (r.status, _error(answer)) == expected, answer
    assert answer["error"]["detail"]
    assert env.service.runtime("m").training.version == 1


async def test_unknown_model_is_404(make_env: EnvFactory) -> None:
    env = await make_env()
    csrf = await _login(env.client)
    for action in ("pause", "resume", "rollback"):
        r = await env.client.post(
            f"/dashboard/api/models/nope/{action}", headers={"X-Fedge-CSRF": csrf}
        )
        assert r.status == 404 and _error(await r.json()) == "unknown_model", action
    r = await env.client.post(
        "/dashboard/api/models/nope/promote", json={"version": 1}, headers={"X-Fedge-CSRF": csrf}
    )
    assert r.status == 404 and _error(await r.json()) == "unknown_model"


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"token": "x"}', "application/json", 415),
        (b"token=" + b"a" * 5000, "application/x-www-form-urlencoded", 413),
        (b"token=%ff%fe", "application/x-www-form-urlencoded", 400),
        (b"token=\xff\xfe", "application/x-www-form-urlencoded", 400),
        (b"a=1&b=2&c=3&d=4&e=5&token=x", "application/x-www-form-urlencoded", 400),
        (b"nothing=here", "application/x-www-form-urlencoded", 400),
    ],
)
async def test_bad_login_bodies(
    make_env: EnvFactory, body: bytes, content_type: str, status: int
) -> None:
    env = await make_env(register=False)
    r = await env.client.post(
        "/login", data=body, headers={"Content-Type": content_type}, allow_redirects=False
    )
    assert r.status == status, await r.text()
    assert "Set-Cookie" not in r.headers


async def test_undecodable_cookie_bytes_are_no_session(make_env: EnvFactory) -> None:
    """A raw Cookie header with invalid UTF-8: 401 on data, the form on /, and a
    login that replaces it works (no 500 anywhere)."""
    import asyncio

    env = await make_env(register=False)
    host, port = env.client.host, env.client.port

    async def raw(request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer

    cookie = b"Cookie: fedge_session=\xff\xfe\xc3\r\n"
    end = b"Host: x\r\nConnection: close\r\n"
    state = await raw(b"GET /dashboard/api/state HTTP/1.1\r\n" + cookie + end + b"\r\n")
    assert state.startswith(b"HTTP/1.1 401")
    page = await raw(b"GET / HTTP/1.1\r\n" + cookie + end + b"\r\n")
    assert page.startswith(b"HTTP/1.1 200") and b'action="/login"' in page
    body = f"token={OPERATOR}".encode()
    form = b"Content-Type: application/x-www-form-urlencoded\r\n"
    length = f"Content-Length: {len(body)}\r\n".encode()
    login = await raw(b"POST /login HTTP/1.1\r\n" + cookie + form + length + end + b"\r\n" + body)
    assert login.startswith(b"HTTP/1.1 303") and b"Set-Cookie: fedge_session=" in login


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://[::1", "x" * 300])
async def test_cross_origin_login_is_refused(make_env: EnvFactory, origin: str) -> None:
    env = await make_env(register=False)
    r = await env.client.post(
        "/login", data={"token": OPERATOR}, headers={"Origin": origin}, allow_redirects=False
    )
    assert r.status == 403 and "Set-Cookie" not in r.headers
    assert _error(await r.json()) == "bad_origin"


async def test_session_expires_when_idle_and_at_its_maximum_age(make_env: EnvFactory) -> None:
    env = await make_env()
    c = env.client
    await _login(c)
    env.clock.advance(sessions.IDLE_S - 60)
    assert (await c.get("/dashboard/api/state")).status == 200  # pushes the idle deadline back
    env.clock.advance(sessions.IDLE_S - 60)
    assert (await c.get("/dashboard/api/state")).status == 200
    env.clock.advance(sessions.IDLE_S + 1)
    r = await c.get("/dashboard/api/state")
    assert r.status == 401 and _error(await r.json()) == "unauthorized"
    assert "fedge-csrf" not in await (await c.get("/")).text()  # the login form again

    # However busy, a session ends at its maximum age.
    await _login(c)
    lived = 0.0
    while (await c.get("/dashboard/api/state")).status == 200:
        assert lived <= sessions.MAX_AGE_S, "the session outlived its maximum age"
        env.clock.advance(sessions.IDLE_S / 2)
        lived += sessions.IDLE_S / 2
    assert lived > sessions.MAX_AGE_S - sessions.IDLE_S


async def test_logout_ends_the_session_and_clears_the_cookie(make_env: EnvFactory) -> None:
    env = await make_env()
    c = env.client
    csrf = await _login(c)
    r = await c.post("/logout")
    assert r.status == 403  # the CSRF token is needed to log out too
    cookie_before = c.session.cookie_jar.filter_cookies(c.make_url("/"))["fedge_session"].value
    r = await c.post("/logout", headers={"X-Fedge-CSRF": csrf})
    assert r.status == 200 and await r.json() == {"status": "logged_out"}
    cleared = r.headers["Set-Cookie"]
    assert cleared.startswith('fedge_session=""') and "Max-Age=0" in cleared
    assert (await c.get("/dashboard/api/state")).status == 401
    # The old id is dead server-side, not only forgotten by this browser.
    r = await c.get("/dashboard/api/state", headers={"Cookie": f"fedge_session={cookie_before}"})
    assert r.status == 401
    assert (await c.post("/logout", headers={"X-Fedge-CSRF": csrf})).status == 401


async def test_static_files(make_env: EnvFactory) -> None:
    env = await make_env(register=False)
    c = env.client
    for name, kind in (
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        r = await c.get(f"/dashboard/static/{name}")
        assert r.status == 200 and r.content_type == kind
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    for bad in ("nope.js", "index.html", "..%2Fhandlers.py", "%2e%2e%2fsessions.py"):
        r = await c.get(f"/dashboard/static/{bad}")
        assert r.status == 404, bad
        assert _error(await r.json()) == "not_found"


def test_openapi_describes_the_dashboard() -> None:
    paths = openapi_document()["paths"]
    for path in ("/", "/login", "/logout", "/dashboard/api/state"):
        assert path in paths
    promote = paths["/dashboard/api/models/{model}/promote"]["post"]
    assert {"401", "403", "404"} <= set(promote["responses"])
    assert any(p["name"] == "X-Fedge-CSRF" for p in promote["parameters"])


async def test_state_carries_privacy_spend_per_version_with_dp_on(make_env: EnvFactory) -> None:
    codec = {"density": 1.0, "bits": 8, "clip_norm": 1.0}
    env = await make_env(dp={"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5}, codec=codec)
    for _ in range(2):  # two versions: ε grows along the lineage
        for d in await env.enroll(3):
            plan = await env.plan(d)
            status, body = await env.upload(d, plan, frame(_delta(0.1), codec))
            assert status == 202, body
        await env.service.wait_idle()
    await _login(env.client)
    state = await (await env.client.get("/dashboard/api/state")).json()
    model = state["models"][0]
    v2, v3 = model["versions"][1:]
    assert v2["privacy"]["steps"] == 1 and v3["privacy"]["steps"] == 2
    assert 0 < v2["privacy"]["epsilon"] < v3["privacy"]["epsilon"]
    assert model["privacy"]["epsilon"] == v3["privacy"]["epsilon"]  # the training lineage
    assert state["counters"]["dp_epsilon"]["m"] == pytest.approx(v3["privacy"]["epsilon"])
    metrics = await (await env.client.get("/metrics")).text()
    assert f'fedge_dp_epsilon{{model="m"}} {v3["privacy"]["epsilon"]!r}' in metrics


async def test_infinite_epsilon_is_null_in_strict_json(make_env: EnvFactory) -> None:
    import json

    codec = {"density": 1.0, "bits": 8, "clip_norm": 1.0}
    env = await make_env(dp={"noise_multiplier": 0.0, "clip_norm": 1.0, "delta": 1e-5}, codec=codec)
    for d in await env.enroll(3):
        plan = await env.plan(d)
        status, body = await env.upload(d, plan, frame(_delta(0.1), codec))
        assert status == 202, body
    await env.service.wait_idle()
    assert 'fedge_dp_epsilon{model="m"} +Inf' in await (await env.client.get("/metrics")).text()
    await _login(env.client)
    text = await (await env.client.get("/dashboard/api/state")).text()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the state document")

    state = json.loads(text, parse_constant=refuse)  # what a browser's JSON.parse accepts
    assert state["counters"]["dp_epsilon"] == {"m": None}
    assert state["models"][0]["versions"][1]["privacy"]["epsilon"] is None


async def test_revoke_a_device_from_the_dashboard(make_env: EnvFactory) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    csrf = await _login(env.client)
    url = f"/dashboard/api/devices/{device.device_id}/revoke"
    r = await env.client.post(url)  # a session alone is not enough
    assert r.status == 403 and _error(await r.json()) == "bad_csrf"
    r = await env.client.post(url, headers={"X-Fedge-CSRF": csrf})
    assert r.status == 200 and (await r.json())["state"] == "revoked"
    r = await env.client.post(
        "/v1/devices/checkin", json={"model": "m", "eligible": True}, headers=device.auth
    )
    assert r.status == 401
    r = await env.client.post("/dashboard/api/devices/dev-x/revoke", headers={"X-Fedge-CSRF": csrf})
    assert r.status == 404 and _error(await r.json()) == "unknown_device"
