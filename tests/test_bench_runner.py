"""The benchmark runner: discovery, bad names, README regeneration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedge import bench
from fedge.cli import main


def _write_bench(bench_dir: Path, name: str, body: str) -> None:
    bench_dir.mkdir(exist_ok=True)
    (bench_dir / f"bench_{name}.py").write_text(body)


GOOD = '''
import json, sys
from pathlib import Path
quick = "--quick" in sys.argv
rows = [{"benchmark": "toy", "metric": "speed", "value": 2.0 if quick else 3.0, "unit": "x/s",
         "baseline": 1.0, "ratio": 2.0 if quick else 3.0, "target": ">= 1x", "note": ""},
        {"benchmark": "toy", "metric": "detail", "value": 7.0, "target": None}]
out = Path(__file__).parent / "results"
out.mkdir(exist_ok=True)
(out / "toy.json").write_text(json.dumps(rows))
'''


def test_runs_benchmarks_and_updates_readme(tmp_path: Path) -> None:
    _write_bench(tmp_path / "bench", "toy", GOOD)
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{bench.BEGIN}\nold\n{bench.END}\n\nrest\n")
    code = main(["bench", "--quick", "--bench-dir", str(tmp_path / "bench"), "--update-readme"])
    assert code == 0
    results = json.loads((tmp_path / "bench" / "results" / "results.json").read_text())
    assert results["quick"] is True
    assert results["rows"][0]["value"] == 2.0
    text = readme.read_text()
    assert "old" not in text
    assert "| toy | speed | 2 x/s | 1 | 2× | >= 1x |" in text
    assert text.endswith("\nrest\n")
    assert "detail" not in text  # no target: only in docs/benchmarks.md
    assert "| toy | detail | 7 |" in (tmp_path / "docs" / "benchmarks.md").read_text()


def test_unknown_benchmark_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_bench(tmp_path / "bench", "toy", GOOD)
    assert main(["bench", "nope", "--bench-dir", str(tmp_path / "bench")]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_failing_benchmark_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_bench(tmp_path / "bench", "broken", "raise SystemExit(3)\n")
    assert main(["bench", "--bench-dir", str(tmp_path / "bench")]) == 2
    assert "exit code 3" in capsys.readouterr().err


def test_readme_without_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(bench.BenchError, match="no <!-- bench:begin -->"):
        bench.update_readme(readme, "table")


def test_collect_uses_existing_results_without_running(tmp_path: Path) -> None:
    bench_dir = tmp_path / "bench"
    _write_bench(bench_dir, "toy", "raise SystemExit(9)\n")  # would fail if run
    (bench_dir / "results").mkdir()
    (bench_dir / "results" / "toy.json").write_text(
        json.dumps([{"benchmark": "toy", "metric": "m", "value": 1.0}])
    )
    assert main(["bench", "--collect", "--bench-dir", str(bench_dir)]) == 0
    results = json.loads((bench_dir / "results" / "results.json").read_text())
    assert results["collected"] is True
    assert results["rows"][0]["metric"] == "m"


def test_collect_without_results_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_bench(tmp_path / "bench", "toy", GOOD)
    assert main(["bench", "--collect", "--bench-dir", str(tmp_path / "bench")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_emit_writes_rows_and_prints_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"benchmark": "b", "metric": "m", "value": 1.5, "unit": "ms", "baseline": 3.0,
             "ratio": 0.5, "target": None, "note": "n"}]
    out = tmp_path / "results" / "b.json"
    bench.emit(rows, out)
    assert json.loads(out.read_text()) == rows
    assert "| b | m | 1.5 ms | 3 | 0.5× | — | n |" in capsys.readouterr().out


def test_readme_rows_are_targets_headlines_and_the_privacy_summary() -> None:
    def row(benchmark: str, metric: str, **extra: object) -> dict[str, object]:
        return {"benchmark": benchmark, "metric": metric, **extra}

    assert bench.headline(row("codec 1M", "payload", target="≥ 150×"))
    assert bench.headline(row("anything", "x", headline=True))
    assert bench.headline(row("dp-fedavg emulation z=1.0", "epsilon"))
    assert bench.headline(row("secagg n=500 d=8,970", "bytes up per device"))
    assert not bench.headline(row("dp-fedavg emulation z=1.0", "MIA advantage"))
    assert not bench.headline(row("secagg n=50 d=8,970", "bytes up per device"))
    assert not bench.headline(row("codec 1M", "encode time"))
