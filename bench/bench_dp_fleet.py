"""DP modes in the fleet simulator: accuracy and ε of central DP with a fixed
clip norm, central DP with adaptive clipping, and local DP, against the same
fleet without DP in the same run; and the device-side cost of local noise.

1. The digits fleet (real agents, the real service, real TFLite training on
   a virtual clock, ``device_profiles.simulate``), asynchronous FedBuff with
   K = 10, run four times with the same seed: no DP (the baseline), central
   DP (z = 1, C = 1), central DP with adaptive clipping (z = 1, starting at
   C = 1, target quantile 0.5, σ_b = 1), local DP (z = 1, C = 1, dense
   8-bit codec). ε is what the service's version rows report (RDP, δ = 1e-5,
   no population given, so every step is charged with q = 1: the
   conservative figure for asynchronous participation; local DP: the device
   with the most releases).
2. Device-side encode of a 100,000-parameter update with the plan's dp
   block in local mode (clip + Gaussian noise + dense 8-bit codec) against
   the plain encode of the same update with the same codec, in the same run.

Run: ``.venv/bin/python bench/bench_dp_fleet.py [--quick]``; writes
``bench/results/dp_fleet.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedge.bench import emit

RESULTS = Path(__file__).resolve().parent / "results" / "dp_fleet.json"
BENCH = "dp_fleet"

MIX = [
    {"profile": "raspberry-pi-4", "share": 0.2},
    {"profile": "industrial-gateway", "share": 0.2},
    {"profile": "android-flagship", "share": 0.3},
    {"profile": "android-midrange", "share": 0.3},
]
DP = {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5}
MODES: dict[str, tuple[dict[str, Any] | None, dict[str, Any]]] = {
    "no DP": (None, {"density": 0.25, "bits": 8}),
    "central, fixed C": (DP, {"density": 0.25, "bits": 8, "clip_norm": 1.0}),
    "central, adaptive C": (
        {**DP, "adaptive": {"target_quantile": 0.5, "learning_rate": 0.2,
                            "count_noise_std": 1.0}},
        {"density": 0.25, "bits": 8, "clip_norm": 1.0},
    ),
    "local": ({**DP, "mode": "local"}, {"density": 1.0, "bits": 8}),
}


def _fleet(total: int, hours: float, dp: dict[str, Any] | None,
           codec: dict[str, Any]) -> dict[str, Any]:
    server: dict[str, Any] = {
        "buffer_size": 10, "max_staleness": 20, "report_deadline_s": 1800,
        "client": {"epochs": 5, "batch_size": 16, "learning_rate": 0.1},
    }
    if dp is not None:
        server["dp"] = dp
    return {
        "name": "dp", "seed": 3, "duration_h": hours, "target_accuracy": 0.8,
        "devices": MIX, "total": total,
        "dataset": {"name": "digits"}, "partition": {"scheme": "iid"},
        "codec": codec, "server": server,
        "policy": {"require_power": True, "recheck_interval_s": 900,
                   "report_interval_s": 3600},
        "metrics_interval_s": 1800,
    }


def fleet_rows(work: Path, model_dir: Path, total: int, hours: float) -> list[dict[str, Any]]:
    from device_profiles.fleet import load_fleet
    from device_profiles.sim.runner import SimOptions
    from device_profiles.simulate import simulate

    results: dict[str, tuple[float | None, float | None, int, float | None]] = {}
    for i, (mode, (dp, codec)) in enumerate(MODES.items()):
        path = work / f"fleet-{i}.yaml"
        path.write_text(yaml.safe_dump(_fleet(total, hours, dp, codec)))
        report = simulate(load_fleet(path), SimOptions(
            out=work / f"out-{i}", workdir=work / f"work-{i}", model_dir=model_dir,
            progress=sys.stderr.isatty()))
        rec = report.results[0].recorder
        private = [v for v in rec.versions if v.epsilon is not None]
        results[mode] = (
            rec.latest_accuracy,
            private[-1].epsilon if private else None,
            rec.latest_version,
            private[-1].clip_norm if private else None,
        )
    base_acc = results["no DP"][0]
    rows = []
    for mode, (acc, eps, versions, clip) in results.items():
        note = f"{total} devices × {hours:g} h, {versions} versions"
        if clip is not None:
            note += f", final clip bound {clip:.3g}"
        rows.append({
            "benchmark": BENCH, "metric": f"final accuracy, {mode}", "value": acc,
            "unit": "", "baseline": base_acc,
            "ratio": None if acc is None or not base_acc else acc / base_acc,
            "target": None, "note": note + " (baseline: the same fleet without DP)",
        })
        if eps is not None:
            rows.append({
                "benchmark": BENCH, "metric": f"cumulative ε, {mode}", "value": eps,
                "unit": "", "baseline": None, "ratio": None, "target": None,
                "note": "δ = 1e-5, q = 1 (no population lower bound)"
                + ("; per device, the device with the most releases" if mode == "local" else ""),
            })
    return rows


def encode_rows(repeats: int) -> list[dict[str, Any]]:
    from edge_client.codec import encode_update
    from edge_client.protocol import PlanDP

    rng = np.random.default_rng(0)
    update = {"w": (rng.normal(size=100_000) * 0.01).astype(np.float32)}
    spec = {"density": 1.0, "bits": 8}
    dp = PlanDP(mode="local", clip_norm=1.0, noise_multiplier=1.0, clip_bit=False)

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            started = time.process_time()
            fn()
            times.append(time.process_time() - started)
        return min(times) * 1e3

    plain = best(lambda: encode_update(update, spec, None, 0))
    local = best(lambda: encode_update(update, spec, None, 0, dp))
    return [{
        "benchmark": BENCH, "metric": "device encode with local noise, 100k params",
        "value": local, "unit": "ms CPU", "baseline": plain, "ratio": local / plain,
        "target": None,
        "note": "clip + N(0, (zC)²) + dense 8-bit codec vs the same codec without noise "
        f"(best of {repeats})",
    }]


def run(quick: bool) -> list[dict[str, Any]]:
    from model_export import export_reference

    rows = encode_rows(5 if quick else 20)
    with tempfile.TemporaryDirectory(prefix="fedge-bench-dp-") as tmp:
        work = Path(tmp)
        model_dir = work / "mlp"
        export_reference("mlp", model_dir, input_shape=(64,), classes=10)
        total, hours = (40, 6.0) if quick else (200, 24.0)
        rows += fleet_rows(work, model_dir, total, hours)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    emit(run(args.quick), RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
