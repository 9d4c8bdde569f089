"""Over HTTPS the session cookie is also ``Secure``: a real serve process
with a self-signed certificate, logged into through its login form."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from tests.aggregation_service.conftest import OPERATOR
from tests.aggregation_service.realserver import start_server, stop_server, write_config
from tests.aggregation_service.test_process import self_signed


@pytest.mark.slow
async def test_session_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = write_config(tmp_path / "server.yaml", tmp_path / "data")
    server = start_server(
        tmp_path / "data",
        config,
        tmp_path,
        scheme="https",
        extra_args=("--tls-cert", str(cert), "--tls-key", str(key)),
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for a bare IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.post(
                f"{server.url}/login",
                data={"token": OPERATOR},
                ssl=context,
                allow_redirects=False,
            ) as r:
                assert r.status == 303
                flags = {f.strip() for f in r.headers["Set-Cookie"].split(";")}
            assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= flags
            async with session.get(f"{server.url}/dashboard/api/state", ssl=context) as r:
                assert r.status == 200 and (await r.json())["health"]["status"] == "ok"
    finally:
        assert stop_server(server) == 0
