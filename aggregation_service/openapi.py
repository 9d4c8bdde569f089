"""The OpenAPI 3.1 description of every route (hand-written; a test checks
that each route the app serves appears here and nothing else does).

Every operation declares its request body with a schema, every header and
query parameter it reads, and every status it answers, with the response's
schema — so that a schema-driven fuzzer (tests/test_api_fuzz.py runs
schemathesis against a real ``fedge serve``) reaches the logic behind the
validation and checks every answer against this document.
"""

from __future__ import annotations

from typing import Any

from aggregation_service.config import TrainingConfig

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON = "application/json"
_BYTES = "application/octet-stream"

# --- building blocks -------------------------------------------------------------------------


def _ok(
    text: str,
    schema: dict[str, Any] | None = None,
    *,
    content_type: str = _JSON,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A success response: description, optional body schema and headers."""
    response: dict[str, Any] = {"description": text}
    if schema is not None:
        response["content"] = {content_type: {"schema": schema}}
    if headers:
        response["headers"] = {
            name: {"description": desc, "schema": {"type": "string"}}
            for name, desc in headers.items()
        }
    return response


def _err(text: str, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": text, "content": {_JSON: {"schema": _ERROR}}}
    if headers:
        response["headers"] = {
            name: {"description": desc, "schema": {"type": "string"}}
            for name, desc in headers.items()
        }
    return response


_RETRY = {"Retry-After": "seconds to wait before trying again"}
_AUTH = {
    "401": _err("missing, unknown or revoked token"),
    "403": _err("token of the wrong kind"),
}
_STORE = {"503": _err("storage_unavailable: the data directory cannot be read or written")}
_LIMITED = {"429": _err("rate_limited: too many requests from this device", headers=_RETRY)}
_BODY_ERRORS = {
    "408": _err("body_timeout: the body arrived slower than limits.min_body_rate_bps"),
    "413": _err("too_large: the body exceeds its limit"),
}


def _json_errors() -> dict[str, Any]:
    return {
        "400": _err("bad_json (not JSON, not an object, nested too deeply) or bad_field"),
        "415": _err("unsupported_media_type: not application/json"),
        **_BODY_ERRORS,
    }


def _op(
    summary: str,
    *,
    security: str | None,
    responses: dict[str, Any],
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    op["security"] = [{security: []}] if security else []
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": schema}}}


def _bytes_body(description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {_BYTES: {"schema": {"type": "string", "format": "binary"}}},
    }


def _path(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    if description:
        param["description"] = description
    return param


def _header(
    name: str, schema: dict[str, Any], description: str, *, required: bool = True
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_NAME = {
    "type": "string",
    "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    "examples": ["digits"],
}
_MODEL = _path("model", _NAME, "the model's registry name")
# Path integers are at most 12 digits (anything longer is answered 400 bad_parameter).
_VERSION_NUMBER = {"type": "integer", "minimum": 1, "maximum": 999_999_999_999}
_VERSION = _path("version", _VERSION_NUMBER, "a version number of the model")
_NULLABLE_INT = {"type": ["integer", "null"]}
_NUM = {"type": ["number", "null"]}
_VERSION_FIELD = {"type": "integer", "minimum": 1, "examples": [1]}
_UNKNOWN_MODEL = {"404": _err("unknown_model")}
_UNKNOWN_VERSION = {"404": _err("unknown_model, unknown_version")}
_BAD_VERSION_PATH = {"400": _err("bad_parameter: the version is not a positive integer")}


def _schema_of(value: Any) -> dict[str, Any]:
    """A JSON schema for a default config value (the PATCH body's shape)."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, dict):
        return {"type": "object", "properties": {k: _schema_of(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"type": "array"}
    return {}  # None: the key takes a mapping, a number or null depending on the key


# --- schemas ---------------------------------------------------------------------------------

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
    "required": ["model", "version", "kind", "base_version", "num_updates", "num_devices"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "kind": {"type": "string", "enum": ["pushed", "aggregated"]},
        "base_version": _NULLABLE_INT,
        "graph_sha256": {"type": "string"},
        "weights_sha256": {"type": "string"},
        "num_updates": {"type": "integer"},
        "num_devices": {"type": "integer"},
        "mean_staleness": _NUM,
        "created_at": {"type": "number"},
        "metrics": {"type": ["object", "null"]},
        "privacy": {"oneOf": [{"$ref": "#/components/schemas/PrivacyReport"}, {"type": "null"}]},
    },
    "additionalProperties": True,
}
_PUBLICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Why a model's publications stopped (null while they work)",
    "properties": {
        "state": {"type": "string", "enum": ["blocked", "retrying"]},
        "reason": {"type": "string"},
        "detail": {"type": "string"},
        "since": {"type": "number"},
        "attempts": {"type": "integer"},
    },
}
_MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "paused", "live_version", "training_version", "mode", "versions"],
    "properties": {
        "model": {"type": "string"},
        "paused": {"type": "boolean"},
        "live_version": _NULLABLE_INT,
        "training_version": {"type": "integer"},
        "mode": {"type": "string", "enum": ["async", "sync"]},
        "buffer": {
            "type": "object",
            "properties": {
                "count": {"type": "integer"},
                "size": {"type": "integer"},
                "sealed": {"type": "integer"},
            },
        },
        "outstanding_assignments": {"type": "integer"},
        "publication": {
            "oneOf": [{"$ref": "#/components/schemas/PublicationProblem"}, {"type": "null"}]
        },
        "rounds_abandoned": {"type": "integer"},
        "secagg_round": {"type": ["object", "null"]},
        "num_updates": {"type": "integer"},
        "num_devices": {"type": "integer"},
        "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}},
        "privacy": {"type": ["object", "null"]},
    },
    "additionalProperties": True,
}
_PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["assignment_id", "model", "version", "urls", "client", "codec", "deadline_s"],
    "properties": {
        "assignment_id": {"type": "string"},
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "graph_sha256": {"type": "string"},
        "weights_sha256": {"type": "string"},
        "urls": {"type": "object", "additionalProperties": {"type": "string"}},
        "client": {"type": "object"},
        "codec": {"type": "object"},
        "deadline_s": {"type": "number"},
        "deadline_at": {"type": "number"},
        "dp": {"type": "object"},
        "secagg": {"type": "object"},
    },
    "additionalProperties": True,
}
_CHECKIN_ANSWER: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "required": ["action", "plan"],
            "properties": {
                "action": {"const": "train"},
                "live_version": _NULLABLE_INT,
                "plan": {"$ref": "#/components/schemas/Plan"},
            },
        },
        {
            "type": "object",
            "required": ["action", "retry_after", "reason"],
            "properties": {
                "action": {"const": "wait"},
                "retry_after": {"type": "number", "minimum": 0},
                "reason": {"type": "string"},
                "live_version": _NULLABLE_INT,
            },
        },
    ]
}
_CHECKIN_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "eligible"],
    "properties": {
        "model": {"type": "string", "examples": ["digits"]},
        "eligible": {"type": "boolean"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "profile": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "memory_mb": {"type": "number"}},
        },
        "runtime": {"type": "string", "examples": ["ai-edge-litert 2.3.0"]},
        "cached_version": {"type": "integer"},
    },
}
_DEVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "device_id": {"type": "string"},
        "profile": {"type": "object"},
        "state": {"type": "string"},
        "enrolled_at": {"type": "number"},
        "last_seen": {"type": "number"},
    },
}
_HEALTH: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["ok", "degraded", "failing"]},
        "models": {"type": "integer"},
        "log_end": {"type": "integer"},
        "publication_problems": {"type": "object"},
    },
}
_OBJECT = {"type": "object"}


def _secagg_step(kind: str, steps: list[str]) -> dict[str, Any]:
    return _path("step", {"type": "string", "enum": steps}, f"the {kind} step of the round")


_ROUND = _path("round", {"type": "string"}, "the round id named in the device's plan")

# --- the document ---------------------------------------------------------------------------


def openapi_document() -> dict[str, Any]:
    op, dev = "operatorToken", "deviceToken"
    blob_headers = {
        "ETag": "the sha256 of the bytes served",
        "Accept-Ranges": "bytes",
        "Content-Range": "the range sent (206) or the size (416)",
    }
    download_params = [
        _MODEL,
        _VERSION,
        _header("Range", {"type": "string"}, "one range, bytes=a-b", required=False),
        _header(
            "If-None-Match", {"type": "string"}, "an ETag already held (304)", required=False
        ),
    ]
    blob = {
        "200": _ok(
            "the bytes", {"type": "string", "format": "binary"}, content_type=_BYTES,
            headers=blob_headers,
        ),
        "206": _ok(
            "a byte range", {"type": "string", "format": "binary"}, content_type=_BYTES,
            headers=blob_headers,
        ),
        "304": _ok("not modified (If-None-Match)"),
        "400": _err("bad_parameter (the version), bad_range (not one bytes=a-b range)"),
        "416": _ok("range not satisfiable", headers=blob_headers),
        **_AUTH,
        **_LIMITED,
        **_STORE,
    }
    config_schema = {
        "type": "object",
        "description": "keys of TrainingConfig (docs/operator-guide.md); a partial mapping "
        "patches only what it names",
        "properties": {
            k: _schema_of(v) for k, v in TrainingConfig().to_dict().items()
        },
    }
    paths: dict[str, dict[str, Any]] = {
        "/healthz": {
            "get": _op(
                "Health: ok; degraded (200) when a model's publications fail; failing "
                "(503) when the process cannot make updates durable",
                security=None,
                responses={"200": _ok("ok or degraded", _HEALTH), "503": _ok("failing", _HEALTH)},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus text exposition",
                security=None,
                responses={"200": _ok("metrics", {"type": "string"}, content_type="text/plain")},
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document", security=None, responses={"200": _ok("OpenAPI", _OBJECT)}
            )
        },
        "/v1/models": {
            "get": _op(
                "List models with their versions and lineage",
                security=op,
                responses={
                    "200": _ok(
                        "models",
                        {
                            "type": "object",
                            "properties": {
                                "models": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Model"},
                                }
                            },
                        },
                    ),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}": {
            "get": _op(
                "One model: versions, lineage, buffer, live version, publication state",
                security=op,
                params=[_MODEL],
                responses={
                    "200": _ok("model", {"$ref": "#/components/schemas/Model"}),
                    **_UNKNOWN_MODEL,
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/versions": {
            "post": _op(
                "Push a version: multipart parts 'manifest' (manifest.json) and "
                "'model' (model.tflite)",
                security=op,
                params=[_MODEL],
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["manifest", "model"],
                                "properties": {
                                    "manifest": {"type": "string", "format": "binary"},
                                    "model": {"type": "string", "format": "binary"},
                                },
                            }
                        }
                    },
                },
                responses={
                    "201": _ok(
                        "{model, version, sha256}",
                        {
                            "type": "object",
                            "properties": {
                                "model": {"type": "string"},
                                "version": {"type": "integer"},
                                "sha256": {"type": "string"},
                            },
                        },
                    ),
                    "400": _err("bad_multipart, bad_model_name"),
                    **_BODY_ERRORS,
                    "415": _err("unsupported_media_type: not multipart"),
                    "422": _err(
                        "bad_manifest, sha256_mismatch, model_unloadable, weights_mismatch"
                    ),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/versions/{version}": {
            "get": _op(
                "One version with lineage and evaluation metrics",
                security=op,
                params=[_MODEL, _VERSION],
                responses={
                    "200": _ok("version", {"$ref": "#/components/schemas/Version"}),
                    **_BAD_VERSION_PATH,
                    **_UNKNOWN_VERSION,
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/versions/{version}/manifest.json": {
            "get": _op(
                "The version's manifest",
                security=dev,
                params=[_MODEL, _VERSION],
                responses={
                    "200": _ok("manifest", _OBJECT),
                    **_BAD_VERSION_PATH,
                    **_UNKNOWN_VERSION,
                    **_AUTH,
                    **_LIMITED,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/versions/{version}/model.tflite": {
            "get": _op(
                "The graph; ETag is its sha256; Range and If-None-Match supported",
                security=dev,
                params=download_params,
                responses={**blob, "404": _err("unknown_model, unknown_version, no_graph")},
            )
        },
        "/v1/models/{model}/versions/{version}/weights": {
            "get": _op(
                "Lossless frame of all weights, or with ?from=u the lossless delta from version u "
                "(404 no_delta if u is unknown or has another graph); the response carries "
                "Fedge-Weights-Sha256 and, for a delta, Fedge-Weights-Digest and Fedge-Delta-From",
                security=dev,
                params=[
                    *download_params,
                    _query("from", _VERSION_NUMBER, "a version the device holds: send a delta"),
                ],
                responses={
                    **blob,
                    "200": _ok(
                        "the bytes",
                        {"type": "string", "format": "binary"},
                        content_type=_BYTES,
                        headers={
                            **blob_headers,
                            "Fedge-Weights-Sha256": "sha256 of the full weights frame",
                            "Fedge-Weights-Digest": "value digest of the rebuilt weights (delta)",
                            "Fedge-Delta-From": "the version the delta applies to",
                        },
                    ),
                    "400": _err("bad_parameter (version or from), bad_range"),
                    "404": _err("unknown_model, unknown_version, no_delta"),
                },
            )
        },
        "/v1/models/{model}/promote": {
            "post": _op(
                'Make a version live (the one devices use for inference): {"version": v}',
                security=op,
                params=[_MODEL],
                body=_json_body(
                    {
                        "type": "object",
                        "required": ["version"],
                        "properties": {"version": _VERSION_FIELD},
                    }
                ),
                responses={
                    "200": _ok("promoted", _OBJECT),
                    **_json_errors(),
                    **_UNKNOWN_VERSION,
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/rollback": {
            "post": _op(
                'Make the previously live version (or {"version": v}) live again and train from it',
                security=op,
                params=[_MODEL],
                body=_json_body(
                    {"type": "object", "properties": {"version": _VERSION_FIELD}}, required=False
                ),
                responses={
                    "200": _ok("rolled back", _OBJECT),
                    **_json_errors(),
                    **_UNKNOWN_VERSION,
                    "409": _err("nothing_to_roll_back"),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/pause": {
            "post": _op(
                "Stop handing out plans and publishing",
                security=op,
                params=[_MODEL],
                responses={
                    "200": _ok("paused", _OBJECT),
                    **_UNKNOWN_MODEL,
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/resume": {
            "post": _op(
                "Resume training (and a publication blocked on the model's config)",
                security=op,
                params=[_MODEL],
                responses={
                    "200": _ok("resumed", _OBJECT),
                    **_UNKNOWN_MODEL,
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/models/{model}/config": {
            "get": _op(
                "The model's training configuration",
                security=op,
                params=[_MODEL],
                responses={
                    "200": _ok("config", config_schema),
                    **_UNKNOWN_MODEL,
                    **_AUTH,
                },
            ),
            "patch": _op(
                "Change part of the training configuration (validated)",
                security=op,
                params=[_MODEL],
                body=_json_body(config_schema),
                responses={
                    "200": _ok("the new config", config_schema),
                    **_json_errors(),
                    **_UNKNOWN_MODEL,
                    "422": _err("bad_config: an invalid value (the detail names the key)"),
                    **_AUTH,
                    **_STORE,
                },
            ),
        },
        "/v1/models/{model}/eval-data": {
            "put": _op(
                "Upload held-out data (.npz with x and y); every new version is evaluated on it",
                security=op,
                params=[_MODEL],
                body=_bytes_body(".npz with arrays x and y in the model's input and label shapes"),
                responses={
                    "200": _ok(
                        "stored",
                        {
                            "type": "object",
                            "properties": {
                                "model": {"type": "string"},
                                "examples": {"type": "integer"},
                                "sha256": {"type": "string"},
                            },
                        },
                    ),
                    "400": _err("bad_eval_data: not a readable .npz"),
                    **_BODY_ERRORS,
                    **_UNKNOWN_MODEL,
                    "415": _err("unsupported_media_type: send application/octet-stream"),
                    "422": _err("bad_eval_data: x/y missing or of the wrong shape"),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/enrollment-tokens": {
            "post": _op(
                "Create an enrollment token {uses, ttl_s}",
                security=op,
                body=_json_body(
                    {
                        "type": "object",
                        "properties": {
                            "uses": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                            "ttl_s": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": 365 * 86400,
                            },
                        },
                    }
                ),
                responses={
                    "201": _ok(
                        "{token, expires_at, uses}",
                        {
                            "type": "object",
                            "properties": {
                                "token": {"type": "string"},
                                "expires_at": {"type": "number"},
                                "uses": {"type": "integer"},
                            },
                        },
                    ),
                    **_json_errors(),
                    "422": _err("bad_field: uses or ttl_s out of range"),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/devices": {
            "get": _op(
                "Enrolled devices (id, reported profile, state, enrolled and last seen)",
                security=op,
                params=[
                    _query(
                        "state",
                        {
                            "type": "string",
                            "enum": ["enrolled", "eligible", "ineligible", "revoked"],
                        },
                        "only devices in this state",
                    ),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 100_000},
                        "at most this many (default 1000), oldest enrollment first",
                    ),
                ],
                responses={
                    "200": _ok(
                        "devices",
                        {
                            "type": "object",
                            "properties": {
                                "devices": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Device"},
                                }
                            },
                        },
                    ),
                    "400": _err("bad_parameter: state or limit"),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/devices/{device}/revoke": {
            "post": _op(
                "Revoke a device's token at once and free its open plans (its acknowledged "
                "updates stay); revoking twice is not an error",
                security=op,
                params=[_path("device", {"type": "string"}, "the device id (dev-…)")],
                responses={
                    "200": _ok(
                        "revoked",
                        {
                            "type": "object",
                            "properties": {
                                "device_id": {"type": "string"},
                                "state": {"const": "revoked"},
                                "assignments_freed": {"type": "integer"},
                            },
                        },
                    ),
                    "404": _err("unknown_device"),
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/devices/enroll": {
            "post": _op(
                "Exchange an enrollment token for a device id and device token",
                security=None,
                body=_json_body(
                    {
                        "type": "object",
                        "required": ["enrollment_token"],
                        "properties": {
                            "enrollment_token": {"type": "string"},
                            "profile": {"type": "object"},
                        },
                    }
                ),
                responses={
                    "201": _ok(
                        "{device_id, device_token}",
                        {
                            "type": "object",
                            "properties": {
                                "device_id": {"type": "string"},
                                "device_token": {"type": "string"},
                            },
                        },
                    ),
                    **_json_errors(),
                    "401": _err("bad_enrollment_token: unknown, used up or expired"),
                    **_STORE,
                },
            )
        },
        "/v1/devices/enroll/check": {
            "post": _op(
                "Before enrolling: the manifest of a model's training version, for a device "
                "to check its local data against (enrollment_token in the body, not spent; or "
                "an enrolled device's bearer token)",
                security=None,
                body=_json_body(
                    {
                        "type": "object",
                        "required": ["model"],
                        "properties": {
                            "model": {"type": "string", "examples": ["digits"]},
                            "enrollment_token": {"type": "string"},
                        },
                    }
                ),
                responses={
                    "200": _ok(
                        "{model, version, manifest}",
                        {
                            "type": "object",
                            "properties": {
                                "model": {"type": "string"},
                                "version": {"type": "integer"},
                                "manifest": _OBJECT,
                            },
                        },
                    ),
                    **_json_errors(),
                    "401": _err(
                        "bad_enrollment_token (unknown, used up or expired) or unauthorized"
                    ),
                    "403": _err("token of the wrong kind"),
                    **_UNKNOWN_MODEL,
                    **_LIMITED,
                    **_STORE,
                },
            )
        },
        "/v1/devices/checkin": {
            "post": _op(
                "Report state; get a plan or a retry_after (pace steering)",
                security=dev,
                body=_json_body(_CHECKIN_BODY),
                responses={
                    "200": _ok(
                        "{action: train, plan} or {action: wait, retry_after, reason}",
                        _CHECKIN_ANSWER,
                    ),
                    **_json_errors(),
                    **_UNKNOWN_MODEL,
                    **_LIMITED,
                    **_AUTH,
                    **_STORE,
                },
            )
        },
        "/v1/devices/updates": {
            "post": _op(
                "Upload an update frame; 202 once it is durable",
                security=dev,
                params=[
                    _header(
                        "Idempotency-Key",
                        {"type": "string", "pattern": "^[A-Za-z0-9._:-]{8,128}$"},
                        "the device's key for this update; a retry with the same key is "
                        "answered like the first upload",
                    ),
                    _header(
                        "Fedge-Assignment",
                        {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                        "the plan's assignment_id",
                    ),
                    _header("Fedge-Model", {"type": "string"}, "the plan's model"),
                    _header(
                        "Fedge-Base-Version",
                        {"type": "integer", "minimum": 1},
                        "the plan's version (the weights trained from)",
                    ),
                    _header(
                        "Fedge-Examples",
                        {"type": "integer", "minimum": 1},
                        "examples trained on",
                    ),
                    _header(
                        "Fedge-Clip-Bit",
                        {"type": "string", "enum": ["0", "1"]},
                        "adaptive clipping: 1 if the update's norm was within the plan's "
                        "dp.clip_norm before clipping",
                        required=False,
                    ),
                ],
                body=_bytes_body("the update frame (quantization.encode; docs/codec.md)"),
                responses={
                    "202": _ok(
                        "durable: {status, update_id, duplicate}",
                        {
                            "type": "object",
                            "required": ["status", "update_id", "duplicate"],
                            "properties": {
                                "status": {"const": "accepted"},
                                "update_id": {"type": "string"},
                                "duplicate": {"type": "boolean"},
                            },
                        },
                    ),
                    "400": _err(
                        "bad_header; clip_bit_required (adaptive clipping without Fedge-Clip-Bit)"
                    ),
                    **_BODY_ERRORS,
                    **_UNKNOWN_MODEL,
                    "409": _err(
                        "stale_update, deadline_passed, unknown_assignment, assignment_used"
                    ),
                    "415": _err("unsupported_media_type: send application/octet-stream"),
                    "422": _err("bad_update: bad frame, shapes, non-finite values, norm"),
                    **_LIMITED,
                    **_AUTH,
                    "503": _err(
                        "storage_unavailable; publication_blocked (the model cannot publish "
                        "until the operator acts: retry later with the same key)",
                        headers=_RETRY,
                    ),
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
                "Model": _MODEL_SCHEMA,
                "Version": _VERSION_SCHEMA,
                "PrivacyReport": _PRIVACY_SCHEMA,
                "PublicationProblem": _PUBLICATION_SCHEMA,
                "Plan": _PLAN_SCHEMA,
                "Device": _DEVICE_SCHEMA,
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "detail"],
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
_NO_SESSION = {"401": _err("no valid dashboard session (log in at /)")}
_CSRF_403 = _err(
    "bad_csrf: missing or wrong X-Fedge-CSRF header; bad_origin: cross-origin request"
)
_CSRF_PARAM = _header(
    "X-Fedge-CSRF",
    {"type": "string"},
    "the session's CSRF token (the dashboard page's fedge-csrf meta tag)",
)
_HTML = "text/html"


def _change(
    summary: str,
    responses: dict[str, Any],
    *,
    body: bool = False,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A state-changing dashboard call: the session cookie, its CSRF token, a same-origin
    request."""
    op = _op(
        summary,
        security=_SESSION,
        params=[*(params if params is not None else [_MODEL]), _CSRF_PARAM],
        responses={**responses, **_NO_SESSION, "403": _CSRF_403, **_STORE},
    )
    if body:
        op["requestBody"] = _json_body(
            {"type": "object", "properties": {"version": _VERSION_FIELD}}, required=False
        )
    return op


def _dashboard_paths() -> dict[str, dict[str, Any]]:
    form_again = {_HTML: {"schema": {"type": "string"}}, _JSON: {"schema": _ERROR}}
    return {
        "/": {
            "get": _op(
                "The dashboard page with a session, the login form without one",
                security=None,
                responses={"200": _ok("HTML page", {"type": "string"}, content_type=_HTML)},
            )
        },
        "/login": {
            "post": _op(
                "Log in with the operator token (form field 'token'): 303 to / with an "
                "HttpOnly, SameSite=Strict session cookie (Secure over TLS); the cookie "
                "holds a random session id, never the token",
                security=None,
                body={
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"token": {"type": "string"}},
                            }
                        }
                    },
                },
                responses={
                    "303": _ok("logged in; Set-Cookie fedge_session"),
                    # The login form is a browser form: a missing or wrong token shows
                    # the form again (HTML) with the reason; an unreadable form is JSON.
                    "400": {
                        "description": "no token given (the form again, text/html) or an "
                        "unreadable form (bad_form, JSON)",
                        "content": form_again,
                    },
                    "401": {
                        "description": "wrong operator token (the form again, text/html; no "
                        "cookie)",
                        "content": {_HTML: {"schema": {"type": "string"}}},
                    },
                    "403": _err("bad_origin: cross-origin form post"),
                    "408": _BODY_ERRORS["408"],
                    "413": _err("too_large: body over 4 KiB"),
                    "415": _err("unsupported_media_type: not a urlencoded form"),
                },
            )
        },
        "/logout": {
            "post": _op(
                "End the session and clear its cookie",
                security=_SESSION,
                params=[_CSRF_PARAM],
                responses={
                    "200": _ok("{status: logged_out}", _OBJECT),
                    **_NO_SESSION,
                    "403": _CSRF_403,
                },
            )
        },
        "/dashboard/static/{name}": {
            "get": _op(
                "The dashboard's CSS and JavaScript (a fixed set of files)",
                security=None,
                params=[
                    _path(
                        "name",
                        {"type": "string", "examples": ["dashboard.js", "dashboard.css"]},
                        "a file name",
                    )
                ],
                responses={
                    "200": {
                        "description": "the file",
                        "content": {
                            t: {"schema": {"type": "string"}}
                            for t in ("text/css", "text/javascript", "image/svg+xml")
                        },
                    },
                    "404": _err("not_found: no such file"),
                },
            )
        },
        "/dashboard/api/state": {
            "get": _op(
                "Everything the dashboard draws: models (as GET /v1/models), live counters "
                "(the numbers of /metrics), devices by state and by profile, health",
                security=_SESSION,
                responses={
                    "200": _ok(
                        "{time, health, models, counters, devices}",
                        {
                            "type": "object",
                            "required": ["time", "health", "models", "counters", "devices"],
                            "properties": {
                                "time": {"type": "number"},
                                "health": _HEALTH,
                                "models": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Model"},
                                },
                                "counters": _OBJECT,
                                "devices": _OBJECT,
                            },
                        },
                    ),
                    **_NO_SESSION,
                    **_STORE,
                },
            )
        },
        "/dashboard/api/models/{model}/promote": {
            "post": _change(
                'Promote a version (as POST /v1/models/{model}/promote): {"version": v}',
                {
                    "200": _ok("promoted", _OBJECT),
                    **_json_errors(),
                    **_UNKNOWN_VERSION,
                },
                body=True,
            )
        },
        "/dashboard/api/models/{model}/rollback": {
            "post": _change(
                'Roll back (as POST /v1/models/{model}/rollback); optional {"version": v}',
                {
                    "200": _ok("rolled back", _OBJECT),
                    **_json_errors(),
                    **_UNKNOWN_VERSION,
                    "409": _err("nothing_to_roll_back"),
                },
                body=True,
            )
        },
        "/dashboard/api/models/{model}/pause": {
            "post": _change(
                "Pause training (as POST /v1/models/{model}/pause)",
                {"200": _ok("paused", _OBJECT), **_UNKNOWN_MODEL},
            )
        },
        "/dashboard/api/models/{model}/resume": {
            "post": _change(
                "Resume training (as POST /v1/models/{model}/resume)",
                {"200": _ok("resumed", _OBJECT), **_UNKNOWN_MODEL},
            )
        },
        "/dashboard/api/devices/{device}/revoke": {
            "post": _change(
                "Revoke a device (as POST /v1/devices/{device}/revoke)",
                {"200": _ok("revoked", _OBJECT), "404": _err("unknown_device")},
                params=[_path("device", {"type": "string"}, "the device id")],
            )
        },
    }


# --- secure aggregation of sync rounds (aggregation_service.secagg_rounds) ------------------

_SECAGG_REFUSALS = {
    "403": _err(
        "token of the wrong kind; not_in_round (this device is not in the round); "
        "device_mismatch (the message names another device)"
    ),
    "404": _err(
        "unknown_round (finished long ago or lost in a restart: check in again), "
        "unknown_endpoint (a step that does not exist)"
    ),
}


def _secagg_paths() -> dict[str, dict[str, Any]]:
    return {
        "/v1/devices/secagg/{round}/{step}": {
            "post": _op(
                "Send this device's SecAgg message for a step of the round named in its plan: "
                "step keys, shares, masked-input or unmask (privacy.secagg.encode_message bytes); "
                "the same bytes again are answered as a duplicate",
                security="deviceToken",
                params=[
                    _ROUND,
                    _secagg_step("sending", ["keys", "shares", "masked-input", "unmask"]),
                ],
                body=_bytes_body("privacy.secagg.encode_message bytes"),
                responses={
                    "200": _ok(
                        "{status: received | duplicate, round_id, phase}",
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["received", "duplicate"]},
                                "round_id": {"type": "string"},
                                "phase": {"type": "string"},
                            },
                        },
                    ),
                    "400": _err("bad_secagg_message"),
                    "409": _err("wrong_phase, already_sent, round_abandoned"),
                    **_BODY_ERRORS,
                    "415": _err("unsupported_media_type: send application/octet-stream"),
                    "422": _err("protocol_violation (the device is out of the round)"),
                    **_LIMITED,
                    "401": _AUTH["401"],
                    **_SECAGG_REFUSALS,
                },
            ),
            "get": _op(
                "Fetch the server's SecAgg message for this device once a phase closed: "
                "step setup, shares or unmask; 204 with Retry-After while it is open",
                security="deviceToken",
                params=[_ROUND, _secagg_step("fetching", ["setup", "shares", "unmask"])],
                responses={
                    "200": _ok(
                        "the message",
                        {"type": "string", "format": "binary"},
                        content_type=_BYTES,
                    ),
                    "204": _ok("not yet: ask again after Retry-After seconds", headers=_RETRY),
                    "409": _err("round_closed, wrong_phase, excluded, round_abandoned"),
                    **_LIMITED,
                    "401": _AUTH["401"],
                    **_SECAGG_REFUSALS,
                },
            ),
        }
    }
