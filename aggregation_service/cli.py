"""Commands: ``fedge serve``, ``fedge push``, ``fedge models …``, ``fedge enroll-token``,
``fedge eval-data put``.

The client commands are small wrappers over the operator API; the token comes
from ``--token`` or ``FEDGE_OPERATOR_TOKEN``. Heavy imports stay inside the
command functions.
"""

# Imports inside the commands are deliberate: `fedge --help` must stay light.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from aggregation_service.config import OPERATOR_TOKEN_ENV
from aggregation_service.errors import ServiceError
from fedge.server_url import SERVER_HELP, server_arg

DEFAULT_SERVER = "http://127.0.0.1:8080"


class CliError(ServiceError):
    """A client command failed: the server refused, or could not be reached."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the aggregation service",
        description="Run the aggregation service (docs/operator-guide.md). The data directory "
                    "comes from --data-dir or from data_dir in the --config file.",
    )
    p.add_argument("--data-dir", type=Path, default=None,
                   help="SQLite, blobs and update log (default: data_dir in --config)")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks one)")
    p.add_argument("--config", type=Path, default=None, help="server.yaml")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate: serve HTTPS")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    p.add_argument("--log-json", action="store_true", help="log JSON lines")
    p.set_defaults(func=cmd_serve)

    def client_args(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--server", type=server_arg, default=os.environ.get("FEDGE_SERVER", DEFAULT_SERVER),
            help=f"{SERVER_HELP}; default $FEDGE_SERVER or {DEFAULT_SERVER}",
        )
        q.add_argument(
            "--token", default=None, help=f"operator token (default ${OPERATOR_TOKEN_ENV})"
        )

    p = subparsers.add_parser("push", help="push an exported model directory as a new version")
    client_args(p)
    p.add_argument("--model", required=True, help="registry name of the model")
    p.add_argument("directory", type=Path, help="a `fedge export` output directory")
    p.set_defaults(func=cmd_push)

    p = subparsers.add_parser(
        "enroll-token", help="create a device enrollment token",
        description="Create an enrollment token for `fedge agent init --enroll-token`. The "
                    "token is printed alone on stdout (TOKEN=$(fedge enroll-token …) works); "
                    "its uses and expiry go to stderr.",
    )
    client_args(p)
    p.add_argument("--uses", type=int, default=1, help="how many devices may enroll with it")
    p.add_argument("--ttl", type=float, default=86400.0, help="seconds until it expires")
    p.add_argument("--json", action="store_true",
                   help="print the server's JSON answer instead (expires_at in Unix seconds)")
    p.set_defaults(func=cmd_enroll_token)

    p = subparsers.add_parser(
        "eval-data", help="upload held-out data every new version is evaluated on",
        description="Upload a held-out .npz (arrays x and y, as devices store their data): "
                    "the service evaluates every new version on it and shows accuracy and "
                    "loss per version (`fedge models show`, the dashboard).",
    )
    sub = p.add_subparsers(dest="eval_command", metavar="ACTION", required=True)
    q = sub.add_parser("put", help="upload FILE.npz as MODEL's evaluation data")
    client_args(q)
    q.add_argument("model", help="registry name of the model")
    q.add_argument("file", type=Path, help=".npz with arrays x and y")
    q.set_defaults(func=cmd_eval_data)

    p = subparsers.add_parser("models", help="list and manage models on a server")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="every model: live and training versions, state")
    client_args(q)
    for action, text in (
        ("show", "one model: versions, lineage, metrics, config"),
        ("pause", "stop training: check-ins are told to wait, buffers not published"),
        ("resume", "resume training after pause"),
    ):
        q = sub.add_parser(action, help=text)
        client_args(q)
        q.add_argument("model", help="registry name of the model")
    q = sub.add_parser("promote", help="make VERSION the live version (the one for inference)")
    client_args(q)
    q.add_argument("model", help="registry name of the model")
    q.add_argument("version", type=int, help="version number")
    q = sub.add_parser(
        "rollback", help="make an earlier version live again; training continues from it")
    client_args(q)
    q.add_argument("model", help="registry name of the model")
    q.add_argument("--version", type=int, default=None,
                   help="the version to return to (default: the previous live one)")
    q = sub.add_parser("config", help="show, or change with --set key=value (JSON values)")
    client_args(q)
    q.add_argument("model", help="registry name of the model")
    q.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. --set buffer_size=20 --set optimizer.name='\"fedadam\"'",
    )
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("devices", help="list enrolled devices, revoke a device's token")
    sub = p.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    q = sub.add_parser("list", help="devices: id, reported profile, state, last seen")
    client_args(q)
    q.add_argument(
        "--state",
        choices=("enrolled", "eligible", "ineligible", "revoked"),
        default=None,
        help="only devices in this state",
    )
    q.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    q = sub.add_parser(
        "revoke",
        help="revoke DEVICE's token at once and free its open plans (its acknowledged updates "
        "stay); it can enroll again only with a new enrollment token",
    )
    client_args(q)
    q.add_argument("device", help="the device id (dev-…), as `fedge devices list` shows it")
    p.set_defaults(func=cmd_devices)


def cmd_serve(args: argparse.Namespace) -> int:
    from aggregation_service.config import load_config
    from aggregation_service.server import run

    if args.data_dir is None and args.config is None:
        raise CliError("--data-dir is required (or give --config with data_dir in it)")
    config = load_config(args.config, data_dir=args.data_dir).with_overrides(
        host=args.host,
        port=args.port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        port_file=args.port_file,
        log_json=True if args.log_json else None,
    )
    if (config.tls_cert is None) != (config.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    return run(config)


def _token(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get(OPERATOR_TOKEN_ENV)
    if not token:
        raise CliError(f"no operator token: pass --token or set {OPERATOR_TOKEN_ENV}")
    return str(token)


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import aiohttp

    async def go() -> Any:
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {_token(args)}"}
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                async with session.request(
                    method, args.server.rstrip("/") + path, headers=headers, **kwargs
                ) as r:
                    text = await r.text()
                    try:
                        body = json.loads(text) if text else {}
                    except json.JSONDecodeError:
                        body = {"error": {"code": "not_json", "detail": text[:200]}}
                    if r.status >= 400:
                        err = body.get("error", {}) if isinstance(body, dict) else {}
                        code, detail = err.get("code", "?"), err.get("detail", text[:200])
                        raise CliError(f"HTTP {r.status} {code}: {detail}")
                    return body
            except aiohttp.ClientError as exc:
                raise CliError(f"cannot reach {args.server}: {exc}") from exc

    return asyncio.run(go())


def _print(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_push(args: argparse.Namespace) -> int:
    import aiohttp

    from fedge.manifest import MANIFEST_FILE, MODEL_FILE, load_model_dir

    load_model_dir(args.directory)  # local check first: a clear error before any upload
    form = aiohttp.FormData()
    form.add_field(
        "manifest",
        (args.directory / MANIFEST_FILE).read_bytes(),
        filename=MANIFEST_FILE,
        content_type="application/json",
    )
    form.add_field(
        "model",
        (args.directory / MODEL_FILE).read_bytes(),
        filename=MODEL_FILE,
        content_type="application/octet-stream",
    )
    _print(_request(args, "POST", f"/v1/models/{args.model}/versions", data=form))
    return 0


def cmd_enroll_token(args: argparse.Namespace) -> int:
    import datetime

    if args.uses < 1:
        raise CliError("--uses must be ≥ 1")
    answer = _request(
        args, "POST", "/v1/enrollment-tokens", json={"uses": args.uses, "ttl_s": args.ttl}
    )
    if args.json:
        _print(answer)
        return 0
    expires = datetime.datetime.fromtimestamp(float(answer["expires_at"]), datetime.UTC)
    print(answer["token"])
    uses = int(answer.get("uses", args.uses))
    print(f"{uses} use{'s' if uses != 1 else ''}, expires "
          f"{expires.isoformat(timespec='seconds').replace('+00:00', 'Z')}", file=sys.stderr)
    return 0


def cmd_eval_data(args: argparse.Namespace) -> int:
    import zipfile

    import numpy as np

    try:
        data = args.file.read_bytes()
        with np.load(args.file, allow_pickle=False) as npz:
            keys = set(npz.files)
    except FileNotFoundError:
        raise CliError(f"{args.file}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CliError(f"{args.file}: not a readable .npz ({exc})") from exc
    if not {"x", "y"} <= keys:
        raise CliError(f"{args.file}: expected arrays 'x' and 'y', found {sorted(keys)}")
    data = _fit_eval_data(args, data)
    _print(_request(args, "PUT", f"/v1/models/{args.model}/eval-data", data=data,
                    headers={"Content-Type": "application/octet-stream"}))
    return 0


def _fit_eval_data(args: argparse.Namespace, data: bytes) -> bytes:
    """The .npz with ``x`` reshaped to the model's input shape when its examples
    hold as many values (a flat (n, 40) for an input of (40, 1)), as devices
    reshape their own data; anything else is sent as it is, for the service
    to judge."""
    import io

    import numpy as np

    model = _request(args, "GET", f"/v1/models/{args.model}")
    version = model.get("training_version") if isinstance(model, dict) else None
    if not isinstance(version, int):
        return data
    manifest = _request(args, "GET", f"/v1/models/{args.model}/versions/{version}/manifest.json")
    shape = tuple(manifest.get("input", {}).get("shape", ())) if isinstance(manifest, dict) else ()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    x = arrays["x"]
    if not shape or x.ndim < 1 or tuple(x.shape[1:]) == shape:
        return data
    if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise CliError(f"{args.file}: examples have shape {tuple(x.shape[1:])}, model "
                       f"{args.model!r} takes {shape}")
    arrays["x"] = x.reshape((len(x), *shape))
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _patch_from_sets(items: list[str]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare word is a string
        node = patch
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return patch


def cmd_models(args: argparse.Namespace) -> int:
    action = args.models_command
    if action == "list":
        _print(_request(args, "GET", "/v1/models"))
    elif action == "show":
        _print(_request(args, "GET", f"/v1/models/{args.model}"))
    elif action in ("pause", "resume"):
        _print(_request(args, "POST", f"/v1/models/{args.model}/{action}"))
    elif action == "promote":
        _print(
            _request(
                args, "POST", f"/v1/models/{args.model}/promote", json={"version": args.version}
            )
        )
    elif action == "rollback":
        body = {"version": args.version} if args.version is not None else {}
        _print(_request(args, "POST", f"/v1/models/{args.model}/rollback", json=body))
    elif action == "config":
        if args.set:
            _print(
                _request(
                    args,
                    "PATCH",
                    f"/v1/models/{args.model}/config",
                    json=_patch_from_sets(args.set),
                )
            )
        else:
            _print(_request(args, "GET", f"/v1/models/{args.model}/config"))
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    if args.devices_command == "list":
        if not 1 <= args.limit <= 100_000:
            raise CliError("--limit must be 1–100000")
        query = f"?limit={args.limit}" + (f"&state={args.state}" if args.state else "")
        _print(_request(args, "GET", f"/v1/devices{query}"))
    else:
        device = urllib.parse.quote(args.device, safe="")
        _print(_request(args, "POST", f"/v1/devices/{device}/revoke"))
    return 0
