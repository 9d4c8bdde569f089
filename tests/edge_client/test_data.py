"""Local data sources and their errors; the trainer's worker protocol."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edge_client.config import DataConfig
from edge_client.data import ArrayData, open_source
from edge_client.errors import DataError, TrainingError
from edge_client.trainer import ProcessTrainer, TrainingJob
from fedge.manifest import load_model_dir


@pytest.fixture
def manifest(exported_mlp: Path):  # type: ignore[no-untyped-def]
    return load_model_dir(exported_mlp)[0]


def test_array_batches_respect_epochs_and_max_examples() -> None:
    data = ArrayData(np.zeros((10, 2), np.float32), np.arange(10))
    sizes = [len(x) for x, _ in data.batches(4, epochs=2, max_examples=None, seed=0)]
    assert sizes == [4, 4, 2, 4, 4, 2]
    sizes = [len(x) for x, _ in data.batches(4, epochs=3, max_examples=13, seed=0)]
    assert sizes == [4, 4, 2, 3]
    a = [y.tolist() for _, y in data.batches(10, 1, None, seed=5)]
    b = [y.tolist() for _, y in data.batches(10, 1, None, seed=5)]
    assert a == b and sorted(a[0]) == list(range(10))


def test_csv_with_label_column(tmp_path: Path, manifest) -> None:  # type: ignore[no-untyped-def]
    rows = ["label," + ",".join(f"p{i}" for i in range(64))]
    rows += [f"{i % 10}," + ",".join(str((i + j) % 17 / 16) for j in range(64)) for i in range(5)]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    data = open_source(DataConfig("csv", path=str(tmp_path / "a.csv"), label_column="label"),
                       manifest)
    assert isinstance(data, ArrayData)
    assert data.x.shape == (5, 64) and data.y.tolist() == [0, 1, 2, 3, 4]
    assert data.y.dtype == np.int32


@pytest.mark.parametrize(
    ("content", "message"),
    [("a,b\n1,2\n", "no label column 'label'"),
     ("label," + ",".join(["p"] * 64) + "\n1," + ",".join(["x"] * 64) + "\n", "non-numeric"),
     ("label,p\n1,2,3\n", "3 fields"),
     ("", "empty file"),
     ("label," + ",".join(["p"] * 64) + "\n11," + ",".join(["0"] * 64) + "\n",
      r"labels must be in \[0, 10\)"),
     ("label,p\n1,2\n", "examples have shape")],
)
def test_bad_csv(tmp_path: Path, manifest, content: str, message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        open_source(DataConfig("csv", path=str(tmp_path / "d.csv"), label_column="label"),
                    manifest)


def test_bad_npz(tmp_path: Path, manifest) -> None:  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 64)), labels=np.zeros(3))
    with pytest.raises(DataError, match=r"expected arrays 'x' \(features\) and 'y'"):
        open_source(DataConfig("npz", path=str(tmp_path)), manifest)
    (tmp_path / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        open_source(DataConfig("npz", path=str(tmp_path)), manifest)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.npz files"):
        open_source(DataConfig("npz", path=str(tmp_path / "empty")), manifest)
    np.savez(tmp_path / "a.npz", x=np.full((3, 64), np.nan), y=np.zeros(3))
    with pytest.raises(DataError, match="NaN"):
        open_source(DataConfig("npz", path=str(tmp_path)), manifest)


def test_callable_source(tmp_path: Path, manifest) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def batches(batch_size):\n"
        "    for i in range(3):\n"
        "        yield np.ones((batch_size, 64)), np.full(batch_size, i)\n"
        "def broken():\n"
        "    yield [1, 2, 3]\n"
    )
    config = DataConfig("callable", callable="mydata:batches", python_path=(str(tmp_path),))
    source = open_source(config, manifest)
    sizes = [len(x) for x, _ in source.batches(8, epochs=2, max_examples=40, seed=0)]
    assert sizes == [8, 8, 8, 8, 8]
    bad = open_source(DataConfig("callable", callable="mydata:broken",
                                 python_path=(str(tmp_path),)), manifest)
    with pytest.raises(DataError, match=r"expected an \(x, y\) tuple"):
        list(bad.batches(8, 1, None, 0))
    with pytest.raises(DataError, match="cannot import"):
        open_source(DataConfig("callable", callable="nosuchmodule_xyz:f"), manifest)
    with pytest.raises(DataError, match="has no function"):
        open_source(DataConfig("callable", callable="mydata:absent"), manifest)
    sys.modules.pop("mydata", None)


async def test_worker_reports_data_errors_and_exits(
    tmp_path: Path, exported_mlp: Path, manifest  # type: ignore[no-untyped-def]
) -> None:
    weights = {t.name: np.zeros(t.shape, np.float32) for t in manifest.tensors}
    job = TrainingJob(exported_mlp / "model.tflite", manifest, weights,
                      DataConfig("npz", path=str(tmp_path / "missing")), 1, 8, 0.1, None, 0.0, 0)
    trainer = ProcessTrainer()
    with pytest.raises(DataError, match="no such file"):
        await trainer.start(job)
    assert trainer.last_session is not None and trainer.last_session.proc.returncode == 0
    job = TrainingJob(tmp_path / "nope.tflite", manifest, weights,
                      DataConfig("npz", path=str(tmp_path)), 1, 8, 0.1, None, 0.0, 0)
    with pytest.raises(TrainingError, match="No such file"):
        await trainer.start(job)
    with pytest.raises(TrainingError, match="cannot start the training worker"):
        await ProcessTrainer(python=str(tmp_path / "nopython")).start(job)
