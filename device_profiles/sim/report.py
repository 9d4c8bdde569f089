"""Plots (matplotlib, Agg) and summary.md for one run or a comparison."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_profiles.sim.metrics import Recorder


@dataclass(frozen=True)
class RunResult:
    """One simulated run: its recorder and measurements of the run itself."""

    mode: str
    recorder: Recorder
    duration_h: float
    wall_s: float
    events: int
    devices: int
    dense_update_bytes: int  # one update as dense float32 (for ratios)
    info: Mapping[str, Any]

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0


def _plt() -> Any:
    import matplotlib  # noqa: PLC0415 — heavy, only needed when writing a report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def write_plots(results: Sequence[RunResult], out: Path, target: float) -> list[Path]:
    plt = _plt()
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        pts = [(v.t_h, v.accuracy) for v in r.recorder.versions if v.accuracy is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".", label=f"{r.mode}")
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xlabel("virtual time (hours)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy of each published version")
    ax.legend()
    save(fig, "accuracy.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        s = r.recorder.samples
        ax.plot([x.t_h for x in s], [x.bytes_up / 1e6 for x in s], label=f"{r.mode} up")
        ax.plot([x.t_h for x in s], [x.bytes_down / 1e6 for x in s], ls="--",
                label=f"{r.mode} down")
    ax.set_xlabel("virtual time (hours)")
    ax.set_ylabel("MB (cumulative)")
    ax.set_title("Bytes uploaded and downloaded")
    ax.legend()
    save(fig, "bytes.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        s = r.recorder.samples
        ax.plot([x.t_h for x in s], [x.eligible for x in s], label=f"{r.mode} eligible")
        ax.plot([x.t_h for x in s], [x.trained for x in s], ls="--",
                label=f"{r.mode} trained in the interval")
    ax.set_xlabel("virtual time (hours)")
    ax.set_ylabel("devices")
    ax.set_title("Eligible devices, and devices whose update was accepted, per sample interval")
    ax.legend()
    save(fig, "devices.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        counts = r.recorder.staleness_counts()
        if counts:
            ax.bar([k + i * width for k in counts], list(counts.values()), width=width,
                   label=r.mode)
    ax.set_xlabel("staleness τ (versions published since the update's base)")
    ax.set_ylabel("accepted updates")
    ax.set_title("Staleness of accepted updates")
    ax.legend()
    save(fig, "staleness.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    profiles = sorted({p for r in results for p in r.recorder.devices_by_profile})
    for i, r in enumerate(results):
        ax.barh([j + i * width for j in range(len(profiles))],
                [r.recorder.accepted_by_profile.get(p, 0) for p in profiles],
                height=width, label=r.mode)
    ax.set_yticks([j + width * (len(results) - 1) / 2 for j in range(len(profiles))])
    ax.set_yticklabels(profiles)
    ax.set_xlabel("accepted updates")
    ax.set_title("Contribution per device profile")
    ax.legend()
    save(fig, "contribution.png")

    private = [r for r in results if _dp_versions(r)]
    if private:  # accuracy against the ε spent so far: the privacy/utility trade-off
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in private:
            pts = [(v.epsilon, v.accuracy) for v in _dp_versions(r) if v.accuracy is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=r.mode)
        ax.set_xlabel("cumulative ε (at the configured δ)")
        ax.set_ylabel("test accuracy")
        ax.set_title("Accuracy against the privacy budget spent")
        ax.legend()
        save(fig, "privacy.png")
    return paths


def _dp_versions(r: RunResult) -> list[Any]:
    return [v for v in r.recorder.versions if v.epsilon is not None]


def _fmt_eps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def privacy_lines(results: Sequence[RunResult], rows: int = 12) -> list[str]:
    """summary.md's DP section: ε per published version (this step's and the
    cumulative one), as the service's version rows report them. Empty when
    no run had DP."""
    lines: list[str] = []
    for r in results:
        versions = _dp_versions(r)
        if not versions:
            continue
        last = versions[-1]
        delta = "n/a" if last.delta is None else f"{last.delta:g}"
        lines += [
            "", f"## Differential privacy ({r.mode})", "",
            f"Cumulative **ε = {_fmt_eps(last.epsilon)}** at δ = {delta} after "
            f"{len(versions)} private versions (the service's accountant, read from each "
            "version's `privacy` report; every version is in versions.csv).", "",
            "| version | virtual h | accuracy | step ε | cumulative ε | clip norm |",
            "|---|---|---|---|---|---|",
        ]
        shown = versions if len(versions) <= rows else versions[: rows // 2] + versions[-rows // 2:]
        for i, v in enumerate(shown):
            if len(versions) > rows and i == rows // 2:
                lines.append(f"| … {len(versions) - rows} more | | | | | |")
            acc = "n/a" if v.accuracy is None else f"{v.accuracy:.3f}"
            clip = "n/a" if v.clip_norm is None else f"{v.clip_norm:.4g}"
            lines.append(
                f"| {v.version} | {v.t_h:.2f} | {acc} | {_fmt_eps(v.step_epsilon)} | "
                f"{_fmt_eps(v.epsilon)} | {clip} |"
            )
    return lines


def _fmt_h(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f} h"


def summary_markdown(
    fleet_name: str,
    results: Sequence[RunResult],
    target: float,
    plots: Sequence[Path],
    extra: Sequence[str] = (),
) -> str:
    lines = [f"# fedge simulation: {fleet_name}", ""]
    lines += [
        "| mode | devices | virtual h | versions | final accuracy | time to "
        f"{target:.0%} | updates accepted / rejected | MB up (to target) | MB down | "
        "real time | events/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rec = r.recorder
        tta = rec.time_to_accuracy(target)
        up_to = rec.bytes_up_to(tta)
        acc = rec.latest_accuracy
        lines.append(
            f"| {r.mode} | {r.devices} | {r.duration_h:g} | {rec.latest_version} | "
            f"{'n/a' if acc is None else f'{acc:.3f}'} | {_fmt_h(tta)} | "
            f"{rec.accepted} / {rec.rejected} | {rec.bytes_up / 1e6:.2f} "
            f"({'n/a' if up_to is None else f'{up_to / 1e6:.2f}'}) | "
            f"{rec.bytes_down / 1e6:.2f} | {r.wall_s:.1f} s | {r.events_per_s:.0f} |"
        )
    if len(results) == 2:
        a, b = results
        ta, tb = a.recorder.time_to_accuracy(target), b.recorder.time_to_accuracy(target)
        if ta is not None and tb is not None and ta > 0:
            lines += ["", f"**{a.mode}** reaches {target:.0%} in {ta:.2f} h, **{b.mode}** in "
                      f"{tb:.2f} h: a speed-up of **{tb / ta:.2f}×** in virtual time."]
        else:
            lines += ["", f"Time to {target:.0%}: {a.mode} {_fmt_h(ta)}, {b.mode} {_fmt_h(tb)} "
                      "(no speed-up can be stated when a mode never reaches the target)."]
    lines += ["", "## Contribution per profile", "",
              "| profile | devices | accepted updates | examples trained | MB up |",
              "|---|---|---|---|---|"]
    rec0 = results[0].recorder
    for p in sorted(rec0.devices_by_profile):
        mb_up = rec0.bytes_up_by_profile.get(p, 0) / 1e6
        lines.append(
            f"| {p} | {rec0.devices_by_profile[p]} | {rec0.accepted_by_profile.get(p, 0)} | "
            f"{rec0.examples_by_profile.get(p, 0)} | {mb_up:.2f} |"
        )
    lines += privacy_lines(results)
    lines += list(extra)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"
