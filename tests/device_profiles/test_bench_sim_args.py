"""bench/bench_sim.py refuses bad sizes before doing any work (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_sim.py"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scale-only", "--devices", "0"], "--devices must be ≥ 1"),
        (["--scale-only", "--hours", "-1"], "--hours > 0"),
        (["--devices", "5"], "--devices/--hours need --scale-only"),
        (["--scale-only", "--devices", "many"], "invalid int value"),
        (["--scale-only", "--no-scale"], "exclude each other"),
    ],
)
def test_bad_sizes_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert message in done.stderr
