"""The device-side parts of ``privacy`` (DP clipping and local noise, robust
checks, the CLI module the ``fedge`` parser imports) run in the edge
environments: no TensorFlow, no dp-accounting, and NumPy 1.x under
tflite-runtime. Building the whole ``fedge`` parser — ``fedge audit`` and
its inversion audit included — loads none of the audits' heavy modules."""

from __future__ import annotations

import subprocess
from pathlib import Path

CODE = """
import sys
import numpy as np
import privacy, privacy.dp, privacy.robust, privacy.cli
from privacy.dp import DPConfig, add_local_noise, clip_update
dp = DPConfig.from_dict({"noise_multiplier": 0.5, "clip_norm": 1.0, "mode": "local"})
out = add_local_noise({"w": np.full(1000, 1.0, np.float32)}, dp, np.random.default_rng(0))
assert out.clipped and abs(float(np.std(out.update["w"])) - 0.5) < 0.05
assert clip_update({"w": np.ones(4)}, 1.0).factor == 0.5
import fedge.cli
fedge.cli.build_parser()
for heavy in ("tensorflow", "dp_accounting", "scipy", "sklearn", "matplotlib",
              "privacy.audit_gradient", "privacy.audit_inversion"):
    assert heavy not in sys.modules, heavy + " was imported"
print("ok", np.__version__)
"""


def _run(python: Path) -> str:
    result = subprocess.run([str(python), "-c", CODE], check=False, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_device_side_privacy_runs_in_the_edge_environment(edge_python: Path) -> None:
    assert _run(edge_python).startswith("ok")


def test_device_side_privacy_runs_with_tflite_runtime_and_numpy_1(tflite_python: Path) -> None:
    assert _run(tflite_python).startswith("ok 1.")
