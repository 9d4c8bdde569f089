"""``fedge agent init`` and ``fedge agent check``: does the local data fit the
model this device will train?

The same loaders and the same checks (:func:`edge_client.data.conform`) run
where training runs, before every task; here they run up front, against the
manifest of the model's training version, so a wrong feature count, labels
out of range or wrong ``.npz`` keys are reported before a device enrolls, not
after its first download.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_client.config import DataConfig
from edge_client.data import ArrayData, open_source
from edge_client.errors import DataError
from fedge.manifest import Manifest

CHECK_BATCH = 32


@dataclass(frozen=True)
class DataReport:
    examples: int
    input_shape: tuple[int, ...]
    label_shape: tuple[int, ...]
    label_min: float
    label_max: float

    def summary(self, model: str, version: int) -> str:
        labels = (f"labels {self.label_min:g}..{self.label_max:g}" if self.examples else "")
        return (f"data fits model {model!r} version {version}: {self.examples} examples of "
                f"shape {self.input_shape}, {labels}")


def check_data(config: DataConfig, manifest: Manifest) -> DataReport:
    """Load the data as training would and check all of it; DataError if it
    does not fit (or holds no example)."""
    source = open_source(config, manifest)
    if isinstance(source, ArrayData):
        x, y = source.x, source.y
        examples = len(x)
    else:  # a callable: one epoch of its batches, each checked as training checks it
        examples, lo, hi = 0, np.inf, -np.inf
        for bx, by in source.batches(CHECK_BATCH, 1, None, seed=0):
            examples += len(bx)
            if len(by):
                lo, hi = min(lo, float(by.min())), max(hi, float(by.max()))
        if examples == 0:
            raise DataError(f"data.callable {config.callable}: yielded no examples")
        return DataReport(examples, manifest.input.shape, manifest.label.shape, lo, hi)
    if examples == 0:
        raise DataError(f"{config.path}: no examples")
    return DataReport(examples, tuple(x.shape[1:]), tuple(y.shape[1:]),
                      float(y.min()), float(y.max()))
