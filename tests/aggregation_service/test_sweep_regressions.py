"""Request shapes an adversarial sweep answered with 500: each is a client's
mistake (or probe) and must get a 4xx JSON error with a stable code."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.aggregation_service.conftest import Env, EnvFactory

BIG = 9223372036854775808  # 2**63: one past SQLite's INTEGER range


async def _error(r: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "detail"}, body
    return r.status, body["error"]["code"]


def _multipart(head: bytes, boundary: bytes = b"XyZ") -> bytes:
    return (
        b"--" + boundary + b"\r\n" + head + b"\r\n\r\n{}\r\n--" + boundary + b"--\r\n"
    )


async def _push_raw(env: Env, body: bytes, boundary: str = "XyZ") -> aiohttp.ClientResponse:
    return await env.client.post(
        "/v1/models/m2/versions",
        data=body,
        headers={**env.op, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


async def test_push_part_header_with_a_control_byte(make_env: EnvFactory) -> None:
    env = await make_env()
    body = _multipart(b'Content-Disposition: form-data; name="\x0e"')
    assert await _error(await _push_raw(env, body)) == (400, "bad_multipart")


async def test_push_part_header_name_with_a_control_byte(make_env: EnvFactory) -> None:
    env = await make_env()
    body = _multipart(b'Content-Disposition: form-data; name="manifest"\r\nX-\x0e: 1')
    assert await _error(await _push_raw(env, body)) == (400, "bad_multipart")


async def test_push_with_a_huge_preamble(make_env: EnvFactory) -> None:
    env = await make_env()
    body = b"a" * (600 * 1024) + b"\r\n" + _multipart(b'Content-Disposition: form-data; name="x"')
    assert await _error(await _push_raw(env, body)) == (400, "bad_multipart")


@pytest.mark.parametrize("action", ["promote", "rollback"])
async def test_version_beyond_int64(make_env: EnvFactory, action: str) -> None:
    env = await make_env()
    r = await env.client.post(f"/v1/models/m/{action}", json={"version": BIG}, headers=env.op)
    assert await _error(r) == (404, "unknown_version")
    r = await env.client.post(f"/v1/models/m/{action}", json={"version": -BIG}, headers=env.op)
    assert await _error(r) == (404, "unknown_version")


async def test_version_path_beyond_int64(make_env: EnvFactory) -> None:
    env = await make_env()
    r = await env.client.get("/v1/models/m/versions/99999999999999999999", headers=env.op)
    assert (await _error(r))[0] == 400


@pytest.mark.parametrize(
    "token", ["\ud800", "et-\udcff", "\x00", "é" * 40, "x" * 5000]
)
async def test_enroll_with_unencodable_or_odd_tokens(make_env: EnvFactory, token: str) -> None:
    env = await make_env()
    # json.dumps escapes the lone surrogate as \ud800, the way a hostile client sends it.
    r = await env.client.post(
        "/v1/devices/enroll",
        data=aiohttp.payload.BytesPayload(
            ('{"enrollment_token": ' + json.dumps(token) + "}").encode(),
            content_type="application/json",
        ),
    )
    assert await _error(r) == (401, "bad_enrollment_token")


async def _raw(env: Env, request: bytes) -> tuple[int, bytes]:
    """Send bytes no HTTP client library would (invalid UTF-8 in a header)."""
    server = env.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _request(method: bytes, path: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: x", b"Connection: close"]
    lines += [*headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.parametrize("raw", [b"Bearer \xff\xfe", b"Bearer dt-\xed\xa0\x80"])
async def test_bearer_tokens_that_are_not_utf8(make_env: EnvFactory, raw: bytes) -> None:
    env = await make_env()
    auth = b"Authorization: " + raw
    status, _ = await _raw(env, _request(b"GET", b"/v1/models", [auth]))
    assert status == 401
    status, _ = await _raw(
        env,
        _request(
            b"POST", b"/v1/devices/checkin", [auth, b"Content-Type: application/json"], b"{}"
        ),
    )
    assert status == 401


async def test_upload_headers_not_utf8(make_env: EnvFactory) -> None:
    env = await make_env()
    (device,) = await env.enroll(1)
    plan = await env.plan(device)
    base = [
        b"Authorization: Bearer " + device.token.encode(),
        b"Content-Type: application/octet-stream",
        b"Idempotency-Key: key-0123456789",
        b"Fedge-Model: m",
        b"Fedge-Base-Version: %d" % plan["version"],
        b"Fedge-Examples: 3",
    ]
    for extra in [b"Fedge-Assignment: as-\xff\xfe", b"Fedge-Assignment: \xed\xa0\x80"]:
        status, body = await _raw(
            env, _request(b"POST", b"/v1/devices/updates", [*base, extra], b"\x00" * 16)
        )
        assert status == 400 and b"bad_header" in body, body
    status, body = await _raw(
        env,
        _request(
            b"POST",
            b"/v1/devices/updates",
            [*base[:3], b"Fedge-Model: m\xff", *base[4:], b"Fedge-Assignment: x"],
            b"\x00" * 16,
        ),
    )
    assert status == 404, body


@pytest.mark.parametrize(
    "name",
    ["digıts", "٥٦", "...", ".hidden", "-x", "CON", "con.v2", "lpt1", "a" * 65, "a b", "a/b"],
)
async def test_push_refuses_odd_model_names(make_env: EnvFactory, name: str) -> None:
    env = await make_env()
    form = aiohttp.FormData()
    form.add_field("manifest", b"{}", filename="manifest.json")
    form.add_field("model", b"x", filename="model.tflite")
    from urllib.parse import quote

    r = await env.client.post(
        f"/v1/models/{quote(name, safe='')}/versions", data=form, headers=env.op
    )
    assert r.status in (400, 404), await r.text()
    if r.status == 400:
        assert (await _error(r)) == (400, "bad_model_name")


@pytest.mark.parametrize("name", ["digits", "m-2", "a.b_c", "A1", "console", "a" * 64])
def test_model_names_that_are_fine(name: str) -> None:
    from aggregation_service.service import model_name_problem

    assert model_name_problem(name) is None


async def test_method_not_allowed_says_which_are(make_env: EnvFactory) -> None:
    env = await make_env()
    r = await env.client.delete("/v1/models", headers=env.op)
    assert await _error(r) == (405, "method_not_allowed")
    assert set(r.headers["Allow"].replace(" ", "").split(",")) == {"GET"}
    r = await env.client.put("/v1/devices/checkin")
    assert r.status == 405 and r.headers["Allow"] == "POST"
