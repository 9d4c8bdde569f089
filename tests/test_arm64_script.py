"""The arm64 device check's pieces, without building a root file system.

Building the rootfs takes minutes and needs the Debian archive, so it runs in
`make arm64-check`, not here. What runs here: the shell scripts parse and
refuse bad invocations with a clear message before touching any mount, and
device_check.py — the program the check runs inside the emulated device —
passes on a real exported model under tflite-runtime 2.14 (natively), fails
when training does not work, and rejects bad input files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

SCRIPTS = REPO / "scripts" / "arm64"
SHELL_SCRIPTS = ("build-rootfs.sh", "run-in-rootfs.sh", "check.sh")


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_shell_script_parses_and_is_executable(name: str) -> None:
    path = SCRIPTS / name
    assert path.stat().st_mode & 0o111, f"{name} is not executable"
    result = _run("bash", "-n", path)
    assert result.returncode == 0, result.stderr


def test_run_in_rootfs_without_a_command_prints_usage() -> None:
    result = _run(SCRIPTS / "run-in-rootfs.sh", "/")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_run_in_rootfs_refuses_a_directory_that_is_not_a_rootfs(tmp_path: Path) -> None:
    result = _run(SCRIPTS / "run-in-rootfs.sh", tmp_path, "true")
    assert result.returncode == 2
    # As root the directory is checked; otherwise the script stops earlier.
    assert "is not a root file system" in result.stderr or "needs root" in result.stderr
    assert not (tmp_path / "proc").exists(), "nothing may be mounted or created"


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=(digits.data / 16.0).astype(np.float32), y=digits.target.astype(np.int32))
    return path


def _device_check(python: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return _run(python, SCRIPTS / "device_check.py", *args)


def test_device_check_passes_under_tflite_runtime_214(
    tflite_python: Path, exported_mlp: Path, digits_npz: Path
) -> None:
    result = _device_check(tflite_python, exported_mlp, digits_npz, "--steps", "30")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["runtime"] == "tflite-runtime 2.14.0"
    assert report["numpy"].startswith("1.")
    assert report["ok"] and all(report["checks"].values())
    assert report["eval_loss_after"] < report["eval_loss_before"]
    assert "PASS weights_roundtrip_exact" in result.stderr


def test_device_check_fails_when_training_does_not_lower_the_loss(
    tflite_python: Path, exported_mlp: Path, digits_npz: Path
) -> None:
    # A learning rate far below float32 resolution leaves the loss where it
    # was: the check must notice instead of reporting success.
    result = _device_check(
        tflite_python, exported_mlp, digits_npz, "--steps", "10", "--learning-rate", "1e-30"
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert not report["ok"]
    assert not report["checks"]["eval_loss_fell"]
    assert report["eval_loss_after"] == pytest.approx(report["eval_loss_before"], rel=1e-6)
    assert "FAIL eval_loss_fell" in result.stderr


def test_device_check_rejects_data_without_labels(exported_mlp: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 64), np.float32))
    result = _device_check(Path(sys.executable), exported_mlp, bad)
    assert result.returncode == 2
    assert "expected arrays 'x' and 'y'" in result.stderr
    assert "Traceback" not in result.stderr


def test_device_check_rejects_a_directory_that_is_not_an_export(
    tmp_path: Path, digits_npz: Path
) -> None:
    result = _device_check(Path(sys.executable), tmp_path, digits_npz)
    assert result.returncode == 2
    assert "no manifest.json" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--steps", "3"), "--steps must be at least 10"),
        (("--learning-rate", "0"), "--learning-rate above 0"),
        (("--steps", "many"), "invalid int value"),
    ],
    ids=["too-few-steps", "zero-learning-rate", "non-integer-steps"],
)
def test_device_check_rejects_bad_flags(
    exported_mlp: Path, digits_npz: Path, args: tuple[str, ...], message: str
) -> None:
    result = _device_check(Path(sys.executable), exported_mlp, digits_npz, *args)
    assert result.returncode == 2
    assert message in result.stderr
