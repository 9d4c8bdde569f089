"""``python -m aggregation_service serve|push|models|enroll-token …``: the
service's commands without the rest of the ``fedge`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from aggregation_service import cli
from fedge.errors import FedgeError


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m aggregation_service")
    cli.register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result: int = args.func(args)
    except FedgeError as exc:
        print(f"fedge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result


sys.exit(main())
