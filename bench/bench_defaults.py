"""The default plan and codec, chosen by measurement: bytes uploaded (and
virtual hours) until the demo fleet's model reaches 90 % held-out accuracy,
for the service's defaults and the alternatives a user would try.

Each variant runs the demo fleet (device_profiles/fleets/demo.yaml: 200
mixed devices over 24 virtual hours, digits, Dirichlet 0.5; ``--quick``: 100
devices × 12 h) through the same ``simulate`` as ``fedge simulate``, with
only the device plan (epochs, learning rate) and the codec changed. The
baseline of every row is the first variant — the defaults the service had
before this measurement — in the same run.

Run: ``.venv/bin/python bench/bench_defaults.py [--quick]``; writes
``bench/results/defaults.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fedge.bench import emit  # noqa: E402

TARGET = 0.90
# (label, client plan, codec). The first is the defaults before this
# benchmark; the others are what a user tunes first.
VARIANTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("1 epoch, lr 0.05, top-1%/8-bit (previous defaults)",
     {"epochs": 1, "learning_rate": 0.05}, {"density": 0.01, "bits": 8}),
    ("5 epochs, lr 0.1, top-25%/8-bit (the demo's)",
     {"epochs": 5, "learning_rate": 0.1}, {"density": 0.25, "bits": 8}),
    ("5 epochs, lr 0.1, top-10%/8-bit + EF",
     {"epochs": 5, "learning_rate": 0.1}, {"density": 0.1, "bits": 8, "error_feedback": True}),
    ("5 epochs, lr 0.1, top-1%/8-bit + EF",
     {"epochs": 5, "learning_rate": 0.1}, {"density": 0.01, "bits": 8, "error_feedback": True}),
    ("2 epochs, lr 0.1, top-10%/8-bit + EF",
     {"epochs": 2, "learning_rate": 0.1}, {"density": 0.1, "bits": 8, "error_feedback": True}),
    ("5 epochs, lr 0.1, top-10%/4-bit + EF",
     {"epochs": 5, "learning_rate": 0.1}, {"density": 0.1, "bits": 4, "error_feedback": True}),
    ("5 epochs, lr 0.1, dense float16",
     {"epochs": 5, "learning_rate": 0.1}, {"values": "float16"}),
]


def _fleet(client: dict[str, Any], codec: dict[str, Any], quick: bool) -> dict[str, Any]:
    fleet: dict[str, Any] = yaml.safe_load(
        (REPO / "device_profiles" / "fleets" / "demo.yaml").read_text()
    )
    fleet["codec"] = codec
    fleet["server"]["client"] = {**fleet["server"]["client"], **client, "batch_size": 16}
    fleet["target_accuracy"] = TARGET
    if quick:
        fleet["total"], fleet["duration_h"] = 100, 12
        fleet["devices"] = [d for d in fleet["devices"] if "share" in d]
    return fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 devices × 12 virtual h")
    args = parser.parse_args()
    from device_profiles.fleet import load_fleet
    from device_profiles.sim.runner import SimOptions
    from device_profiles.simulate import simulate
    from model_export import export_reference

    rows: list[dict[str, Any]] = []
    baseline: float | None = None
    with tempfile.TemporaryDirectory(prefix="fedge-bench-defaults-") as tmp:
        work = Path(tmp)
        model_dir = work / "mlp"
        export_reference("mlp", model_dir, input_shape=(64,), classes=10)
        for i, (label, client, codec) in enumerate(VARIANTS):
            print(f"[defaults] {i + 1}/{len(VARIANTS)}: {label}", file=sys.stderr, flush=True)
            path = work / f"v{i}.yaml"
            path.write_text(yaml.safe_dump(_fleet(client, codec, args.quick)))
            report = simulate(
                load_fleet(path),
                SimOptions(out=work / f"v{i}", workdir=work / f"v{i}-work", model_dir=model_dir,
                           progress=False),
            )
            rec = report.results[0].recorder
            hours = rec.time_to_accuracy(TARGET)
            sent = rec.bytes_up_to(hours)
            value = float(sent) if sent is not None else None
            if i == 0:
                baseline = value
            fleet_size = "100 devices × 12 h" if args.quick else "200 devices × 24 h"
            rows.append({
                "benchmark": "default plan and codec",
                "metric": f"update bytes to {TARGET:.0%}: {label}",
                "value": value,
                "unit": "bytes",
                "baseline": baseline,
                "ratio": (value / baseline) if value is not None and baseline else None,
                "target": None,
                # The previous defaults, the chosen ones (fewest bytes) and the
                # fastest alternative are the README's rows; every row is in
                # docs/benchmarks.md.
                "headline": i in (0, 3, 5),
                "note": f"demo fleet, {fleet_size}; "
                        f"{'not reached' if hours is None else f'{hours:.2f} virtual h'} to "
                        f"{TARGET:.0%}; final accuracy {rec.latest_accuracy}; baseline = the "
                        "previous defaults (first row)",
            })
    emit(rows, REPO / "bench" / "results" / "defaults.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
