"""``fedge audit membership`` end to end on the exported mlp, and its input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedge.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order] / 16.0).astype(np.float32)
    y = y[order].astype(np.int32)
    root = tmp_path_factory.mktemp("audit")
    paths = {
        "members": root / "members.npz",
        "non_members": root / "non_members.npz",
        "wrong_keys": root / "wrong.npz",
        "garbage": root / "garbage.npz",
    }
    np.savez(paths["members"], x=x[:40], y=y[:40])
    np.savez(paths["non_members"], x=x[500:540], y=y[500:540])
    np.savez(paths["wrong_keys"], inputs=x[:3])
    paths["garbage"].write_bytes(b"not a zip file")
    return paths


def test_audit_of_an_overfit_version_from_a_weights_frame(
    exported_mlp: Path, data: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Train the real model on the members, save the weights as the service
    serves them, and audit that version from the command line."""
    import quantization
    from fedge.manifest import load_model_dir
    from fedge.runtime import TrainableModel

    manifest, path = load_model_dir(exported_mlp)
    model = TrainableModel(path, manifest)
    with np.load(data["members"]) as m:
        for _ in range(300):
            model.train_step(m["x"], m["y"], 0.1)
    frame = tmp_path / "weights.bin"
    frame.write_bytes(quantization.encode_weights(model.get_weights()))
    code = main(["audit", "membership", str(exported_mlp), "--members", str(data["members"]),
                 "--non-members", str(data["non_members"]), "--weights", str(frame),
                 "--epsilon", "2", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["auc"] > 0.75 and report["members"] == 40
    assert 0 < report["dp_advantage_bound"] < 1

    # The untrained export, human-readable output, and .npz weights.
    npz = tmp_path / "weights.npz"
    np.savez(npz, **model.get_weights())  # type: ignore[arg-type]
    assert main(["audit", "membership", str(exported_mlp), "--members", str(data["members"]),
                 "--non-members", str(data["non_members"]), "--weights", str(npz)]) == 0
    out = capsys.readouterr().out
    assert "attack AUC" in out and "members 40" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--members": "missing.npz"}, "--members: "),
        ({"--members": "wrong_keys"}, "it needs 'x' and 'y'"),
        ({"--non-members": "garbage"}, "not a readable .npz"),
        ({"--weights": "garbage"}, "not a readable .npz"),
        ({"--weights": "members"}, "lacks tensors"),
        ({"--weights": "frame_garbage"}, "not a weights frame"),
        ({"--weights": "nowhere.bin"}, "does not exist"),
    ],
)
def test_audit_input_errors_exit_2_with_a_message(
    exported_mlp: Path, data: dict[str, Path], tmp_path: Path, *, change: dict[str, str],
    message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "frame_garbage.bin").write_bytes(b"FEDGE?" * 10)
    args = {"--members": str(data["members"]), "--non-members": str(data["non_members"])}
    for flag, name in change.items():
        if name in data:
            args[flag] = str(data[name])
        elif name == "frame_garbage":
            args[flag] = str(tmp_path / "frame_garbage.bin")
        else:
            args[flag] = str(tmp_path / name)
    argv = ["audit", "membership", str(exported_mlp)] + [v for kv in args.items() for v in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fedge audit: error:" in err and message in err


def test_audit_of_a_directory_that_is_not_an_export(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "membership", str(tmp_path), "--members", str(data["members"]),
                 "--non-members", str(data["non_members"])]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_audit_data_that_does_not_fit_the_model(
    exported_mlp: Path, tmp_path: Path, data: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 10), np.float32), y=np.zeros(4, np.int32))
    assert main(["audit", "membership", str(exported_mlp), "--members", str(bad),
                 "--non-members", str(data["non_members"])]) == 2
    assert "the model expects (64,)" in capsys.readouterr().err
