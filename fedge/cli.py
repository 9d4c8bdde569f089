"""The ``fedge`` command line.

Each package contributes its subcommands through a ``register(subparsers)``
function in its own ``cli`` module. The modules are imported when the parser
is built, so they must keep heavy imports (TensorFlow above all) inside the
command functions: ``fedge agent`` runs on a device that has no TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from fedge import __version__
from fedge.errors import FedgeError

# Modules that provide ``register(subparsers)``; each adds one or more commands.
COMMAND_MODULES: tuple[str, ...] = (
    "fedge.bench",
    "model_export.cli",
    "aggregation_service.cli",
    "edge_client.cli",
    "device_profiles.cli",
    "quantization.cli",
    "privacy.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedge",
        description="On-device federated training: export, serve, run agents, simulate fleets.",
    )
    parser.add_argument("--version", action="version", version=f"fedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # TensorFlow's C++ and absl chatter (CUDA probing, SavedModel loading)
        # drowns the user's output; it is still there with --verbose.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for noisy in ("absl", "tensorflow"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = func(args)
    except FedgeError as exc:
        print(f"fedge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`fedge models show … | head`): not an error of
        # ours. Point stdout at /dev/null so the interpreter's final flush
        # cannot raise again, and exit like a process killed by SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    return result
