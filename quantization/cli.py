"""``fedge codec``: look inside a frame, or check a codec spec file.

    fedge codec inspect update.bin [--json] [--max-decoded-bytes N]
    fedge codec check-spec codec.yaml

Both validate fully (a frame is parsed exactly as the service would) and
report a bad input as a ``CodecError`` message with exit status 2.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from quantization.api import inspect
from quantization.errors import CodecError
from quantization.spec import CodecSpec


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CodecError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _inspect(args: argparse.Namespace) -> int:
    info = inspect(_read(args.path), max_decoded_bytes=args.max_decoded_bytes)
    if args.json:
        out: dict[str, Any] = asdict(info)
        out["spec"] = info.spec.to_dict()
        print(json.dumps(out, indent=2))
        return 0
    dense = 4 * info.parameters
    ratio = f"{dense / info.payload_bytes:.1f}× smaller than dense float32"
    print(f"{info.kind} frame v{info.version}: {info.payload_bytes:,} bytes, {ratio}")
    print(f"spec: {json.dumps(info.spec.to_dict(compact=True)) or '{}'}")
    norm = "n/a (XOR words)" if info.l2_norm is None else f"{info.l2_norm:.6g}"
    print(f"values: {info.nnz:,} of {info.parameters:,}; L2 norm {norm}")
    for t in info.tensors:
        bits = f"/{t.bits}-bit" if t.bits else ""
        print(
            f"  {t.name}  {list(t.shape)}  {t.source_dtype}  nnz {t.nnz:,}  "
            f"indices {t.index_coding} ({t.index_bytes:,} B)  "
            f"values {t.value_coding}{bits} ({t.value_bytes:,} B)"
        )
    return 0


def _check_spec(args: argparse.Namespace) -> int:
    try:
        data = yaml.safe_load(_read(args.path))
    except yaml.YAMLError as exc:
        raise CodecError(f"{args.path}: not valid YAML/JSON: {exc}") from exc
    if isinstance(data, dict) and set(data) == {"codec"}:
        data = data["codec"]
    spec = CodecSpec.from_dict(data)
    print(json.dumps(spec.to_dict(), indent=2))
    return 0


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a byte count, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a byte count ≥ 0, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("codec", help="inspect update/weights frames, check codec specs")
    commands = parser.add_subparsers(dest="codec_command", metavar="SUBCOMMAND", required=True)
    inspect_parser = commands.add_parser(
        "inspect", help="validate a frame and print its spec, tensor table and norm"
    )
    inspect_parser.add_argument("path", help="a frame: an uploaded update, weights or delta")
    inspect_parser.add_argument("--json", action="store_true", help="print JSON")
    inspect_parser.add_argument(
        "--max-decoded-bytes", type=_non_negative, default=None,
        help="refuse frames describing more float32 bytes than this (default 256 MiB)",
    )
    inspect_parser.set_defaults(func=_inspect)
    check = commands.add_parser(
        "check-spec", help="validate a codec spec (YAML or JSON; bare or under 'codec:')"
    )
    check.add_argument("path")
    check.set_defaults(func=_check_spec)
