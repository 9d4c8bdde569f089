"""What an export returns: the files, the manifest and the measurements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.manifest import Manifest


@dataclass(frozen=True)
class RuntimeCheck:
    """Verification of one exported model under one TFLite runtime.

    ``checks`` maps a check name to whether it passed; ``measurements`` holds
    the numbers behind them (relative errors, losses, step time).
    """

    runtime: str
    version: str
    python: str  # the interpreter's version, e.g. "3.11"
    passed: bool
    checks: Mapping[str, bool] = field(default_factory=dict)
    measurements: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    interpreter: str = "this process"  # for messages only; never written to the manifest

    def to_manifest(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "version": self.version,
            "python": self.python,
            "checks": dict(self.checks),
            "measurements": {k: float(v) for k, v in self.measurements.items()},
        }

    def summary(self) -> str:
        status = "ok" if self.passed else "FAILED"
        worst = self.measurements.get("max_rel_error")
        detail = f", max rel. error {worst:.2e}" if worst is not None else ""
        losses = (self.measurements.get("loss_first"), self.measurements.get("loss_last"))
        if None not in losses:
            detail += f", loss {losses[0]:.4f} → {losses[1]:.4f}"
        error = f": {self.error}" if self.error else ""
        where = f"Python {self.python}, {self.interpreter}"
        return f"{self.runtime} {self.version} ({where}): {status}{detail}{error}"


@dataclass(frozen=True)
class ExportReport:
    """The result of one export (``path`` holds model.tflite and manifest.json)."""

    path: Path
    manifest: Manifest
    num_parameters: int
    num_trainable_parameters: int
    file_size: int
    ops: tuple[str, ...]
    verification: tuple[RuntimeCheck, ...]
    seconds: Mapping[str, float] = field(default_factory=dict)
    training: str = ""  # the loss/optimizer/learning rate used and where each came from
    operators: Mapping[str, int] = field(default_factory=dict)  # per signature (subgraph)

    @property
    def model_path(self) -> Path:
        return self.path / "model.tflite"

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def summary(self) -> str:
        frozen = self.num_parameters - self.num_trainable_parameters
        graph = ", ".join(f"{k} {v:,}" for k, v in self.operators.items())
        lines = [
            f"exported {self.manifest.name!r} to {self.path}",
            f"  parameters: {self.num_parameters:,} ({self.num_trainable_parameters:,} trainable"
            + (f", {frozen:,} frozen: forward pass only)" if frozen else ")"),
            f"  model.tflite: {self.file_size:,} bytes"
            + (f"; operators per signature: {graph}" if graph else ""),
            "  " + (self.training or f"loss: {self.manifest.loss}, optimizer: "
                    f"{self.manifest.optimizer.get('name')}"),
            f"  builtin ops ({len(self.ops)}): {', '.join(self.ops)}",
            "  verification:",
        ]
        lines += [f"    {check.summary()}" for check in self.verification]
        if not self.verification:
            lines.append("    (skipped)")
        return "\n".join(lines)
