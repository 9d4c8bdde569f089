"""The device side of docs/protocol.md: requests, answer parsing, error mapping.

Every answer is checked before use. A garbled or truncated body is a
retryable :class:`ServerError` (the server or a proxy misbehaved), a 4xx is
final for that request, 429 carries the server's ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_client.errors import EnrollmentError, ServerError, UnsafeNameError
from edge_client.paths import safe_name, safe_sha256
from fedge.manifest import Manifest, ManifestError
from fedge.transport import Response, Transport, TransportError

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"


def _retry_after(resp: Response) -> float | None:
    value = resp.header("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from this server; fall back to backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def error_code(resp: Response) -> tuple[str | None, str]:
    try:
        data = resp.json()
    except TransportError:
        return None, resp.body[:200].decode(errors="replace")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        return (str(err.get("code")) if err.get("code") else None), str(err.get("detail", ""))
    return None, str(data)[:200]


def check_status(resp: Response, what: str, ok: tuple[int, ...] = (200,)) -> None:
    """Raise ServerError unless the status is one of ``ok``."""
    if resp.status in ok:
        return
    code, detail = error_code(resp)
    retryable = resp.status == 429 or resp.status >= 500
    raise ServerError(
        f"{what}: HTTP {resp.status} {code or ''} {detail}".strip(),
        status=resp.status,
        code=code,
        retryable=retryable,
        retry_after=_retry_after(resp) if resp.status in (429, 503) else None,
    )


def _json_object(resp: Response, what: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except TransportError as exc:
        raise ServerError(f"{what}: {exc}", status=resp.status, retryable=True) from exc
    if not isinstance(data, dict):
        raise ServerError(f"{what}: expected a JSON object", status=resp.status, retryable=True)
    return data


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ServerError(f"{what}: field {key!r} missing or of the wrong type", retryable=True)
    return value


@dataclass(frozen=True)
class ClientPlan:
    epochs: int
    batch_size: int
    learning_rate: float
    max_examples: int | None
    fedprox_mu: float


@dataclass(frozen=True)
class PlanDP:
    """The plan's ``dp`` block (docs/protocol.md): what differential privacy
    asks of this device for this assignment. Plans are authoritative: an
    agent that cannot honour it must not upload."""

    mode: str  # "central": the server adds noise; "local": this device does
    clip_norm: float  # the L2 bound of the version being trained from
    noise_multiplier: float  # local: noise std = noise_multiplier × clip_norm per coordinate
    clip_bit: bool  # adaptive clipping: send Fedge-Clip-Bit with the update

    @classmethod
    def parse(cls, data: Any) -> PlanDP | None:
        what = "check-in plan.dp"
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ServerError(f"{what}: expected an object", retryable=True)
        mode = _field(data, "mode", str, what)
        clip = float(_field(data, "clip_norm", (int, float), what))
        z = float(data.get("noise_multiplier") or 0.0)
        bit = data.get("clip_bit", False)
        if mode not in ("central", "local") or not (math.isfinite(clip) and clip > 0):
            raise ServerError(f"{what}: bad mode {mode!r} or clip_norm {clip!r}", retryable=True)
        if not isinstance(bit, bool) or not (math.isfinite(z) and z >= 0):
            raise ServerError(f"{what}: bad clip_bit or noise_multiplier", retryable=True)
        if mode == "local" and z <= 0:
            raise ServerError(f"{what}: local DP needs noise_multiplier > 0", retryable=True)
        return cls(mode, clip, z, bit)


@dataclass(frozen=True)
class Plan:
    assignment_id: str
    model: str
    version: int
    graph_sha256: str
    weights_sha256: str
    urls: Mapping[str, str]
    client: ClientPlan
    codec: Mapping[str, Any]
    deadline_s: float
    deadline_at: float | None
    dp: PlanDP | None = None
    # Secure aggregation round (edge_client.secagg parses it); None: upload a codec frame.
    secagg: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, data: Any) -> Plan:
        what = "check-in plan"
        if not isinstance(data, dict):
            raise ServerError(f"{what}: expected an object", retryable=True)
        urls = _field(data, "urls", dict, what)
        for key in ("manifest", "model", "weights"):
            _field(urls, key, str, f"{what}.urls")
        for key, url in urls.items():
            # Paths on the server the agent enrolled with, never another host:
            # the device token goes with every request.
            if isinstance(url, str) and (not url.startswith("/") or url.startswith("//")):
                raise ServerError(
                    f"refusing the plan: {what}.urls.{key}: {url!r} is not a path on this server",
                    code="unsafe_plan", retryable=True,
                )
        try:
            # The model name and the hashes become file names in the state directory.
            model = safe_name(_field(data, "model", str, what), f"{what}.model")
            graph_sha = safe_sha256(_field(data, "graph_sha256", str, what), f"{what}.graph_sha256")
            weights_sha = safe_sha256(
                _field(data, "weights_sha256", str, what), f"{what}.weights_sha256"
            )
        except UnsafeNameError as exc:
            raise ServerError(f"refusing the plan: {exc}", code="unsafe_plan",
                              retryable=True) from exc
        client = _field(data, "client", dict, what)
        epochs = _field(client, "epochs", int, f"{what}.client")
        batch = _field(client, "batch_size", int, f"{what}.client")
        lr = _field(client, "learning_rate", (int, float), f"{what}.client")
        max_examples = client.get("max_examples")
        if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
            raise ServerError(f"{what}.client: bad max_examples {max_examples!r}", retryable=True)
        if epochs < 1 or batch < 1 or not math.isfinite(lr) or lr <= 0:
            raise ServerError(f"{what}.client: epochs/batch_size/learning_rate out of range")
        deadline_s = _field(data, "deadline_s", (int, float), what)
        deadline_at = data.get("deadline_at")
        return cls(
            assignment_id=_field(data, "assignment_id", str, what),
            model=model,
            version=_field(data, "version", int, what),
            graph_sha256=graph_sha,
            weights_sha256=weights_sha,
            urls={k: v for k, v in urls.items() if isinstance(v, str)},
            client=ClientPlan(
                epochs=epochs,
                batch_size=batch,
                learning_rate=float(lr),
                max_examples=max_examples,
                fedprox_mu=float(client.get("fedprox_mu") or 0.0),
            ),
            codec=dict(_field(data, "codec", dict, what)),
            deadline_s=float(deadline_s),
            deadline_at=float(deadline_at) if isinstance(deadline_at, int | float) else None,
            dp=PlanDP.parse(data.get("dp")),
            secagg=dict(data["secagg"]) if isinstance(data.get("secagg"), dict) else None,
        )


@dataclass(frozen=True)
class CheckinAnswer:
    action: str  # "train" or "wait"
    retry_after: float
    reason: str | None
    plan: Plan | None


class ProtocolClient:
    """The device endpoints, over any Transport."""

    def __init__(self, transport: Transport, token: str | None = None) -> None:
        self.transport = transport
        self.token = token

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def enroll(self, enrollment_token: str, profile: Mapping[str, Any]) -> tuple[str, str]:
        body = {"enrollment_token": enrollment_token, "profile": dict(profile)}
        resp = await self.transport.request(
            "POST", "/v1/devices/enroll", headers={"Content-Type": "application/json"},
            body=_dumps(body),
        )
        if resp.status in (400, 401, 403, 404, 409, 410, 422):
            code, detail = error_code(resp)
            raise EnrollmentError(f"enrollment refused (HTTP {resp.status} {code}): {detail}")
        check_status(resp, "enroll", ok=(200, 201))
        data = _json_object(resp, "enroll")
        return _field(data, "device_id", str, "enroll"), _field(data, "device_token", str, "enroll")

    async def enroll_check(
        self, model: str, enrollment_token: str | None = None
    ) -> tuple[int, Manifest] | None:
        """The training version and manifest of ``model``, asked with an
        enrollment token (checked by the server, not spent) or, without one,
        this client's device token. None from a server that predates the
        route. An unknown model is a final ServerError with code
        ``unknown_model``; a bad enrollment token an EnrollmentError."""
        body: dict[str, Any] = {"model": model}
        if enrollment_token is not None:
            body["enrollment_token"] = enrollment_token
        resp = await self.transport.request(
            "POST", "/v1/devices/enroll/check",
            headers={"Content-Type": "application/json",
                     **({} if enrollment_token is not None else self._auth())},
            body=_dumps(body),
        )
        code, detail = error_code(resp) if resp.status >= 400 else (None, "")
        if resp.status in (404, 405) and code != "unknown_model":
            return None  # an older server: no way to check before enrolling
        if resp.status == 401 and code == "bad_enrollment_token":
            raise EnrollmentError(f"enrollment refused (HTTP 401 {code}): {detail}")
        check_status(resp, "enroll check")
        data = _json_object(resp, "enroll check")
        version = _field(data, "version", int, "enroll check")
        try:
            manifest = Manifest.from_dict(data.get("manifest"))
        except ManifestError as exc:
            raise ServerError(f"enroll check: the server's manifest is invalid: {exc}") from exc
        return version, manifest

    async def checkin(self, payload: Mapping[str, Any]) -> CheckinAnswer:
        resp = await self.transport.request(
            "POST", "/v1/devices/checkin",
            headers={"Content-Type": "application/json", **self._auth()},
            body=_dumps(dict(payload)),
        )
        check_status(resp, "check-in")
        data = _json_object(resp, "check-in")
        action = data.get("action")
        if action == "wait":
            retry_after = data.get("retry_after")
            if (
                isinstance(retry_after, bool)
                or not isinstance(retry_after, int | float)
                or not math.isfinite(retry_after)
                or retry_after < 0
            ):
                raise ServerError("check-in: 'wait' without a valid retry_after", retryable=True)
            reason = data.get("reason")
            return CheckinAnswer("wait", float(retry_after), str(reason) if reason else None, None)
        if action == "train":
            return CheckinAnswer("train", 0.0, None, Plan.parse(data.get("plan")))
        raise ServerError(f"check-in: unknown action {action!r}", retryable=True)

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        merged = {**self._auth(), **(headers or {})}
        return await self.transport.request("GET", path, headers=merged)

    async def upload(self, headers: Mapping[str, str], payload: bytes) -> dict[str, Any]:
        resp = await self.transport.request(
            "POST", "/v1/devices/updates", headers={**self._auth(), **headers}, body=payload
        )
        check_status(resp, "upload", ok=(200, 201, 202))
        return _json_object(resp, "upload")


def _dumps(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()
