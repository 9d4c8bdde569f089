"""What runs where training runs: one interpreter, one data source, batch by
batch. The worker process imports only this module (plus NumPy and the TFLite
runtime), not asyncio or aiohttp: every megabyte of the worker's RSS is
training's.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.config import DataConfig
from edge_client.data import open_source
from edge_client.errors import TrainingError
from edge_client.storage import arrays_from_bytes
from fedge.manifest import Manifest
from fedge.runtime import RuntimeUnavailable, TrainableModel, available_runtimes


@dataclass(frozen=True)
class TrainingJob:
    graph_path: Path
    manifest: Manifest
    weights: Mapping[str, np.ndarray]
    data: DataConfig
    epochs: int
    batch_size: int
    learning_rate: float
    max_examples: int | None
    fedprox_mu: float
    seed: int
    runtime: str | None = None
    num_threads: int = 1


@dataclass(frozen=True)
class StepResult:
    examples: int
    loss: float


def local_runtime(preferred: str | None) -> str:
    names = available_runtimes()
    name = preferred if preferred in names else (names[0] if names and not preferred else None)
    if name is None:
        return "none"
    dist = {"tensorflow": "tensorflow"}.get(name, name)
    for candidate in (dist, f"{dist}-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return f"{name} {importlib.metadata.version(candidate)}"
    return f"{name} unknown"


class LocalSession:
    """Synchronous training on one interpreter: what the worker and the
    in-process trainer both run."""

    def __init__(self, job: TrainingJob) -> None:
        try:
            self.model = TrainableModel(
                job.graph_path, job.manifest, runtime=job.runtime, num_threads=job.num_threads
            )
            self.model.set_weights(job.weights)
        except RuntimeUnavailable as exc:
            raise TrainingError(str(exc)) from exc
        self.runtime = str(self.model.runtime)
        source = open_source(job.data, job.manifest)
        self.data_bytes = int(getattr(source, "nbytes", 0))
        self._batches: Iterator[tuple[np.ndarray, np.ndarray]] = source.batches(
            job.batch_size, job.epochs, job.max_examples, job.seed
        )
        self.job = job

    def step(self) -> StepResult | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        x, y = batch
        if len(x) == 0:
            return StepResult(0, float("nan"))
        loss = self.model.train_step(
            x, y, self.job.learning_rate, self.job.fedprox_mu if self.job.manifest.fedprox else None
        )
        return StepResult(len(x), loss)

    def weights(self) -> dict[str, np.ndarray]:
        return self.model.get_weights()


# --- the worker protocol ------------------------------------------------------
# A frame is: u32 header length, JSON header, u64 blob length, blob (an .npz of
# arrays, or empty). JSON + .npz rather than pickle: the worker may run another
# interpreter with another NumPy (tflite-runtime needs numpy<2), and .npz is
# stable across NumPy versions.

_HEAD = struct.Struct(">I")
_BLOB = struct.Struct(">Q")


def encode_frame(header: Mapping[str, Any], blob: bytes = b"") -> bytes:
    head = json.dumps(dict(header)).encode()
    return _HEAD.pack(len(head)) + head + _BLOB.pack(len(blob)) + blob


def job_header(job: TrainingJob) -> dict[str, Any]:
    return {
        "cmd": "start",
        "graph_path": str(job.graph_path),
        "manifest": job.manifest.to_dict(),
        "data": job.data.to_dict(),
        "epochs": job.epochs,
        "batch_size": job.batch_size,
        "learning_rate": job.learning_rate,
        "max_examples": job.max_examples,
        "fedprox_mu": job.fedprox_mu,
        "seed": job.seed,
        "runtime": job.runtime,
        "num_threads": job.num_threads,
    }


def job_from_header(header: Mapping[str, Any], blob: bytes) -> TrainingJob:
    data = header["data"]
    return TrainingJob(
        graph_path=Path(header["graph_path"]),
        manifest=Manifest.from_dict(header["manifest"]),
        weights=arrays_from_bytes(blob),
        data=DataConfig(
            kind=data["kind"], path=data.get("path"), label_column=data.get("label_column"),
            callable=data.get("callable"), python_path=tuple(data.get("python_path") or ()),
        ),
        epochs=int(header["epochs"]),
        batch_size=int(header["batch_size"]),
        learning_rate=float(header["learning_rate"]),
        max_examples=header.get("max_examples"),
        fedprox_mu=float(header["fedprox_mu"]),
        seed=int(header["seed"]),
        runtime=header.get("runtime"),
        num_threads=int(header.get("num_threads", 1)),
    )
