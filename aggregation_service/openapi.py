"""The OpenAPI 3.1 description of every route (hand-written; a test checks
that each route the app serves appears here and nothing else does)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _op(
    summary: str,
    *,
    security: str | None,
    codes: dict[str, str],
    body: str | None = None,
    params: tuple[str, ...] = (),
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            code: (
                {"description": text}
                if code[0] in "23"
                else {"description": text, "content": {"application/json": {"schema": _ERROR}}}
            )
            for code, text in codes.items()
        },
    }
    if security:
        op["security"] = [{security: []}]
    if body:
        op["requestBody"] = {"required": True, "content": {body: {}}}
    if params:
        op["parameters"] = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {"type": "integer" if p == "version" else "string"},
            }
            for p in params
        ]
    return op


_AUTH = {"401": "missing or wrong token", "403": "token of the wrong kind"}
_MODEL = ("model",)
_VERSION = ("model", "version")
_BLOB = {
    "200": "the bytes",
    "206": "a byte range",
    "304": "not modified (If-None-Match)",
    "404": "unknown model or version",
    "416": "range not satisfiable",
    **_AUTH,
}


_NUM = {"type": ["number", "null"]}
# A version's `privacy` report (aggregation_service.privacy_hooks; docs/privacy.md).
_PRIVACY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The DP accountant's report for the step that published this version; "
    "null for versions published without DP",
    "properties": {
        "version": {"type": "integer"},
        "epsilon": {
            **_NUM,
            "description": "cumulative ε at delta (null: ∞, no noise); "
            "local mode: the device with the most releases",
        },
        "step_epsilon": {**_NUM, "description": "ε of this step alone"},
        "delta": {"type": "number"},
        "sampling_probability": {"type": "number"},
        "noise_multiplier": {"type": "number", "description": "the multiplier charged"},
        "steps": {"type": "integer"},
        "participation": {"type": "string", "enum": ["sampled", "full"]},
        "population": {"type": ["integer", "null"]},
        "clip_norm": {
            "type": "number",
            "description": "the L2 bound devices training "
            "from this version clip with (moves with adaptive clipping)",
        },
        "noise_clip_norm": {
            **_NUM,
            "description": "the bound the step's noise was calibrated to (central mode)",
        },
        "clip_norm_before": {"type": "number", "description": "adaptive: the base's bound"},
        "unclipped_fraction": {
            "type": "number",
            "description": "adaptive: the noised fraction of updates that fitted under the bound",
        },
        "update_noise_multiplier": {
            "type": "number",
            "description": "adaptive: z_Δ on the update sum",
        },
        "device_uploads_max": {"type": "integer", "description": "local mode"},
        "guarantee": {"type": "string", "description": "local mode: 'local, per device'"},
    },
}
_VERSION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "kind": {"type": "string", "enum": ["pushed", "aggregated"]},
        "base_version": {"type": ["integer", "null"]},
        "num_updates": {"type": "integer"},
        "num_devices": {"type": "integer"},
        "privacy": {"oneOf": [{"$ref": "#/components/schemas/PrivacyReport"}, {"type": "null"}]},
    },
    "additionalProperties": True,
}


def openapi_document() -> dict[str, Any]:
    op, dev = "operatorToken", "deviceToken"
    paths: dict[str, dict[str, Any]] = {
        "/healthz": {
            "get": _op(
                "Liveness and storage health", security=None, codes={"200": "ok", "503": "degraded"}
            )
        },
        "/metrics": {
            "get": _op("Prometheus text exposition", security=None, codes={"200": "metrics"})
        },
        "/openapi.json": {"get": _op("This document", security=None, codes={"200": "OpenAPI"})},
        "/v1/models": {
            "get": _op(
                "List models with their versions and lineage",
                security=op,
                codes={"200": "models", **_AUTH},
            )
        },
        "/v1/models/{model}": {
            "get": _op(
                "One model: versions, lineage, buffer, live version",
                security=op,
                params=_MODEL,
                codes={"200": "model", "404": "unknown model", **_AUTH},
            )
        },
        "/v1/models/{model}/versions": {
            "post": _op(
                "Push a version: multipart parts 'manifest' (manifest.json) and "
                "'model' (model.tflite)",
                security=op,
                params=_MODEL,
                body="multipart/form-data",
                codes={
                    "201": "{model, version, sha256}",
                    "400": "bad multipart",
                    "413": "too large",
                    "415": "not multipart",
                    "422": "bad manifest, sha256 mismatch, model does not "
                    "load or its weights do not match the manifest",
                    **_AUTH,
                },
            )
        },
        "/v1/models/{model}/versions/{version}": {
            "get": _op(
                "One version with lineage and evaluation metrics",
                security=op,
                params=_VERSION,
                codes={"200": "version", "404": "unknown model or version", **_AUTH},
            )
        },
        "/v1/models/{model}/versions/{version}/manifest.json": {
            "get": _op(
                "The version's manifest",
                security=dev,
                params=_VERSION,
                codes={"200": "manifest", "404": "unknown model or version", **_AUTH},
            )
        },
        "/v1/models/{model}/versions/{version}/model.tflite": {
            "get": _op(
                "The graph; ETag is its sha256; Range and If-None-Match supported",
                security=dev,
                params=_VERSION,
                codes=_BLOB,
            )
        },
        "/v1/models/{model}/versions/{version}/weights": {
            "get": _op(
                "Lossless frame of all weights, or with ?from=u the lossless delta from version u "
                "(404 no_delta if u is unknown or has another graph)",
                security=dev,
                params=_VERSION,
                codes=_BLOB,
            )
        },
        "/v1/models/{model}/promote": {
            "post": _op(
                'Make a version live (the one devices use for inference): {"version": v}',
                security=op,
                params=_MODEL,
                body="application/json",
                codes={
                    "200": "promoted",
                    "400": "bad JSON",
                    "404": "unknown model or version",
                    "415": "not JSON",
                    **_AUTH,
                },
            )
        },
        "/v1/models/{model}/rollback": {
            "post": _op(
                'Make the previously live version (or {"version": v}) live again and train from it',
                security=op,
                params=_MODEL,
                codes={
                    "200": "rolled back",
                    "404": "unknown model or version",
                    "409": "nothing to roll back to",
                    **_AUTH,
                },
            )
        },
        "/v1/models/{model}/pause": {
            "post": _op(
                "Stop handing out plans and publishing",
                security=op,
                params=_MODEL,
                codes={"200": "paused", "404": "unknown model", **_AUTH},
            )
        },
        "/v1/models/{model}/resume": {
            "post": _op(
                "Resume training",
                security=op,
                params=_MODEL,
                codes={"200": "resumed", "404": "unknown model", **_AUTH},
            )
        },
        "/v1/models/{model}/config": {
            "get": _op(
                "The model's training configuration",
                security=op,
                params=_MODEL,
                codes={"200": "config", "404": "unknown model", **_AUTH},
            ),
            "patch": _op(
                "Change part of the training configuration (validated)",
                security=op,
                params=_MODEL,
                body="application/json",
                codes={
                    "200": "the new config",
                    "400": "bad JSON",
                    "415": "not JSON",
                    "422": "invalid value (the detail names the key)",
                    **_AUTH,
                },
            ),
        },
        "/v1/models/{model}/eval-data": {
            "put": _op(
                "Upload held-out data (.npz with x and y); every new version is evaluated on it",
                security=op,
                params=_MODEL,
                body="application/octet-stream",
                codes={
                    "200": "stored",
                    "400": "not an npz",
                    "413": "too large",
                    "415": "wrong content type",
                    "422": "x/y missing or wrong shape",
                    **_AUTH,
                },
            )
        },
        "/v1/enrollment-tokens": {
            "post": _op(
                "Create an enrollment token {uses, ttl_s}",
                security=op,
                body="application/json",
                codes={
                    "201": "{token, expires_at, uses}",
                    "400": "bad JSON",
                    "422": "bad values",
                    **_AUTH,
                },
            )
        },
        "/v1/devices/enroll": {
            "post": _op(
                "Exchange an enrollment token for a device id and device token",
                security=None,
                body="application/json",
                codes={
                    "201": "{device_id, device_token}",
                    "400": "bad JSON",
                    "401": "enrollment token unknown, used up or expired",
                },
            )
        },
        "/v1/devices/checkin": {
            "post": _op(
                "Report state; get a plan or a retry_after (pace steering)",
                security=dev,
                body="application/json",
                codes={
                    "200": "{action: train, plan} or {action: wait, retry_after, reason}",
                    "400": "bad JSON",
                    "404": "unknown model",
                    "415": "not JSON",
                    "429": "rate limited (Retry-After)",
                    **_AUTH,
                },
            )
        },
        "/v1/devices/updates": {
            "post": _op(
                "Upload an update frame (headers Idempotency-Key, Fedge-Assignment, Fedge-Model, "
                "Fedge-Base-Version, Fedge-Examples; Fedge-Clip-Bit 0|1 when the plan's "
                "dp.clip_bit is true)",
                security=dev,
                body="application/octet-stream",
                codes={
                    "202": "durable: {status, update_id, duplicate}",
                    "400": "bad headers; clip_bit_required (adaptive clipping without "
                    "Fedge-Clip-Bit)",
                    "404": "unknown model",
                    "409": "stale_update, deadline_passed, unknown_assignment, assignment_used",
                    "413": "too large",
                    "415": "wrong content type",
                    "422": "bad frame, shapes, non-finite, norm",
                    "429": "rate limited (Retry-After)",
                    "503": "storage unavailable",
                    **_AUTH,
                },
            )
        },
    }
    paths.update(_secagg_paths())
    paths.update(_dashboard_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "fedge aggregation service", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer"},
                "deviceToken": {"type": "http", "scheme": "bearer"},
                "dashboardSession": {"type": "apiKey", "in": "cookie", "name": "fedge_session"},
            },
            "schemas": {
                "Version": _VERSION_SCHEMA,
                "PrivacyReport": _PRIVACY_SCHEMA,
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "detail": {"type": "string"},
                            },
                        }
                    },
                },
            },
        },
    }


# --- the operator dashboard (aggregation_service.dashboard) ---------------------------------

_SESSION = "dashboardSession"
_NO_SESSION = {"401": "no valid dashboard session (log in at /)"}
# State-changing dashboard calls: the session cookie, its CSRF token, a same-origin request.
_CHANGE = {
    **_NO_SESSION,
    "403": "bad_csrf: missing or wrong X-Fedge-CSRF header; bad_origin: cross-origin request",
    "404": "unknown model or version",
}
_CSRF_PARAM = {
    "name": "X-Fedge-CSRF",
    "in": "header",
    "required": True,
    "description": "the session's CSRF token (the dashboard page's fedge-csrf meta tag)",
    "schema": {"type": "string"},
}


def _change(summary: str, codes: dict[str, str], body: bool = False) -> dict[str, Any]:
    op = _op(summary, security=_SESSION, params=_MODEL, codes={**codes, **_CHANGE})
    op["parameters"].append(_CSRF_PARAM)
    if body:
        op["requestBody"] = {"required": False, "content": {"application/json": {}}}
    return op


def _dashboard_paths() -> dict[str, dict[str, Any]]:
    return {
        "/": {
            "get": _op(
                "The dashboard page with a session, the login form without one (text/html)",
                security=None,
                codes={"200": "HTML page"},
            )
        },
        "/login": {
            "post": _op(
                "Log in with the operator token (form field 'token'): 303 to / with an "
                "HttpOnly, SameSite=Strict session cookie (Secure over TLS); the cookie "
                "holds a random session id, never the token",
                security=None,
                body="application/x-www-form-urlencoded",
                codes={
                    "303": "logged in; Set-Cookie fedge_session",
                    "400": "no token given (the form again) or an unreadable form",
                    "401": "wrong operator token (the form again, no cookie)",
                    "403": "bad_origin: cross-origin form post",
                    "413": "body over 4 KiB",
                    "415": "not a urlencoded form",
                },
            )
        },
        "/logout": {
            "post": {
                **_op(
                    "End the session and clear its cookie",
                    security=_SESSION,
                    codes={"200": "{status: logged_out}", **_NO_SESSION, "403": _CHANGE["403"]},
                ),
                "parameters": [_CSRF_PARAM],
            }
        },
        "/dashboard/static/{name}": {
            "get": _op(
                "The dashboard's CSS and JavaScript (a fixed set of files)",
                security=None,
                params=("name",),
                codes={"200": "the file", "404": "no such file"},
            )
        },
        "/dashboard/api/state": {
            "get": _op(
                "Everything the dashboard draws: models (as GET /v1/models), live counters "
                "(the numbers of /metrics), devices by state and by profile, health",
                security=_SESSION,
                codes={"200": "{time, health, models, counters, devices}", **_NO_SESSION},
            )
        },
        "/dashboard/api/models/{model}/promote": {
            "post": _change(
                'Promote a version (as POST /v1/models/{model}/promote): {"version": v}',
                {"200": "promoted", "400": "bad JSON or version", "415": "not JSON"},
                body=True,
            )
        },
        "/dashboard/api/models/{model}/rollback": {
            "post": _change(
                'Roll back (as POST /v1/models/{model}/rollback); optional {"version": v}',
                {
                    "200": "rolled back",
                    "400": "bad JSON or version",
                    "409": "nothing to roll back to",
                    "415": "not JSON",
                },
                body=True,
            )
        },
        "/dashboard/api/models/{model}/pause": {
            "post": _change("Pause training (as POST /v1/models/{model}/pause)", {"200": "paused"})
        },
        "/dashboard/api/models/{model}/resume": {
            "post": _change(
                "Resume training (as POST /v1/models/{model}/resume)", {"200": "resumed"}
            )
        },
    }


# --- secure aggregation of sync rounds (aggregation_service.secagg_rounds) ------------------

_SECAGG = ("round", "step")
_SECAGG_REFUSALS = {
    "403": "token of the wrong kind; not_in_round (this device is not in the round); "
    "device_mismatch (the message names another device)",
    "404": "unknown_round (finished long ago or lost in a restart: check in again), "
    "unknown_endpoint (a step that does not exist)",
}


def _secagg_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v1/devices/secagg/{round}/{step}": {
            "post": _op(
                "Send this device's SecAgg message for a step of the round named in its plan: "
                "step keys, shares, masked-input or unmask (privacy.secagg.encode_message bytes); "
                "the same bytes again are answered as a duplicate",
                security="deviceToken",
                params=_SECAGG,
                body="application/octet-stream",
                codes={
                    "200": "{status: received | duplicate, round_id, phase}",
                    "400": "bad_secagg_message",
                    "409": "wrong_phase, already_sent, round_abandoned",
                    "413": "too large",
                    "415": "wrong content type",
                    "422": "protocol_violation (the device is out of the round)",
                    "429": "rate limited (Retry-After)",
                    **_AUTH,
                    **_SECAGG_REFUSALS,
                },
            ),
            "get": _op(
                "Fetch the server's SecAgg message for this device once a phase closed: "
                "step setup, shares or unmask; 204 with Retry-After while it is open",
                security="deviceToken",
                params=_SECAGG,
                codes={
                    "200": "the message (application/octet-stream)",
                    "204": "not yet: ask again after Retry-After seconds",
                    "409": "round_closed, wrong_phase, excluded, round_abandoned",
                    "429": "rate limited (Retry-After)",
                    **_AUTH,
                    **_SECAGG_REFUSALS,
                },
            ),
        }
    }
