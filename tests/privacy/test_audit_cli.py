"""``fedge audit inversion | epsilon | lira`` end to end on the exported mlp
(small sizes), their flag errors, and the message when TensorFlow is
missing (in the edge environment, which has none)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedge.cli import main


def _json(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    out: dict = json.loads(capsys.readouterr().out)  # type: ignore[type-arg]
    return out


def test_inversion_from_the_command_line(
    exported_mlp: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "examples.png"
    code = main(["audit", "inversion", "--model-dir", str(exported_mlp), "--batch-sizes", "1",
                 "--epochs", "1,5", "--protections", "dense,ldp:1,secsum:3", "--attacks",
                 "analytic", "--trials", "2", "--png", str(png), "--json"])
    assert code == 0
    report = _json(capsys)
    rows = {(r["epochs"], r["protection"]): r for r in report["rows"]}
    assert len(rows) == 6
    assert rows[(1, "dense float32")]["psnr_mean"] == 60.0
    assert rows[(5, "dense float32")]["identified"] == 1.0
    assert rows[(1, "local DP z=1")]["identified"] == 0.0
    assert rows[(1, "local DP z=1")]["epsilon"] < 20
    assert png.stat().st_size > 1000 and report["png"] == str(png)
    # The human-readable table.
    assert main(["audit", "inversion", "--model-dir", str(exported_mlp), "--batch-sizes", "2",
                 "--epochs", "1", "--protections", "topk:0.1", "--attacks", "analytic",
                 "--trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "top-10%/8-bit" in out and "identified" in out and "mean image" in out


def test_inversion_of_the_cnn_with_gradient_matching(capsys: pytest.CaptureFixture[str]) -> None:
    """No --model-dir: the reference cnn is exported (TensorFlow) and only
    the gradient-matching attack applies to its convolutional first layer."""
    assert main(["audit", "inversion", "--model", "cnn", "--batch-sizes", "1", "--epochs", "1",
                 "--protections", "dense", "--trials", "1", "--iterations", "20",
                 "--json"]) == 0
    rows = _json(capsys)["rows"]
    assert [r["attack"] for r in rows] == ["gradient"]
    assert rows[0]["model"] == "cnn" and rows[0]["label_accuracy"] == 1.0


def test_epsilon_from_the_command_line(
    exported_mlp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "epsilon", "--model-dir", str(exported_mlp), "--noise", "1",
                 "--devices", "100", "--canaries", "100", "--rounds", "6",
                 "--clients-per-round", "60", "--local-steps", "1", "--bootstrap", "20",
                 "--json"]) == 0
    (row,) = _json(capsys)["rows"]
    assert row["noise_multiplier"] == 1.0
    assert row["final_model"] > 0 and row["epsilon_pld"] <= row["epsilon_rdp"]
    assert isinstance(row["within_bound"], bool)
    assert main(["audit", "epsilon", "--model-dir", str(exported_mlp), "--noise", "2",
                 "--devices", "100", "--canaries", "50", "--rounds", "3",
                 "--clients-per-round", "30", "--local-steps", "1", "--bootstrap", "5"]) == 0
    assert "final model" in capsys.readouterr().out


def test_lira_from_the_command_line(exported_mlp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "lira", "--model-dir", str(exported_mlp), "--train-size", "40",
                 "--models", "9", "--epochs", "60", "--json"]) == 0
    report = _json(capsys)
    assert report["lira_online"]["auc"] > 0.7 and report["train_size"] == 40
    assert main(["audit", "lira", "--model-dir", str(exported_mlp), "--train-size", "20",
                 "--models", "4", "--training", "fedavg", "--noise", "1", "--rounds", "5",
                 "--clients-per-round", "5", "--local-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "LiRA (online)" in out and "allows TPR" in out


BAD_FLAGS = [
    (["inversion", "--batch-sizes", "0"], "--batch-sizes: '0' is not a whole number"),
    (["inversion", "--batch-sizes", "a,2"], "--batch-sizes: 'a' is not"),
    (["inversion", "--batch-sizes", ","], "--batch-sizes: empty"),
    (["inversion", "--epochs", "1.5"], "--epochs: '1.5' is not"),
    (["inversion", "--protections", "topk:2"], "0 < D ≤ 1"),
    (["inversion", "--protections", "dense,zip"], "protection 'zip'"),
    (["inversion", "--protections", "secsum:1"], "at least 3 devices"),
    (["inversion", "--attacks", "magic"], "--attacks: 'magic' is not an attack"),
    (["inversion", "--trials", "0"], "--trials: 0 must be ≥ 1"),
    (["inversion", "--lr", "-1"], "--lr: -1.0 must be a number > 0"),
    (["inversion", "--iterations", "0"], "--iterations: 0 must be ≥ 1"),
    (["inversion", "--data", "missing.npz"], "--data: missing.npz does not exist"),
    (["inversion", "--data", "garbage.npz"], "not a readable .npz"),
    (["inversion", "--data", "big.npz", "--attacks", "analytic"], "scaled to [0, 1]"),
    (["inversion", "--data", "nonsquare.npz"], "not a square image"),
    (["inversion", "--model", "cnn", "--model-dir", "."], "give one of them"),
    (["inversion", "--png", "no/such/dir/x.png"], "--png: directory no/such/dir does not"),
    (["inversion", "--batch-sizes", "400", "--attacks", "analytic"], "from 1 to 256"),
    (["inversion", "--protections", "secsum:250", "--batch-sizes", "8", "--attacks",
      "analytic"], "needs 2000 distinct examples"),
    (["epsilon", "--noise", "0"], "--noise: '0' is not a noise multiplier > 0"),
    (["epsilon", "--noise", "x"], "--noise: 'x' is not"),
    (["epsilon", "--devices", "1750"], "leaves fewer than 100"),
    (["epsilon", "--clients-per-round", "5000"], "exceeds the population"),
    (["epsilon", "--delta", "1"], "--delta: 1.0 must be strictly between 0 and 1"),
    (["epsilon", "--canaries", "1"], "--canaries: 1 must be ≥ 2"),
    (["epsilon", "--clip", "0"], "--clip: 0.0 must be a number > 0"),
    (["epsilon", "--rounds", "0"], "--rounds: 0 must be ≥ 1"),
    (["lira", "--train-size", "900"], "overlap the 197 held-out digits"),
    (["lira", "--noise", "1"], "--noise: DP applies to --training fedavg"),
    (["lira", "--models", "2"], "--models: 2 must be ≥ 3"),
    (["lira", "--hidden", "8", "--model-dir", "."], "give one of them"),
    (["lira", "--training", "fedavg", "--clients-per-round", "500"], "exceeds the 200 devices"),
    (["lira", "--training", "fedavg", "--noise", "-1"], "--noise: -1.0 must be a number ≥ 0"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS)
def test_bad_flags_exit_2_with_a_message(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "big.npz", x=np.full((4, 8, 8), 16.0), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "nonsquare.npz", x=np.zeros((4, 10)), y=np.zeros(4, np.int64))
    assert main(["audit", *argv]) == 2
    err = capsys.readouterr().err
    assert "fedge audit: error:" in err and message in err


def test_argparse_level_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["audit", "inversion", "--trials", "many"], ["audit", "lira", "--training", "x"],
                 ["audit", "nonsense"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "invalid" in capsys.readouterr().err


def test_audit_without_a_subcommand_says_which_exist(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit"]) == 2
    assert "membership, inversion, epsilon or lira" in capsys.readouterr().err


def test_without_tensorflow_the_cli_names_the_extra(edge_python: Path) -> None:
    """The edge install has no TensorFlow: asking for what needs it says
    which extra to install instead of raising ImportError."""
    for argv in (["audit", "inversion", "--attacks", "gradient"],
                 ["audit", "inversion", "--attacks", "analytic"]):
        result = subprocess.run([str(edge_python), "-m", "fedge", *argv], check=False,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "pip install 'fedge[audit]'" in result.stderr
        assert "Traceback" not in result.stderr
