"""``fedge bench``: run the benchmarks in ``bench/`` and regenerate the README
results table from what they measured.

Each ``bench/bench_<name>.py`` is run in its own process (so one benchmark's
memory or threads cannot colour another's) as ``python bench_<name>.py
[--quick]``; it writes ``bench/results/<name>.json``: a list of rows with
``benchmark, metric, value, unit, baseline, ratio, target, note``, every value
measured in the same run as its baseline. This module gathers the rows, adds
the machine they ran on, writes ``bench/results/results.json`` and, with
``--update-readme``, rewrites the table between the README's bench markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


class BenchError(FedgeError):
    """A benchmark is unknown, failed, or wrote no results."""


def discover(bench_dir: Path) -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gb = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_one(name: str, script: Path, results_dir: Path, quick: bool) -> list[dict[str, Any]]:
    out = results_dir / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    started = time.monotonic()
    print(f"[bench] {name}: running {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=script.parent.parent, check=False)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise BenchError(f"benchmark {name} failed with exit code {proc.returncode}")
    if not out.is_file():
        raise BenchError(f"benchmark {name} wrote no {out}")
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    print(f"[bench] {name}: {len(rows)} rows in {elapsed:.0f} s", file=sys.stderr, flush=True)
    return rows


def collect_one(name: str, results_dir: Path) -> list[dict[str, Any]]:
    """Rows a benchmark already wrote on this machine (``--collect``)."""
    out = results_dir / f"{name}.json"
    if not out.is_file():
        raise BenchError(f"--collect: {out} does not exist; run `fedge bench {name}` first")
    try:
        rows: list[dict[str, Any]] = json.loads(out.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"--collect: {out} is not valid JSON ({exc})") from exc
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 100_000:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


# Rows without a target that still answer a reader's first questions about
# privacy (what DP costs in accuracy per ε, what the audit sees, what secure
# aggregation costs in bytes, what the poisoning defences buy): (benchmark
# prefix, metrics). Everything else is in docs/benchmarks.md.
README_ALSO: tuple[tuple[str, frozenset[str]], ...] = (
    ("dp-fedavg emulation", frozenset({"test accuracy", "epsilon", "MIA AUC"})),
    ("secagg n=10 d=8,970", frozenset({"bytes up per device"})),
    ("secagg n=500 d=8,970", frozenset({"bytes up per device"})),
    (
        "robust sync FedAvg, 8/40 sign flip",
        frozenset(
            {"test accuracy (mean)", "test accuracy (median)", "test accuracy (mean + quarantine)"}
        ),
    ),
)


def headline(row: dict[str, Any]) -> bool:
    """Rows the README shows: those with a target, marked as headline, or
    named in README_ALSO."""
    if row.get("target") or row.get("headline"):
        return True
    bench, metric = str(row.get("benchmark", "")), row.get("metric")
    return any(bench.startswith(prefix) and metric in metrics for prefix, metrics in README_ALSO)


def table(results: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> str:
    m = results["machine"]
    how = "Collected from the results files written by" if results.get("collected") else (
        "Measured by"
    )
    lines = [
        f"{how} `fedge bench{' --quick' if results['quick'] else ''}` on "
        f"{results['date'][:10]}: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, "
        f"Python {m['python']}. Every ratio is against a baseline measured in the same run.",
        "",
        "| benchmark | metric | value | baseline | ratio | target | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines.extend(_row(row) for row in (results["rows"] if rows is None else rows))
    return "\n".join(lines)


def emit(rows: list[dict[str, Any]], out: Path) -> None:
    """What every ``bench/bench_<name>.py`` does with its rows: write them to
    ``out`` (``bench/results/<name>.json``) and print them as a table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| benchmark | metric | value | baseline | ratio | target | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(_row(row))
    print(f"wrote {out}")


def _row(row: dict[str, Any]) -> str:
    unit = f" {row['unit']}" if row.get("unit") else ""
    return "| {b} | {m} | {v}{u} | {bl} | {r} | {t} | {n} |".format(
        b=row["benchmark"],
        m=row["metric"],
        v=_fmt(row.get("value")),
        u=unit,
        bl=_fmt(row.get("baseline")),
        r="—" if row.get("ratio") is None else f"{_fmt(row['ratio'])}×",
        t=row.get("target") or "—",
        n=row.get("note") or "",
    )


def update_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        raise BenchError(f"{readme} has no {BEGIN} … {END} section to update")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def command(args: argparse.Namespace) -> int:
    bench_dir = Path(args.bench_dir).resolve()
    available = discover(bench_dir)
    if not available:
        raise BenchError(f"no bench_*.py in {bench_dir} (run from a fedge source checkout)")
    names = args.names or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BenchError(f"unknown benchmark(s) {unknown}; available: {sorted(available)}")
    results_dir = bench_dir / "results"
    results_dir.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        if args.collect:
            rows.extend(collect_one(name, results_dir))
        else:
            rows.extend(run_one(name, available[name], results_dir, args.quick))
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "collected": args.collect,
        "quick": args.quick,
        "machine": machine(),
        "benchmarks": names,
        "rows": rows,
    }
    (results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    full = table(results)
    print(full)
    if args.update_readme:
        summary = table(results, [r for r in rows if headline(r)])
        update_readme(bench_dir.parent / "README.md", summary)
        docs = bench_dir.parent / "docs" / "benchmarks.md"
        if docs.parent.is_dir():
            docs.write_text(
                "# Benchmark results\n\nEvery row `fedge bench` produced; README.md shows the "
                "rows with a target and a privacy summary (README_ALSO in fedge/bench.py). "
                "Regenerate with `fedge bench --update-readme`.\n\n"
                f"{full}\n"
            )
        print("[bench] README.md results table and docs/benchmarks.md updated", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "bench", help="run the benchmarks in bench/ and regenerate the README results table"
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes; under 10 minutes")
    parser.add_argument("--bench-dir", default="bench", help="directory of bench_*.py")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="do not run: gather the rows each benchmark last wrote to bench/results/",
    )
    parser.add_argument(
        "--update-readme", action="store_true", help="rewrite README.md's results table"
    )
    parser.set_defaults(func=command)
