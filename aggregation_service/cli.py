"""Commands: ``fedge serve``, ``fedge push``, ``fedge models …``, ``fedge enroll-token``.

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
from pathlib import Path
from typing import Any

from aggregation_service.config import OPERATOR_TOKEN_ENV
from aggregation_service.errors import ServiceError

DEFAULT_SERVER = "http://127.0.0.1:8080"


class CliError(ServiceError):
    """A client command failed: the server refused, or could not be reached."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("serve", help="run the aggregation service")
    p.add_argument("--data-dir", type=Path, required=True, help="SQLite, blobs and update log")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks one)")
    p.add_argument("--config", type=Path, default=None, help="server.yaml")
    p.add_argument("--tls-cert", type=Path, default=None)
    p.add_argument("--tls-key", type=Path, default=None)
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    p.add_argument("--log-json", action="store_true", help="log JSON lines")
    p.set_defaults(func=cmd_serve)

    def client_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--server", default=os.environ.get("FEDGE_SERVER", DEFAULT_SERVER))
        q.add_argument(
            "--token", default=None, help=f"operator token (default ${OPERATOR_TOKEN_ENV})"
        )

    p = subparsers.add_parser("push", help="push an exported model directory as a new version")
    client_args(p)
    p.add_argument("--model", required=True, help="registry name of the model")
    p.add_argument("directory", type=Path, help="a `fedge export` output directory")
    p.set_defaults(func=cmd_push)

    p = subparsers.add_parser("enroll-token", help="create a device enrollment token")
    client_args(p)
    p.add_argument("--uses", type=int, default=1)
    p.add_argument("--ttl", type=float, default=86400.0, help="seconds")
    p.set_defaults(func=cmd_enroll_token)

    p = subparsers.add_parser("models", help="list and manage models on a server")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    q = sub.add_parser("list")
    client_args(q)
    for action in ("show", "pause", "resume"):
        q = sub.add_parser(action)
        client_args(q)
        q.add_argument("model")
    q = sub.add_parser("promote")
    client_args(q)
    q.add_argument("model")
    q.add_argument("version", type=int)
    q = sub.add_parser("rollback")
    client_args(q)
    q.add_argument("model")
    q.add_argument("--version", type=int, default=None)
    q = sub.add_parser("config", help="show, or change with --set key=value (JSON values)")
    client_args(q)
    q.add_argument("model")
    q.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. --set buffer_size=20 --set optimizer.name='\"fedadam\"'",
    )
    p.set_defaults(func=cmd_models)


def cmd_serve(args: argparse.Namespace) -> int:
    from aggregation_service.config import load_config
    from aggregation_service.server import run

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
        headers = {"Authorization": f"Bearer {_token(args)}"}
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
    if args.uses < 1:
        raise CliError("--uses must be ≥ 1")
    _print(
        _request(args, "POST", "/v1/enrollment-tokens", json={"uses": args.uses, "ttl_s": args.ttl})
    )
    return 0


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
