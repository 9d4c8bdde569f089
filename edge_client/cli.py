"""``fedge agent``: init (check the data, enroll), run, check, status, install-service.

Heavy modules (the agent, aiohttp, NumPy, the TFLite runtime) are imported
inside the command functions: building the ``fedge`` parser stays cheap on a
device, hence the file-wide PLC0415 exemption.
"""
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from edge_client.errors import ConfigError
from fedge.server_url import SERVER_HELP, server_arg

ENV_CONFIG = "FEDGE_AGENT_CONFIG"
DEFAULT_STATE_DIR = "~/.local/state/fedge-agent"
DEFAULT_CONFIG = "~/.config/fedge/agent.yaml"

# syslog priorities, which journald reads from a "<N>" line prefix.
_PRIORITY = {
    logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<6>edge_client.agent: message``: journald adds the timestamp and unit."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if verbose:
        root.setLevel(logging.DEBUG)
    if os.environ.get("JOURNAL_STREAM"):
        for handler in root.handlers:
            handler.setFormatter(JournalFormatter())


def config_path(args: argparse.Namespace) -> Path:
    value = args.config or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    return Path(value).expanduser()


def register(subparsers: Any) -> None:
    agent = subparsers.add_parser(
        "agent", help="the device agent: enroll, run, check data, status, install as a service",
        description="Run fedge's on-device training agent (docs/agent.md).",
    )
    commands = agent.add_subparsers(dest="agent_command", metavar="AGENT_COMMAND")
    agent.set_defaults(func=lambda args: (agent.print_help(sys.stderr), 2)[1])

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help=f"agent config YAML (default ${ENV_CONFIG} or "
                       f"{DEFAULT_CONFIG})")
        p.add_argument("--verbose", action="store_true", help="log debug messages")

    init = commands.add_parser(
        "init", help="check the local data against the model, enroll, write the config")
    common(init)
    init.add_argument("--server", required=True, type=server_arg, help=SERVER_HELP)
    init.add_argument("--enroll-token", required=True, help="enrollment token from the operator")
    init.add_argument("--model", required=True, help="model name to train")
    init.add_argument("--data", help="a .npz directory or file, a .csv, or module:function "
                      "(default: <state-dir>/data, a .npz directory)")
    init.add_argument("--label-column", help="label column for CSV data")
    init.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="state directory")
    init.add_argument("--profile", default=None, help="device profile name (default: hostname)")
    init.add_argument("--runtime-python", help="interpreter for the training worker")
    init.add_argument("--force", action="store_true", help="re-enroll over an existing identity")
    init.set_defaults(func=cmd_init)

    run = commands.add_parser(
        "run", help="run the agent (until stopped, or one cycle)",
        description="Run the agent until SIGTERM/SIGINT, or one cycle with --once.",
        epilog="exit status with --once: 0 an update was uploaded; 3 nothing to do now "
               "(not eligible, paced by the server, no task); 2 a mistake to fix (config, "
               "local data, unknown model); 1 any other error (network, server, crash).",
    )
    common(run)
    run.add_argument("--once", action="store_true",
                     help="one full cycle; print its result as JSON; exit status as below")
    run.add_argument("--ignore-eligibility", action="store_true",
                     help="train even if the device is busy, on battery or metered (to try the "
                          "agent on a development machine; logged every cycle; refused by the "
                          "installed service)")
    run.set_defaults(func=cmd_run)

    check = commands.add_parser(
        "check", help="check the local data against the model's current version",
        description="Load the local data as training does and check it against the manifest "
                    "of the model's training version on the server (feature shape, label "
                    "shape and range, .npz keys, CSV columns). Exit 0 if it fits, 2 if not.",
    )
    common(check)
    check.set_defaults(func=cmd_check)

    status = commands.add_parser("status", help="state, eligibility and reasons, last results")
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    install = commands.add_parser("install-service", help="write a systemd unit")
    common(install)
    install.add_argument("--user", action="store_true", help="a user unit (no root needed)")
    install.add_argument("--output", help="write the unit here instead of the systemd directory")
    install.set_defaults(func=cmd_install_service)


def _load(args: argparse.Namespace) -> Any:
    from edge_client.config import AgentConfig

    setup_logging(getattr(args, "verbose", False))
    return AgentConfig.load(config_path(args))


def cmd_init(args: argparse.Namespace) -> int:
    from edge_client.config import AgentConfig, DataConfig, RuntimeConfig
    from edge_client.protocol import ProtocolClient
    from edge_client.storage import AtomicWriter, Identity, StateDir
    from edge_client.transport import HttpTransport

    setup_logging(args.verbose)
    path = config_path(args)
    state_dir = Path(args.state_dir).expanduser().resolve()
    state = StateDir(state_dir)
    if state.identity_path.exists() and not args.force:
        raise ConfigError(f"{state.identity_path} exists: this device is enrolled (use --force)")
    if args.data:
        data = DataConfig.from_cli(args.data, args.label_column)
        data_later = False
    else:
        (state_dir / "data").mkdir(parents=True, exist_ok=True)
        data = DataConfig(kind="npz", path=str(state_dir / "data"))
        # Data may arrive after enrollment: check the model now, the data later.
        data_later = not any((state_dir / "data").glob("*.npz"))
    profile: dict[str, Any] = {"name": args.profile or socket.gethostname()}
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        profile["memory_mb"] = int(pages // (1 << 20))
    except (ValueError, OSError):
        pass
    config = AgentConfig.from_dict({
        "server": args.server, "model": args.model, "state_dir": str(state_dir),
        "data": data.to_dict() | {"python_path": list(data.python_path)},
        "profile": profile,
    })
    if args.runtime_python:
        config = AgentConfig(**{**config.__dict__, "runtime": RuntimeConfig(
            python=args.runtime_python)})

    async def enroll() -> tuple[str, str, str | None]:
        transport = HttpTransport(config.server, timeout_s=config.request_timeout_s)
        client = ProtocolClient(transport)
        try:
            # Check the model and the data first: a typo or data that does not
            # fit must not spend the enrollment token.
            summary = await _check_before_enrolling(
                client, config, args.enroll_token, data=not data_later)
            device_id, token = await client.enroll(args.enroll_token, profile)
            return device_id, token, summary
        finally:
            await transport.close()

    from fedge.transport import TransportError

    try:
        device_id, token, summary = asyncio.run(enroll())
    except TransportError as exc:
        raise ConfigError(f"--server: cannot reach {config.server} ({exc})") from exc
    state.prepare()
    state.save_identity(Identity(device_id, token, config.server, time.time()))
    AtomicWriter().write_bytes(path, config.to_yaml().encode())
    print(f"enrolled as {device_id}")
    print(f"config: {path}")
    print(f"state:  {state_dir}")
    if summary:
        print(summary)
    return 0


async def _check_before_enrolling(client: Any, config: Any, enrollment_token: str | None,
                                  *, data: bool = True) -> str | None:
    """The model's training manifest from the server, and the local data checked
    against it; a summary line, or None if the server cannot tell (an older
    one). Raises ConfigError for an unknown model, DataError for data that
    does not fit."""
    from edge_client.datacheck import check_data
    from edge_client.errors import ServerError

    try:
        answer = await client.enroll_check(config.model, enrollment_token)
    except ServerError as exc:
        if exc.code == "unknown_model":
            raise ConfigError(
                f"--model: the server {config.server} has no model {config.model!r} (the "
                "operator's `fedge models list` shows the names); nothing was enrolled"
                + (" and the enrollment token is unused" if enrollment_token else "")
            ) from exc
        raise
    if answer is None:
        logging.getLogger(__name__).warning(
            "the server cannot check the data before enrollment; it is checked before each task")
        return None
    version, manifest = answer
    if not data:
        return (f"model {config.model!r} version {version} found; no data yet in "
                f"{config.data.path} (`fedge agent check` checks it once it is there)")
    report = await asyncio.to_thread(check_data, config.data, manifest)
    return report.summary(config.model, version)


def cmd_check(args: argparse.Namespace) -> int:
    from edge_client.protocol import ProtocolClient
    from edge_client.storage import StateDir
    from edge_client.transport import HttpTransport
    from fedge.transport import TransportError

    config = _load(args)
    identity = StateDir(config.state_dir).load_identity()
    if identity is None:
        raise ConfigError(f"no device identity in {config.state_dir} (run `fedge agent init`)")

    async def check() -> str | None:
        transport = HttpTransport(config.server, timeout_s=config.request_timeout_s)
        try:
            return await _check_before_enrolling(
                ProtocolClient(transport, identity.device_token), config, None)
        finally:
            await transport.close()

    try:
        summary = asyncio.run(check())
    except TransportError as exc:
        raise ConfigError(f"cannot reach {config.server} ({exc})") from exc
    print(summary or "the server cannot send the model's manifest; nothing was checked")
    return 0 if summary else 1


def build_agent(config: Any, *, ignore_eligibility: bool = False) -> Any:
    from edge_client.agent import Agent
    from edge_client.eligibility import build_provider
    from edge_client.trainer import InProcessTrainer, ProcessTrainer, Trainer
    from edge_client.transport import HttpTransport
    from fedge.clock import SystemClock

    clock = SystemClock()
    trainer: Trainer
    if config.runtime.isolation == "inprocess":
        trainer = InProcessTrainer(config.runtime.name)
    else:
        trainer = ProcessTrainer(
            config.runtime.python, config.runtime.name, config.runtime.num_threads
        )
    return Agent(
        config,
        clock=clock,
        transport=HttpTransport(config.server, timeout_s=config.request_timeout_s),
        provider=build_provider(config.eligibility, clock),
        trainer=trainer,
        ignore_eligibility=ignore_eligibility,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from edge_client.service_unit import SERVICE_ENV

    config = _load(args)
    if args.ignore_eligibility and os.environ.get(SERVICE_ENV):
        raise ConfigError(
            f"--ignore-eligibility is refused in the installed service ({SERVICE_ENV} is set): "
            "an unattended agent must respect the device's conditions"
        )

    async def main() -> int:
        agent = build_agent(config, ignore_eligibility=args.ignore_eligibility)
        if args.ignore_eligibility:
            logging.getLogger("edge_client.agent").warning(
                "--ignore-eligibility: training regardless of power, load, network and hours"
            )
        try:
            if args.once:
                result = await agent.run_cycle()
                print(json.dumps(result.to_dict(), sort_keys=True))
                return int(result.outcome.exit_code)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await agent.run_forever(stop)
            return 0
        finally:
            await agent.close()

    return asyncio.run(main())


def cmd_status(args: argparse.Namespace) -> int:
    from edge_client.eligibility import Policy, build_provider
    from edge_client.storage import StateDir
    from fedge.clock import SystemClock

    config = _load(args)
    state = StateDir(config.state_dir)
    saved = state.load_status() or {}
    identity = state.load_identity()
    clock = SystemClock()
    device = asyncio.run(build_provider(config.eligibility, clock).read())
    now = Policy(config.policy, clock).evaluate(device)
    report = {
        "device_id": identity.device_id if identity else None,
        "server": config.server,
        "model": config.model,
        "state": saved.get("state", "never run"),
        "runtime": saved.get("runtime"),
        "cached_version": saved.get("cached_version"),
        "queue_length": state.queue_length(),
        "eligible_now": now.eligible,
        "reasons_now": list(now.reasons),
        "device_state": now.state.to_dict(),
        "pending_reasons": saved.get("pending_reasons", []),
        "last_results": saved.get("last_results", [])[-5:],
    }
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    print(f"device:      {report['device_id'] or 'not enrolled'} → {config.server}")
    print(f"model:       {config.model} (cached version {report['cached_version']})")
    print(f"state:       {report['state']}   runtime: {report['runtime']}")
    why = ", ".join(now.reasons) or "all conditions met"
    print(f"eligible:    {'yes' if now.eligible else 'no'} ({why})")
    print(f"queue:       {report['queue_length']} upload(s) waiting")
    for result in report["last_results"]:
        detail = result.get("detail") or ", ".join(result.get("reasons", []))
        print(f"  {result.get('outcome'):<16} v{result.get('version', '-')} "
              f"examples={result.get('examples', 0)} {detail}")
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from edge_client.service_unit import default_unit_path, unit_text

    config = config_path(args)
    _load(args)  # refuse to install a service for a config that does not load
    target = Path(args.output).expanduser() if args.output else default_unit_path(args.user)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(unit_text(config.resolve(), user=args.user), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror} (try --user)") from exc
    scope = "--user " if args.user else ""
    print(f"wrote {target}")
    print(f"enable it with: systemctl {scope}daemon-reload && "
          f"systemctl {scope}enable --now {target.name}")
    return 0
