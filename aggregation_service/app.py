"""The aiohttp application: routes, authentication, limits, errors.

Handlers only parse and check HTTP input and call
:class:`~aggregation_service.service.AggregationService`; every client mistake
becomes an :class:`ApiError` (4xx, stable code) before anything is written.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from aggregation_service import dashboard
from aggregation_service.bodies import LIMITS, read_capped
from aggregation_service.config import ServiceConfig
from aggregation_service.connections import GUARD
from aggregation_service.errors import ApiError, StorageError, bad_request, not_found
from aggregation_service.openapi import openapi_document
from aggregation_service.ratelimit import RateLimiter
from aggregation_service.service import AggregationService, UpdateRequest
from fedge.clock import Clock

log = logging.getLogger("aggregation_service.http")

SERVICE = web.AppKey("service", AggregationService)
LIMITER = web.AppKey("limiter", RateLimiter)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
# Assignment ids are the service's own ("as-" + hex); this only keeps what
# cannot be one (non-ASCII, control bytes, megabyte headers) out of the store.
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "detail": detail}}, status=status, headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc.status, exc.code, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status, "http_error"
        )
        # A 405 must say which methods the resource allows (RFC 9110 §15.5.6).
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        response = error_response(exc.status, code, exc.reason, kept or None)
    except StorageError as exc:
        log.error("storage error on %s %s: %s", request.method, request.path, exc)
        response = error_response(503, "storage_unavailable", str(exc))
    except (ConnectionResetError, web.RequestPayloadError) as exc:
        # The client went away (or sent a broken chunked body) mid-request: an
        # ordinary event on a fleet of flaky links, not a server fault.
        log.info("%s %s: client connection lost (%s)", request.method, request.path, exc)
        response = error_response(400, "connection_lost", f"request body incomplete: {exc}")
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        response = error_response(500, "internal", "internal server error (logged)")
    service = request.app[SERVICE]
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "-"
    )
    if request.content_length:
        service.metrics.bytes_in.inc(route, amount=request.content_length)
    body = getattr(response, "body", None)
    if isinstance(body, (bytes, bytearray)):
        service.metrics.bytes_out.inc(route, amount=len(body))
    guard = request.app.get(GUARD)
    if guard is not None:  # the next request head's deadline starts at its first byte
        guard.response_done(request.transport)
    log.debug(
        "%s %s -> %d in %.1f ms",
        request.method,
        request.path,
        response.status,
        (time.perf_counter() - started) * 1e3,
    )
    return response


# --- request parsing helpers ---------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or not header[7:].strip():
        return None
    return header[7:].strip()


async def require_operator(request: web.Request) -> None:
    service = request.app[SERVICE]
    token = _bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <operator token>'")
    if service.check_operator(token):
        return
    if await service.authenticate_device(token) is not None:
        raise ApiError(403, "forbidden", "a device token cannot open operator endpoints")
    raise ApiError(401, "unauthorized", "wrong operator token")


async def require_device(request: web.Request, *, allow_operator: bool = False) -> str | None:
    """The device id (None for the operator where allowed); applies the rate limit."""
    service = request.app[SERVICE]
    token = _bearer(request)
    if token is None:
        raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <device token>'")
    device = await service.authenticate_device(token)
    if device is None:
        if service.check_operator(token):
            if allow_operator:
                return None
            raise ApiError(
                403, "forbidden", "this endpoint is for devices; the operator token cannot open it"
            )
        raise ApiError(401, "unauthorized", "unknown device token")
    wait = request.app[LIMITER].take(device)
    if wait > 0:
        service.metrics.rate_limited.inc()
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests from {device}; retry in {wait:.1f} s",
            headers={"Retry-After": str(max(1, round(wait + 0.5)))},
        )
    return device


async def read_json(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected application/json, got {request.content_type!r}",
        )
    raw = await read_capped(request, request.app[SERVICE].config.max_json_bytes)
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request("bad_json", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        # json's C parser recurses per nesting level; a body of thousands of
        # "[" is a client's mistake (or probe), not a server fault.
        raise bad_request("bad_json", "body is nested too deeply") from exc
    if not isinstance(data, dict):
        raise bad_request("bad_json", "body must be a JSON object")
    return data


def _int_param(value: str, what: str) -> int:
    if not value.isdigit() or len(value) > 12:
        raise bad_request("bad_parameter", f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _field(
    data: dict[str, Any], key: str, kind: type | tuple[type, ...], *, required: bool = True
) -> Any:
    if key not in data or data[key] is None:
        if required:
            raise bad_request("bad_field", f"missing field {key!r}")
        return None
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_request("bad_field", f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _clip_bit(request: web.Request) -> int | None:
    """Fedge-Clip-Bit (adaptive clipping): absent, or exactly "0" or "1". The
    service refuses an absent bit when the model's dp.adaptive is on."""
    raw = request.headers.get("Fedge-Clip-Bit")
    if raw is None:
        return None
    if raw not in ("0", "1"):
        raise bad_request("bad_header", f"Fedge-Clip-Bit must be 0 or 1, got {raw[:16]!r}")
    return int(raw)


def _header_int(request: web.Request, name: str, minimum: int) -> int:
    raw = request.headers.get(name)
    if raw is None:
        raise bad_request("bad_header", f"missing header {name}")
    if not raw.strip().isdigit() or int(raw) < minimum:
        raise bad_request("bad_header", f"{name} must be an integer ≥ {minimum}, got {raw!r}")
    return int(raw)


# --- operator handlers -----------------------------------------------------------------------


async def push_version(request: web.Request) -> web.Response:
    await require_operator(request)
    service = request.app[SERVICE]
    model = request.match_info["model"]
    if not request.content_type.startswith("multipart/"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "expected multipart/form-data with parts 'manifest' and 'model'",
        )
    cap = service.config.max_model_bytes
    if request.content_length is not None and request.content_length > cap:
        raise ApiError(
            413, "too_large", f"push of {request.content_length} bytes exceeds the limit of {cap}"
        )
    parts: dict[str, bytes] = {}
    deadline = service.config.limits.body_deadline_s(request.content_length or cap)
    try:
        async with asyncio.timeout(deadline):
            await _read_parts(request, parts, cap)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"the push did not arrive within {deadline:.0f} s"
        ) from None
    missing = [p for p in ("manifest", "model") if p not in parts]
    if missing:
        raise bad_request("bad_multipart", f"missing multipart part(s) {missing}")
    row = await service.push_version(model, parts["manifest"], parts["model"])
    return web.json_response(
        {"model": model, "version": row.version, "sha256": row.graph_sha256}, status=201
    )


async def _read_parts(request: web.Request, parts: dict[str, bytes], cap: int) -> None:
    """The 'manifest' and 'model' parts of a push into ``parts``, at most ``cap`` bytes."""
    total = 0
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise bad_request("bad_multipart", "nested multipart is not supported")
            name = part.name or ""
            data = bytearray()
            while chunk := await part.read_chunk(1 << 16):
                data.extend(chunk)
                total += len(chunk)
                if total > cap:
                    raise ApiError(413, "too_large", f"push exceeds the limit of {cap} bytes")
            if name in ("manifest", "model"):
                parts[name] = bytes(data)
    except (ValueError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        # HttpProcessingError: aiohttp's part-header parser (InvalidHeader for a
        # control byte, LineTooLong for a huge preamble or header line).
        detail = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        raise bad_request("bad_multipart", f"malformed multipart body: {detail}") from exc


async def list_models(request: web.Request) -> web.Response:
    await require_operator(request)
    return web.json_response({"models": await request.app[SERVICE].list_models()})


async def get_model(request: web.Request) -> web.Response:
    await require_operator(request)
    return web.json_response(await request.app[SERVICE].describe_model(request.match_info["model"]))


async def get_version(request: web.Request) -> web.Response:
    await require_operator(request)
    v = _int_param(request.match_info["version"], "version")
    row = await request.app[SERVICE].version_row(request.match_info["model"], v)
    return web.json_response(row.to_json())


async def promote(request: web.Request) -> web.Response:
    await require_operator(request)
    data = await read_json(request)
    version = _field(data, "version", int)
    return web.json_response(
        await request.app[SERVICE].promote(request.match_info["model"], version)
    )


async def rollback(request: web.Request) -> web.Response:
    await require_operator(request)
    data = await read_json(request) if request.can_read_body else {}
    version = _field(data, "version", int, required=False)
    return web.json_response(
        await request.app[SERVICE].rollback(request.match_info["model"], version)
    )


async def pause(request: web.Request) -> web.Response:
    await require_operator(request)
    return web.json_response(
        await request.app[SERVICE].set_paused(request.match_info["model"], True)
    )


async def resume(request: web.Request) -> web.Response:
    await require_operator(request)
    return web.json_response(
        await request.app[SERVICE].set_paused(request.match_info["model"], False)
    )


async def get_config(request: web.Request) -> web.Response:
    await require_operator(request)
    rt = request.app[SERVICE].runtime(request.match_info["model"])
    return web.json_response(rt.config.to_dict())


async def patch_config(request: web.Request) -> web.Response:
    await require_operator(request)
    data = await read_json(request)
    new = await request.app[SERVICE].patch_config(request.match_info["model"], data)
    return web.json_response(new.to_dict())


async def put_eval_data(request: web.Request) -> web.Response:
    await require_operator(request)
    service = request.app[SERVICE]
    service.runtime(request.match_info["model"])
    if request.content_type not in ("application/octet-stream", "application/x-npz"):
        raise ApiError(415, "unsupported_media_type", "send the .npz as application/octet-stream")
    data = await read_capped(request, service.config.max_eval_bytes)
    return web.json_response(await service.set_eval_data(request.match_info["model"], data))


async def create_enrollment_token(request: web.Request) -> web.Response:
    await require_operator(request)
    data = await read_json(request)
    uses = _field(data, "uses", int, required=False)
    uses = 1 if uses is None else uses
    ttl = _field(data, "ttl_s", (int, float), required=False)
    ttl = 86400.0 if ttl is None else ttl
    if uses < 1 or uses > 1_000_000 or not 0 < ttl <= 365 * 86400:
        raise ApiError(422, "bad_field", "uses must be 1–1000000 and ttl_s in (0, 1 year]")
    return web.json_response(
        await request.app[SERVICE].create_enrollment_token(uses, float(ttl)), status=201
    )


_DEVICE_STATES = ("enrolled", "eligible", "ineligible", "revoked")


async def list_devices(request: web.Request) -> web.Response:
    await require_operator(request)
    state = request.query.get("state")
    if state is not None and state not in _DEVICE_STATES:
        raise bad_request("bad_parameter", f"state must be one of {', '.join(_DEVICE_STATES)}")
    limit = _int_param(request.query.get("limit", "1000"), "limit")
    if not 1 <= limit <= 100_000:
        raise bad_request("bad_parameter", "limit must be 1–100000")
    devices = await request.app[SERVICE].list_devices(limit=limit, state=state)
    return web.json_response({"devices": devices})


async def revoke_device(request: web.Request) -> web.Response:
    await require_operator(request)
    return web.json_response(
        await request.app[SERVICE].revoke_device(request.match_info["device"])
    )


# --- device handlers -------------------------------------------------------------------------


async def enroll(request: web.Request) -> web.Response:
    data = await read_json(request)
    token = _field(data, "enrollment_token", str)
    profile = _field(data, "profile", dict, required=False) or {}
    return web.json_response(await request.app[SERVICE].enroll(token, profile), status=201)


async def enroll_check(request: web.Request) -> web.Response:
    """What a device checks its data against before it spends an enrollment
    token: the training version's manifest. The token is checked, not spent;
    an enrolled device may ask with its own bearer token instead."""
    data = await read_json(request)
    model = _field(data, "model", str)
    token = _field(data, "enrollment_token", str, required=False)
    if token is None:
        await require_device(request)
    return web.json_response(await request.app[SERVICE].enroll_check(model, token))


async def checkin(request: web.Request) -> web.Response:
    device = await require_device(request)
    assert device is not None
    data = await read_json(request)
    _field(data, "model", str)
    _field(data, "eligible", bool)
    _field(data, "reasons", list, required=False)
    _field(data, "profile", dict, required=False)
    _field(data, "runtime", str, required=False)
    _field(data, "cached_version", int, required=False)
    return web.json_response(await request.app[SERVICE].checkin(device, data))


async def upload_update(request: web.Request) -> web.Response:
    device = await require_device(request)
    assert device is not None
    service = request.app[SERVICE]
    if request.content_type != "application/octet-stream":
        raise service._reject(
            ApiError(415, "unsupported_media_type", "an update is application/octet-stream")
        )
    model = request.headers.get("Fedge-Model")
    if not model:
        raise service._reject(bad_request("bad_header", "missing header Fedge-Model"))
    service.runtime(model)
    key = request.headers.get("Idempotency-Key", "")
    if not _KEY_RE.match(key):
        raise service._reject(
            bad_request("bad_header", "Idempotency-Key must be 8–128 characters of [A-Za-z0-9._:-]")
        )
    assignment = request.headers.get("Fedge-Assignment")
    if not assignment:
        raise service._reject(bad_request("bad_header", "missing header Fedge-Assignment"))
    if not _ASSIGNMENT_RE.match(assignment):
        raise service._reject(
            bad_request("bad_header", "Fedge-Assignment is not an assignment id")
        )
    try:
        base = _header_int(request, "Fedge-Base-Version", 1)
        examples = _header_int(request, "Fedge-Examples", 1)
        clip_bit = _clip_bit(request)
        body = await read_capped(request, service.max_update_bytes(model))
    except ApiError as exc:
        raise service._reject(exc) from None
    # Keys are scoped to the device that sent them: another device choosing
    # the same key (a counter, a clock) must not have its update answered as
    # someone else's duplicate and dropped. "/" cannot occur in a key.
    scoped_key = f"{device}/{key}"
    receipt = await service.accept_update(
        UpdateRequest(device, model, assignment, base, examples, scoped_key, body, clip_bit)
    )
    return web.json_response(
        {"status": "accepted", "update_id": receipt.update_id, "duplicate": receipt.duplicate},
        status=202,
    )


# --- secure aggregation (aggregation_service.secagg_rounds) ---------------------------------


async def secagg_send(request: web.Request) -> web.Response:
    """POST one SecAgg message (privacy.secagg.encode_message bytes)."""
    device = await require_device(request)
    assert device is not None
    rounds = request.app[SERVICE].secagg
    round_id, step = request.match_info["round"], request.match_info["step"]
    rnd = rounds.check_post(round_id, step, device)
    if request.content_type != "application/octet-stream":
        raise rounds.refuse(
            ApiError(415, "unsupported_media_type", "a secure aggregation message is "
                     "application/octet-stream")
        )
    try:
        body = await read_capped(request, rounds.max_body_bytes(round_id))
    except ApiError as exc:
        raise rounds.refuse(exc) from None
    return web.json_response(rounds.receive(rnd, step, device, body))


async def secagg_fetch(request: web.Request) -> web.Response:
    """GET the server's SecAgg message for this device once the phase closed;
    204 with Retry-After while it is open."""
    device = await require_device(request)
    assert device is not None
    rounds = request.app[SERVICE].secagg
    answer = rounds.poll(request.match_info["round"], request.match_info["step"], device)
    if isinstance(answer, float):
        return web.Response(status=204, headers={"Retry-After": str(round(answer))})
    return web.Response(body=answer, content_type="application/octet-stream")


# --- downloads -------------------------------------------------------------------------------


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) for a single 'bytes=a-b' range; None if unsatisfiable."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        raise bad_request("bad_range", f"unsupported Range {header!r}; use one 'bytes=a-b' range")
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) + 1 if m.group(2) else size
    else:
        start, end = max(0, size - int(m.group(2))), size
    end = min(end, size)
    if start >= size or start >= end:
        return None
    return start, end


async def _send_blob(
    request: web.Request,
    *,
    etag: str,
    size: int,
    read: Callable[[int, int], Awaitable[bytes]],
    headers: dict[str, str],
    content_type: str,
) -> web.Response:
    quoted = f'"{etag}"'
    base = {"ETag": quoted, "Accept-Ranges": "bytes", "Cache-Control": "no-cache", **headers}
    inm = request.headers.get("If-None-Match")
    if inm and (inm.strip() == "*" or quoted in [t.strip() for t in inm.split(",")]):
        return web.Response(status=304, headers=base)
    range_header = request.headers.get("Range")
    if range_header:
        span = _parse_range(range_header, size)
        if span is None:
            return web.Response(
                status=416,
                headers={**base, "Content-Range": f"bytes */{size}"},
            )
        start, end = span
        data = await read(start, end)
        return web.Response(
            status=206,
            body=data,
            content_type=content_type,
            headers={**base, "Content-Range": f"bytes {start}-{end - 1}/{size}"},
        )
    return web.Response(body=await read(0, size), content_type=content_type, headers=base)


async def get_manifest(request: web.Request) -> web.Response:
    await require_device(request, allow_operator=True)
    v = _int_param(request.match_info["version"], "version")
    row = await request.app[SERVICE].version_row(request.match_info["model"], v)
    return web.Response(text=row.manifest, content_type="application/json")


async def get_graph(request: web.Request) -> web.Response:
    await require_device(request, allow_operator=True)
    service = request.app[SERVICE]
    v = _int_param(request.match_info["version"], "version")
    row = await service.version_row(request.match_info["model"], v)
    digest = await service._io_run(lambda: _graph_blob(service, row.graph_sha256))
    size = await service._io_run(service.blobs.size, digest)

    async def read(start: int, end: int) -> bytes:
        data: bytes = await service._io_run(service.blobs.read_range, digest, start, end)
        return data

    return await _send_blob(
        request,
        etag=row.graph_sha256,
        size=size,
        read=read,
        headers={},
        content_type="application/octet-stream",
    )


def _graph_blob(service: AggregationService, graph_sha: str) -> str:
    if service.blobs.exists(graph_sha):
        return graph_sha
    raise not_found("no_graph", "this version has no graph file (registered without one)")


async def get_weights(request: web.Request) -> web.Response:
    await require_device(request, allow_operator=True)
    service = request.app[SERVICE]
    model = request.match_info["model"]
    v = _int_param(request.match_info["version"], "version")
    row = await service.version_row(model, v)
    from_param = request.query.get("from")
    headers = {"Fedge-Weights-Sha256": row.weights_sha256}
    if from_param is not None:
        frame = await service.weights_delta(model, v, _int_param(from_param, "from"))
        etag = hashlib.sha256(frame).hexdigest()
        # The rebuilt weights' value digest: the device verifies them without
        # re-encoding them to the full frame (docs/protocol.md).
        headers["Fedge-Weights-Digest"] = await service.weights_digest(model, v)

        async def read_delta(start: int, end: int) -> bytes:
            return frame[start:end]

        return await _send_blob(
            request,
            etag=etag,
            size=len(frame),
            read=read_delta,
            headers={**headers, "Fedge-Delta-From": from_param},
            content_type="application/octet-stream",
        )
    digest = row.weights_sha256
    size = await service._io_run(service.blobs.size, digest)

    async def read(start: int, end: int) -> bytes:
        data: bytes = await service._io_run(service.blobs.read_range, digest, start, end)
        return data

    return await _send_blob(
        request,
        etag=digest,
        size=size,
        read=read,
        headers=headers,
        content_type="application/octet-stream",
    )


# --- operations ------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    health = request.app[SERVICE].health()
    return web.json_response(health, status=503 if health["status"] == "failing" else 200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[SERVICE].metrics.render(),
        content_type="text/plain",
        headers={"X-Content-Type-Version": "0.0.4"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/healthz", healthz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
    ("GET", "/v1/models", list_models),
    ("GET", "/v1/models/{model}", get_model),
    ("POST", "/v1/models/{model}/versions", push_version),
    ("GET", "/v1/models/{model}/versions/{version}", get_version),
    ("GET", "/v1/models/{model}/versions/{version}/manifest.json", get_manifest),
    ("GET", "/v1/models/{model}/versions/{version}/model.tflite", get_graph),
    ("GET", "/v1/models/{model}/versions/{version}/weights", get_weights),
    ("POST", "/v1/models/{model}/promote", promote),
    ("POST", "/v1/models/{model}/rollback", rollback),
    ("POST", "/v1/models/{model}/pause", pause),
    ("POST", "/v1/models/{model}/resume", resume),
    ("GET", "/v1/models/{model}/config", get_config),
    ("PATCH", "/v1/models/{model}/config", patch_config),
    ("PUT", "/v1/models/{model}/eval-data", put_eval_data),
    ("POST", "/v1/enrollment-tokens", create_enrollment_token),
    ("GET", "/v1/devices", list_devices),
    ("POST", "/v1/devices/{device}/revoke", revoke_device),
    ("POST", "/v1/devices/enroll", enroll),
    ("POST", "/v1/devices/enroll/check", enroll_check),
    ("POST", "/v1/devices/checkin", checkin),
    ("POST", "/v1/devices/updates", upload_update),
    ("POST", "/v1/devices/secagg/{round}/{step}", secagg_send),
    ("GET", "/v1/devices/secagg/{round}/{step}", secagg_fetch),
    *dashboard.ROUTES,  # the operator dashboard at /
]


def create_app(
    config: ServiceConfig, *, clock: Clock | None = None, service: AggregationService | None = None
) -> web.Application:
    """The service as an aiohttp app. The service starts (recovering from the
    data directory) on app startup and stops on cleanup. Pass ``service`` to
    inject test seams (weights reader, evaluator, random source)."""
    svc = service or AggregationService(config, clock=clock)
    # Bodies are read with explicit per-route caps; this is only the outer bound.
    app = web.Application(
        middlewares=[error_middleware], client_max_size=config.max_model_bytes + (1 << 20)
    )
    app[SERVICE] = svc
    app[LIMITS] = config.limits
    app[LIMITER] = RateLimiter(svc.clock, config.rate_limit.rate_per_s, config.rate_limit.burst)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    dashboard.setup(app, svc)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[SERVICE].start()
        yield
        await app[SERVICE].stop()

    app.cleanup_ctx.append(lifecycle)
    return app
