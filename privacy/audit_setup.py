"""What every audit starts from: data, the exported reference model, and a
clear error when an optional dependency is missing.

The audits run offline (a laptop, CI, the operator's machine), never on a
device or inside the service. They use scikit-learn's bundled digits (8×8
grey images, no download), the real exported TFLite graph through
:class:`fedge.runtime.TrainableModel`, and — only for exporting a reference
model and for the gradient-matching inversion attack — TensorFlow. Every
import of those is inside a function, so importing this module (the ``fedge``
command line does, on devices too) loads none of them.
"""

from __future__ import annotations

import importlib.util
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from privacy.errors import AuditError

if TYPE_CHECKING:
    from fedge.manifest import Manifest
    from fedge.runtime import TrainableModel

AUDIT_EXTRA = "pip install 'fedge[audit]'"


def require(module: str, purpose: str) -> None:
    """Raise :class:`AuditError` naming the extra to install when ``module``
    is not importable."""
    if importlib.util.find_spec(module) is None:
        raise AuditError(f"{purpose} needs {module}, which is not installed: {AUDIT_EXTRA}")


@dataclass(frozen=True)
class ImageData:
    """Examples with their image shape: ``x`` is (n, features) float32 in
    [0, 1], ``y`` int32 labels, ``image_shape`` how one row is drawn."""

    x: np.ndarray
    y: np.ndarray
    image_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or len(self.x) != len(self.y) or len(self.x) == 0:
            raise AuditError(
                f"data: need x of shape (n, features) and n labels, got {self.x.shape} and "
                f"{self.y.shape}"
            )
        if self.image_shape[0] * self.image_shape[1] != self.x.shape[1]:
            raise AuditError(
                f"data: {self.x.shape[1]} features do not make {self.image_shape} images"
            )
        if not np.all(np.isfinite(self.x)) or self.x.min() < 0 or self.x.max() > 1:
            raise AuditError("data: x must be finite and scaled to [0, 1] (PSNR assumes it)")

    @property
    def classes(self) -> int:
        return int(self.y.max()) + 1


def digits(seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 8×8 digits scaled to [0, 1], shuffled with ``seed``
    (seed 0 gives the order fedge's privacy benchmark uses)."""
    require("sklearn", "the digits data")
    from sklearn.datasets import load_digits  # noqa: PLC0415

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    return ImageData((x[order] / 16.0).astype(np.float32), y[order].astype(np.int32), (8, 8))


def load_images(path: Path, flag: str) -> ImageData:
    """An ``.npz`` with ``x`` (n, h, w), (n, h, w, 1) or (n, features) in
    [0, 1] and ``y``: images for the inversion audit."""
    if not path.is_file():
        raise AuditError(f"{flag}: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise AuditError(
                    f"{flag}: {path} has arrays {sorted(data.files)}; it needs 'x' and 'y'"
                )
            x, y = np.asarray(data["x"]), np.asarray(data["y"])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise AuditError(f"{flag}: {path} is not a readable .npz file ({exc})") from exc
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 3:
        shape = (int(x.shape[1]), int(x.shape[2]))
    elif x.ndim == 2:
        side = math.isqrt(int(x.shape[1]))
        if side * side != x.shape[1]:
            raise AuditError(f"{flag}: {x.shape[1]} features are not a square image; save x "
                             "as (n, height, width)")
        shape = (side, side)
    else:
        raise AuditError(f"{flag}: x has shape {x.shape}; expected (n, height, width)")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or (len(y) and y.min() < 0):
        raise AuditError(f"{flag}: y must be non-negative integer class labels, one per image")
    return ImageData(x.reshape(len(x), -1).astype(np.float32), y.astype(np.int32), shape)


def export_reference(
    name: str,
    out_dir: Path,
    *,
    input_shape: tuple[int, ...],
    classes: int,
    hidden: tuple[int, ...] | None = None,
    filters: tuple[int, ...] | None = None,
) -> Path:
    """``fedge export <name>`` into ``out_dir`` (TensorFlow: the audit extra).
    Returns the export directory."""
    require("tensorflow", f"exporting the reference {name} (or pass --model-dir)")
    from model_export import ExportError  # noqa: PLC0415
    from model_export import export_reference as export  # noqa: PLC0415

    options: dict[str, object] = {}
    if hidden is not None:
        options["hidden"] = hidden
    if filters is not None:
        options["filters"] = filters
    try:
        export(name, out_dir, input_shape=input_shape, classes=classes, verify=False, **options)
    except ExportError as exc:
        raise AuditError(f"cannot export the reference {name}: {exc}") from exc
    return out_dir


def open_model(model_dir: Path, runtime: str | None = None) -> TrainableModel:
    """The exported model in a TFLite runtime (what devices train)."""
    from fedge.manifest import load_model_dir  # noqa: PLC0415
    from fedge.runtime import TrainableModel  # noqa: PLC0415

    manifest, path = load_model_dir(model_dir)
    return TrainableModel(path, manifest, runtime=runtime)


def check_fits(manifest: Manifest, data: ImageData) -> None:
    """The data's features and labels must match the model's input and head."""
    size = int(np.prod(manifest.input.shape))
    if size != data.x.shape[1]:
        raise AuditError(
            f"the model {manifest.name!r} takes inputs of shape {tuple(manifest.input.shape)} "
            f"({size} values); the data has {data.x.shape[1]} per example"
        )
    classes = manifest.label.num_classes
    if classes is not None and data.classes > classes:
        raise AuditError(
            f"the data has labels up to {data.classes - 1}; the model has {classes} classes"
        )
