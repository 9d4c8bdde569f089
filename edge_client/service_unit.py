"""``fedge agent install-service``: a systemd unit that keeps the agent running.

The unit restarts the agent on failure (with a pause, so a persistent fault
cannot become a tight crash loop), runs it at the lowest CPU and I/O priority,
and logs to the journal (the agent's log lines carry syslog priorities there).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

UNIT_NAME = "fedge-agent.service"
# Set in the unit: `fedge agent run` refuses --ignore-eligibility when it sees
# it, so an installed agent always respects the device owner's conditions.
SERVICE_ENV = "FEDGE_AGENT_SERVICE"


def unit_text(config: Path, *, user: bool, python: str | None = None) -> str:
    exe = python or sys.executable
    command = " ".join(
        shlex.quote(p) for p in (exe, "-m", "fedge", "agent", "run", "--config", str(config))
    )
    wanted_by = "default.target" if user else "multi-user.target"
    return f"""\
[Unit]
Description=fedge on-device federated training agent
Documentation=https://github.com/fedge/fedge/blob/main/docs/agent.md
After=network-online.target
Wants=network-online.target
# Never give up restarting: the agent is meant to run unattended for years.
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart={command}
Restart=on-failure
# A pause between restarts, so a persistent fault costs one start per 30 s.
RestartSec=30
# Training must never compete with the device's owner.
Nice=19
IOSchedulingClass=idle
Environment=PYTHONUNBUFFERED=1
# Marks the installed agent: it refuses --ignore-eligibility.
Environment={SERVICE_ENV}=1
# SIGTERM lets the agent finish writing state; it never needs long.
TimeoutStopSec=30

[Install]
WantedBy={wanted_by}
"""


def default_unit_path(user: bool) -> Path:
    if user:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return base / "systemd" / "user" / UNIT_NAME
    return Path("/etc/systemd/system") / UNIT_NAME
