"""``fedge simulate`` end to end: prepare, run each mode, write the report."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_profiles.fleet import FleetSpec
from device_profiles.sim.metrics import Recorder
from device_profiles.sim.report import RunResult, summary_markdown, write_plots
from device_profiles.sim.runner import Prepared, SimOptions, modes_for, prepare, run_mode


@dataclass(frozen=True)
class SimulationReport:
    out: Path
    summary: Path
    plots: tuple[Path, ...]
    results: tuple[RunResult, ...]
    prepared: Prepared


def _progress_bar(fleet: FleetSpec, mode: str, enabled: bool
                  ) -> tuple[Callable[[float, Recorder], None] | None, Any]:
    if not enabled:
        return None, None
    from tqdm import tqdm  # noqa: PLC0415

    total = round(fleet.duration_h, 2)
    bar = tqdm(total=total, desc=f"{mode:>5}", unit="vh", file=sys.stderr,
               bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} virtual h "
                          "[{elapsed}] {postfix}")

    def update(now_s: float, rec: Recorder) -> None:
        hours = min(total, now_s / 3600.0)
        bar.update(hours - bar.n)
        acc = rec.samples[-1].accuracy if rec.samples else None
        version = rec.samples[-1].version if rec.samples else 0
        bar.set_postfix_str(
            f"v{version} acc {'—' if acc is None else f'{acc:.3f}'} "
            f"updates {rec.accepted} training {rec.training_now}", refresh=False)

    return update, bar


def simulate(fleet: FleetSpec, options: SimOptions, *, extra_summary: tuple[str, ...] = ()
             ) -> SimulationReport:
    """Run and report. The caller calls ``report.prepared.cleanup()`` when done
    with the export and the work directory."""
    prepared = prepare(fleet, options)
    results = []
    try:
        for mode in modes_for(fleet, options):
            update, bar = _progress_bar(fleet, mode, options.progress)
            try:
                results.append(run_mode(prepared, mode, options, update))
            finally:
                if bar is not None:
                    bar.close()
    except BaseException:
        prepared.cleanup()
        raise
    return write_report(prepared, tuple(results), options.out, extra_summary)


def write_report(prepared: Prepared, results: tuple[RunResult, ...], out: Path,
                 extra_summary: tuple[str, ...] = ()) -> SimulationReport:
    fleet = prepared.fleet
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.recorder.write(out, prefix="" if len(results) == 1 else f"{r.mode}_")
    plots = write_plots(results, out, fleet.target_accuracy)
    cal = prepared.calibration
    info = [
        "", "## Run", "",
        f"- fleet: `{fleet.source}` ({prepared.fleet.total} devices, seed {fleet.seed})",
        f"- dataset: {prepared.dataset.name}, {len(prepared.dataset.x_train)} training examples "
        f"split {fleet.partition.scheme.value} over the devices, "
        f"{len(prepared.dataset.x_test)} held out for evaluation",
        f"- model: {prepared.manifest.name}, {prepared.manifest.num_trainable_parameters} "
        f"trainable parameters (dense float32 update: {results[0].dense_update_bytes} bytes)",
        f"- codec: {dict(fleet.codec) or 'service default'}",
        f"- host calibration: {cal.step_s * 1e6:.1f} µs per train step at batch "
        f"{cal.batch_size} ({cal.runtime}); a device of speed s spends that / s per step",
    ]
    for r in results:
        info.append(f"- {r.mode}: {r.events} events in {r.wall_s:.1f} s real time "
                    f"({r.events_per_s:.0f} events/s), extra: {json.dumps(r.recorder.extra)}")
    text = summary_markdown(fleet.name, results, fleet.target_accuracy, plots,
                            extra=tuple(info) + extra_summary)
    summary = out / "summary.md"
    summary.write_text(text, encoding="utf-8")
    return SimulationReport(out, summary, tuple(plots), results, prepared)
