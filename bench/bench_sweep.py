"""Reliability sweep: what an attacker, a careless client and a crash do to a
real ``fedge serve``.

- API sweep (tests/aggregation_service/sweep.py): schemathesis over every
  operation of ``/openapi.json`` with each credential kind (none, operator,
  device, dashboard session), N cases per operation and a fixed seed; every
  answer checked for 5xx and against the document (status, content type,
  headers, body schema). Full: 100 cases per operation; ``--quick``: 20.
- Kill drill (tests/aggregation_service/killdrill.py): 8 devices upload
  concurrently; the server is SIGKILLed at random moments of ingest and
  publication and restarted on the same data directory; after each restart
  and at the end, acknowledged updates lost or doubled, assignments revived,
  second updates taken by used plans, versions that differ from the
  uninterrupted computation. Full: 27 kills; ``--quick``: 6.

Run: ``.venv/bin/python bench/bench_sweep.py [--quick]``; writes
``bench/results/sweep.json``. The counts are the results: a correct service
scores 0 on every failure row, whatever the machine's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fedge.bench import emit  # noqa: E402
from tests.aggregation_service.killdrill import run_kill_drill  # noqa: E402
from tests.aggregation_service.sweep import run_sweep  # noqa: E402

Row = dict[str, Any]


def _row(benchmark: str, metric: str, value: float, unit: str, target: str | None,  # noqa: PLR0917
         note: str) -> Row:
    return {
        "benchmark": benchmark, "metric": metric, "value": value, "unit": unit,
        "baseline": None, "ratio": None, "target": target, "note": note,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 cases per operation, 6 kills")
    args = parser.parse_args()
    examples, kills = (20, 6) if args.quick else (100, 27)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fedge-sweep-") as tmp:
        started = time.monotonic()
        print(f"[sweep] schemathesis, {examples} cases per operation", file=sys.stderr)
        sweep = run_sweep(Path(tmp) / "api", max_examples=examples, seed=1)
        api_s = time.monotonic() - started
        for kind in sweep.kinds:
            print(f"[sweep] {kind.kind}: {kind.cases} cases, {kind.failures} failures",
                  file=sys.stderr)
            rows.append(_row(
                "api sweep", f"cases, {kind.kind} credentials", kind.cases, "cases", None,
                f"schemathesis {examples} per operation, seed 1; {kind.failures} failures "
                f"(5xx or not as documented)",
            ))
        failures = sum(k.failures for k in sweep.kinds)
        rows.append(_row(
            "api sweep", "5xx answers or answers not as documented", failures, "cases", "0",
            f"{sweep.cases} cases over every operation of /openapi.json, 4 credential kinds; "
            f"server log: {sweep.server_5xx} internal errors; {api_s:.0f} s",
        ))
        started = time.monotonic()
        print(f"[sweep] kill drill, {kills} SIGKILLs", file=sys.stderr)
        drill = asyncio.run(run_kill_drill(Path(tmp) / "kills", kills=kills))
        drill_s = time.monotonic() - started
        note = (f"8 devices, K = 5; {drill.acknowledged} acknowledged updates, "
                f"{drill.versions} versions; {drill_s:.0f} s")
        rows += [
            _row("kill drill", "SIGKILLs survived", drill.kills, "kills", None, note),
            _row("kill drill", "acknowledged updates lost", drill.lost, "updates", "0", note),
            _row("kill drill", "acknowledged updates counted twice", drill.doubled, "updates",
                 "0", note),
            _row("kill drill", "used assignments revived after a restart", drill.revived,
                 "assignments", "0", "outstanding plans beyond those unreported or in flight"),
            _row("kill drill", "second updates taken by a used plan", drill.second_updates,
                 "updates", "0", "12 used plans retried under a new key after each restart"),
            _row("kill drill", "versions differing from the uninterrupted run",
                 drill.versions_differing, "versions", "0", "bit for bit, recomputed from the log"),
        ]
    emit(rows, REPO / "bench" / "results" / "sweep.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
