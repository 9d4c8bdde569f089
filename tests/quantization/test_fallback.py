"""Where numba is not installed (an edge install), the numpy reference runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO

CODE = """
import numpy as np, quantization as q
from quantization import accel
update = {"w": np.linspace(-1e-3, 1e-3, 5000, dtype=np.float32)}
payload = q.encode(update, q.CodecSpec(density=0.01, bits=8), seed=0).payload
acc = {"w": np.zeros(5000)}
q.decode_into(payload, acc, 2.0, expected={"w": (5000,)})
assert q.decode_many_into([payload], acc, [1.0], expected={"w": (5000,)}) == [None]
assert np.array_equal(acc["w"], 3.0 * q.decode(payload)["w"].astype(np.float64))
print(accel.backend().name, accel.warm_up()[0].name)
"""


def test_edge_install_decodes_with_the_numpy_path(edge_python: Path) -> None:
    out = subprocess.run(
        [str(edge_python), "-c", CODE], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "numpy"]
