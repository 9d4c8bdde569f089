"""``fedge simulate`` and ``fedge demo``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from device_profiles.errors import SimulationError
from fedge.server_url import SERVER_HELP, server_arg


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser(
        "simulate", help="simulate a device fleet against the real service on a virtual clock",
        description="Run real fedge agents (one per simulated device) against the real "
                    "aggregation service on a virtual clock; training is real TFLite.",
    )
    sim.add_argument("fleet", help="a fleet YAML file, or the name of a built-in fleet "
                     f"({', '.join(builtin_fleets())}); see docs/simulation.md")
    sim.add_argument("--out", type=Path, required=True, help="report directory")
    sim.add_argument("--baseline", action="store_true",
                     help="also train the same model centrally on the fleet's dataset, with the "
                          "same sequential steps and with the same examples, and report both")
    sim.add_argument("--compare", action="store_true",
                     help="run async (FedBuff) and sync rounds on the same fleet and seed")
    sim.add_argument("--mode", choices=["async", "sync"], help="override the fleet's server.mode")
    sim.add_argument("--server", metavar="URL", type=server_arg,
                     help="use a running `fedge serve` over HTTP instead of the in-process app: "
                          + SERVER_HELP)
    sim.add_argument("--token", help="operator token for --server (default: FEDGE_OPERATOR_TOKEN)")
    sim.add_argument("--ray", action="store_true", help="train on local Ray workers")
    sim.add_argument("--ray-address", help="train on a Ray cluster at this address")
    sim.add_argument("--model-dir", type=Path, help="use this export instead of exporting")
    sim.add_argument("--workdir", type=Path, help="keep the run's service and device state here")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim.set_defaults(func=run_simulate)

    demo = subparsers.add_parser(
        "demo", help="a mixed fleet of a few hundred devices learning digits (a few minutes)",
    )
    demo.add_argument("--out", type=Path, help="report directory (default: a temporary one)")
    demo.add_argument("--devices", type=int, help="fleet size (default: the demo fleet's)")
    demo.add_argument("--hours", type=float, help="virtual hours (default: the demo fleet's)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=run_demo)


# Hundreds of simulated agents and the service log every state transition at
# INFO; in a simulation that is tens of thousands of lines that bury the
# progress bar. Keep warnings; `fedge -v` shows everything.
_FLEET_LOGGERS = ("edge_client", "aggregation_service", "aiohttp.access", "quantization")


def _quiet_fleet_logs(args: argparse.Namespace) -> None:
    if not getattr(args, "verbose", False):
        for name in _FLEET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # A simulated agent's warnings are the simulated faults themselves
        # (lost packets, 429s), already counted in the report's metrics.
        logging.getLogger("edge_client").setLevel(logging.ERROR)


def run_simulate(args: argparse.Namespace) -> int:
    from device_profiles.fleet import load_fleet  # noqa: PLC0415
    from device_profiles.sim.runner import SimOptions  # noqa: PLC0415
    from device_profiles.simulate import simulate  # noqa: PLC0415

    _quiet_fleet_logs(args)
    fleet = load_fleet(resolve_fleet(args.fleet))
    if args.server and (args.ray or args.ray_address):
        raise SimulationError("--server and --ray cannot be combined (choose one)")
    token = args.token or os.environ.get("FEDGE_OPERATOR_TOKEN")
    if args.server and not token:
        raise SimulationError("--server needs an operator token (--token or FEDGE_OPERATOR_TOKEN)")
    if args.model_dir is not None and not (args.model_dir / "manifest.json").is_file():
        raise SimulationError(f"--model-dir {args.model_dir}: no manifest.json (a `fedge export` "
                              "directory is expected)")
    options = SimOptions(
        out=args.out, compare=args.compare, mode=args.mode, server_url=args.server,
        operator_token=token, progress=not args.no_progress, workdir=args.workdir,
        ray=args.ray, ray_address=args.ray_address,
        model_dir=args.model_dir,
    )
    report = simulate(fleet, options)
    try:
        if args.baseline:
            from device_profiles.baseline import baseline_section  # noqa: PLC0415

            section = baseline_section(report.prepared, report.results)
            with report.summary.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(section) + "\n")
    finally:
        report.prepared.cleanup()
    print(report.summary.read_text(encoding="utf-8"))
    print(f"report: {report.summary}")
    return 0


def builtin_fleets() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "fleets").glob("*.yaml"))


def resolve_fleet(text: str) -> Path:
    """A fleet file, or a built-in fleet's name (``demo``): `fedge simulate demo`
    works from any directory, not only inside a checkout."""
    path = Path(text)
    if path.is_file() or "/" in text or path.suffix in (".yaml", ".yml"):
        return path  # a file, or meant as one: load_fleet says what is wrong with it
    if text in builtin_fleets():
        return Path(__file__).parent / "fleets" / f"{text}.yaml"
    raise SimulationError(
        f"{text}: no such fleet file, and no built-in fleet of that name (built in: "
        f"{', '.join(builtin_fleets())})"
    )


def run_demo(args: argparse.Namespace) -> int:
    from device_profiles.demo import demo  # noqa: PLC0415

    _quiet_fleet_logs(args)
    if args.devices is not None and args.devices < 1:
        raise SimulationError("--devices: expected a positive number of devices")
    if args.hours is not None and not 0 < args.hours <= 24 * 30:
        raise SimulationError("--hours: expected virtual hours in (0, 720]")
    return demo(out=args.out, devices=args.devices, hours=args.hours,
                progress=not args.no_progress)
