"""``fedge codec inspect`` / ``check-spec`` through the real dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import quantization as q
from fedge.cli import main
from tests.quantization.helpers import update


def test_inspect_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = tmp_path / "update.bin"
    frame.write_bytes(q.encode(update(0), q.CodecSpec(density=0.01, bits=8), seed=0).payload)
    assert main(["codec", "inspect", str(frame)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("update frame v1:")
    assert '{"density": 0.01, "bits": 8}' in out
    assert "t0  [500, 8]  float32  nnz" in out and "stochastic/8-bit" in out
    assert main(["codec", "inspect", "--json", str(frame)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "update" and info["spec"]["bits"] == 8
    assert [t["name"] for t in info["tensors"]] == ["t0", "t1", "t2"]


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (None, [], "cannot read"),
        (b"not a frame at all, just some bytes, padded out", [], "not a fedge codec frame"),
        (q.encode_weights({"w": q.decode(q.encode_weights({"w": [1.0] * 100}))["w"]}),
         ["--max-decoded-bytes", "100"], "more than 100 bytes"),
    ],
)
def test_inspect_reports_bad_input_as_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None,
    args: list[str], message: str,
) -> None:
    path = tmp_path / "frame.bin"
    if content is not None:
        path.write_bytes(content)
    assert main(["codec", "inspect", *args, str(path)]) == 2
    err = capsys.readouterr().err
    assert "fedge codec: error:" in err and message in err


def test_inspect_rejects_a_negative_limit(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["codec", "inspect", "--max-decoded-bytes", "-1", str(tmp_path / "x")])
    assert info.value.code == 2


def test_check_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "codec.yaml"
    good.write_text("codec:\n  density: 0.01\n  bits: 4\n")
    assert main(["codec", "check-spec", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["values"] == "stochastic"
    bad = tmp_path / "bad.yaml"
    bad.write_text("density: 0.01\nbitz: 4\n")
    assert main(["codec", "check-spec", str(bad)]) == 2
    assert "unknown key(s) 'bitz'" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("density: [0.01\n")
    assert main(["codec", "check-spec", str(broken)]) == 2
    assert "not valid YAML/JSON" in capsys.readouterr().err
