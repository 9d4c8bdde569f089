"""``fedge demo``: a few hundred mixed devices learn the digits together.

Exports the reference mlp, runs the embedded demo fleet
(``device_profiles/fleets/demo.yaml``) against the real service (embedded
defaults, a temporary data directory) on a virtual clock, then compares the
federated model with the same exported model trained centrally.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from device_profiles.fleet import FleetEntry, builtin_fleet, load_fleet
from device_profiles.sim.runner import SimOptions
from device_profiles.sim.tflite import central_baseline
from device_profiles.simulate import simulate


def _resize(entries: tuple[FleetEntry, ...], total: int) -> tuple[FleetEntry, ...]:
    """Scale the fleet's counts to ``total`` devices, keeping the mix."""
    current = sum(e.count for e in entries)
    quotas = [e.count * total / current for e in entries]
    counts = [int(q) for q in quotas]
    for j in sorted(range(len(quotas)), key=lambda j: counts[j] - quotas[j])[: total - sum(counts)]:
        counts[j] += 1
    return tuple(FleetEntry(e.profile, c) for e, c in zip(entries, counts, strict=True) if c > 0)


def demo(*, out: Path | None, devices: int | None, hours: float | None, progress: bool) -> int:
    started = time.perf_counter()
    fleet = load_fleet(builtin_fleet("demo"))
    if devices is not None:
        fleet = dataclasses.replace(fleet, entries=_resize(fleet.entries, devices))
    if hours is not None:
        fleet = dataclasses.replace(fleet, duration_h=hours)
    out = out or Path(tempfile.mkdtemp(prefix="fedge-demo-"))
    print(f"fedge demo: {fleet.total} devices "
          f"({', '.join(f'{e.count} {e.profile.name}' for e in fleet.entries)}), "
          f"{fleet.duration_h:g} virtual hours, digits data, reference mlp", file=sys.stderr)
    print("exporting the reference model and starting the service…", file=sys.stderr)
    report = simulate(fleet, SimOptions(out=out, progress=progress))
    result = report.results[0]
    rec = result.recorder
    prep = report.prepared
    # The central baseline: the same exported model, from the same initial
    # weights, trained on the union of every device's data with the clients'
    # batch size and learning rate, for as many examples as the fleet's
    # accepted updates trained on in total.
    examples = max(1, sum(u.examples for u in rec.uploads if u.status == 202))
    union = np.concatenate(prep.parts)
    try:
        baseline = central_baseline(
            prep.model_dir, prep.dataset.x_train[union], prep.dataset.y_train[union],
            prep.dataset.x_test, prep.dataset.y_test, examples=examples,
            batch_size=int(prep.client["batch_size"]),
            learning_rate=float(prep.client["learning_rate"]), seed=fleet.seed,
        )
    finally:
        prep.cleanup()
    sent = sum(u.payload_bytes for u in rec.uploads if u.status == 202)
    dense = rec.accepted * result.dense_update_bytes
    final = rec.latest_accuracy
    tta = rec.time_to_accuracy(fleet.target_accuracy)
    lines = [
        "",
        "## Demo: federated vs central",
        "",
        f"- federated final accuracy: {final:.3f} (version {rec.latest_version}, "
        f"{rec.accepted} accepted updates from {len({u.device for u in rec.uploads})} devices)"
        if final is not None else "- federated final accuracy: not evaluated",
        f"- centrally trained baseline: {baseline.accuracy:.3f} (same exported model and initial "
        f"weights, union of all devices' data, batch {baseline.batch_size}, lr "
        f"{baseline.learning_rate:g}, {baseline.examples} examples = the fleet's total)",
        f"- time to {fleet.target_accuracy:.0%}: "
        f"{'not reached' if tta is None else f'{tta:.2f} virtual hours'}",
        f"- update bytes uploaded: {sent / 1e6:.3f} MB vs {dense / 1e6:.3f} MB as dense float32 "
        f"({dense / sent if sent else float('nan'):.1f}× smaller)",
    ]
    summary = report.summary.read_text(encoding="utf-8")
    report.summary.write_text(summary + "\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[3:]))
    print(f"- real time: {time.perf_counter() - started:.0f} s")
    print(f"report: {report.summary} (plots: {', '.join(p.name for p in report.plots)})")
    return 0
