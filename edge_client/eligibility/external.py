"""Providers that ask another program: Termux on Android, or a user command.

Both run the program as an asyncio subprocess with a timeout (the event loop
never waits on it) and translate every failure to :class:`EligibilityError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

from edge_client.eligibility.state import DeviceState, PollingProvider
from edge_client.errors import EligibilityError


async def run_json_command(argv: Sequence[str], timeout_s: float, source: str) -> Any:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise EligibilityError(f"{source}: cannot run {argv[0]!r} ({exc.strerror})") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise EligibilityError(f"{source}: {argv[0]!r} did not answer in {timeout_s} s") from exc
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-200:]
        raise EligibilityError(f"{source}: {argv[0]!r} exited with {proc.returncode}: {tail}")
    try:
        return json.loads(stdout)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EligibilityError(f"{source}: {argv[0]!r} did not print JSON ({exc})") from exc


class TermuxBatteryProvider(PollingProvider):
    """``termux-battery-status`` (Termux:API) on Android: plugged, status, percentage,
    temperature."""

    name = "termux"

    def __init__(
        self, command: Sequence[str] = ("termux-battery-status",), timeout_s: float = 10.0
    ) -> None:
        self.command = tuple(command)
        self.timeout_s = timeout_s

    async def read(self) -> DeviceState:
        data = await run_json_command(self.command, self.timeout_s, self.name)
        if not isinstance(data, dict):
            raise EligibilityError(
                f"{self.name}: expected a JSON object, got {type(data).__name__}"
            )
        plugged = data.get("plugged")
        status = data.get("status")
        pct = data.get("percentage")
        temp = data.get("temperature")
        if not isinstance(plugged, str) or not isinstance(status, str):
            raise EligibilityError(f"{self.name}: missing 'plugged'/'status' in {data!r}")
        return DeviceState(
            on_power=plugged != "UNPLUGGED",
            charging=status in ("CHARGING", "FULL"),
            battery_pct=float(pct) if isinstance(pct, int | float) else None,
            temperature_c=float(temp) if isinstance(temp, int | float) else None,
            sources=(self.name,),
        )


class CommandProvider(PollingProvider):
    """A user command that prints a JSON object with any of DeviceState's fields
    (``{"on_power": true, "battery_pct": 80, "metered": false}``)."""

    name = "command"

    def __init__(self, command: Sequence[str], timeout_s: float = 10.0) -> None:
        if not command:
            raise EligibilityError("command provider: no command given")
        self.command = tuple(command)
        self.timeout_s = timeout_s

    async def read(self) -> DeviceState:
        data = await run_json_command(self.command, self.timeout_s, self.name)
        if not isinstance(data, dict):
            raise EligibilityError(
                f"{self.name}: expected a JSON object, got {type(data).__name__}"
            )
        return DeviceState.from_mapping(data, self.name)
