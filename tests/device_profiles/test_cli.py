"""`fedge simulate` / `fedge demo`: a user's mistake is a message and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedge.cli import main


def _fleet(tmp_path: Path, **extra: object) -> Path:
    data = {"name": "c", "devices": [{"profile": "raspberry-pi-4", "count": 2}], **extra}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ray", "--server", "http://127.0.0.1:9", "--token", "t" * 20],
         "--server and --ray cannot be combined"),
        (["--server", "http://127.0.0.1:9"], "--server needs an operator token"),
        (["--model-dir", "{tmp}"], "no manifest.json"),
    ],
)
def test_simulate_flag_mistakes_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: list[str], expected: str,
) -> None:
    monkeypatch.delenv("FEDGE_OPERATOR_TOKEN", raising=False)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(["simulate", str(_fleet(tmp_path)), "--out", str(tmp_path / "o"), *args])
    assert code == 2
    assert expected in capsys.readouterr().err


def test_simulate_bad_fleet_names_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _fleet(tmp_path, partition={"scheme": "iid", "alpha": 2})
    assert main(["simulate", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: partition.alpha: only the dirichlet scheme takes alpha" in err
    assert "Traceback" not in err


def test_simulate_missing_fleet_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(tmp_path / "none.yaml"), "--out", str(tmp_path)]) == 2
    assert "none.yaml: <file>: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["--devices", "0"], "--devices: expected a positive"), (["--hours", "-1"], "--hours")],
)
def test_demo_flag_mistakes_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    assert main(["demo", *args]) == 2
    assert expected in capsys.readouterr().err
