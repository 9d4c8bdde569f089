"""Local training data: .npz files, CSV files, or a user's callable.

Data is read where training runs (the worker process) and never reaches the
transport: only the update derived from it is sent. Every source checks its
arrays against the manifest's input and label specs, with errors that say
which file and what was expected.
"""

from __future__ import annotations

import csv
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_client.config import DataConfig
from edge_client.errors import DataError
from fedge.manifest import Manifest

Batch = tuple[np.ndarray, np.ndarray]


class DataSource(Protocol):
    def batches(
        self, batch_size: int, epochs: int, max_examples: int | None, seed: int
    ) -> Iterator[Batch]:
        """Batches for the planned epochs, at most ``max_examples`` examples in all."""
        ...


def _squeezed(shape: tuple[int, ...]) -> list[int]:
    return [d for d in shape if d != 1]


def _label_hint(manifest: Manifest) -> str:
    label = manifest.label
    if label.num_classes is not None:
        return (f"one integer class id in [0, {label.num_classes}) per example: y of shape (n,) "
                "or (n, 1)")
    if manifest.loss == "binary_crossentropy" and label.shape in ((), (1,)):
        return "one 0/1 target per example (a binary head): y of shape (n,) or (n, 1)"
    if manifest.loss == "binary_crossentropy":
        return f"a 0/1 target per output (a multi-label head): y of shape (n, {label.shape[-1]})"
    if not label.shape:
        return "y of shape (n,)"
    return f"y of shape (n, {', '.join(map(str, label.shape))})"


def conform(x: np.ndarray, y: np.ndarray, manifest: Manifest, where: str) -> Batch:
    """``(x, y)`` checked against the manifest and shaped as the model takes
    them, with errors that name ``where`` and say what was expected.

    Shapes are accepted as Keras accepts them: examples whose size matches the
    model's input are reshaped to it (a flat (n, 40) for an input of (40, 1));
    labels that differ from the model's label shape only by axes of size 1 are
    reshaped ((n,) or (n, 1) for a binary head; (n, k) for a multi-label head).
    """
    shape = manifest.input.shape
    if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
        raise DataError(f"{where}: x has {len(x) if x.ndim else 0} rows but y has "
                        f"{len(y) if y.ndim else 0}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where}: x must be numeric, got dtype {x.dtype}")
    if tuple(x.shape[1:]) != shape:
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise DataError(
                f"{where}: examples have shape {tuple(x.shape[1:])} "
                f"({int(np.prod(x.shape[1:]))} values), the model expects {shape} "
                f"({int(np.prod(shape))} values)"
            )
        x = x.reshape((len(x), *shape))
    label = manifest.label
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise DataError(f"{where}: y must be numeric, got dtype {y.dtype}; expected "
                        f"{_label_hint(manifest)}")
    got = tuple(y.shape[1:])
    if got != label.shape:
        if _squeezed(got) != _squeezed(label.shape):
            onehot = label.num_classes is not None and got == (label.num_classes,)
            raise DataError(
                f"{where}: labels have shape {got} per example, the model expects "
                f"{label.shape}: {_label_hint(manifest)}"
                + ("; these look one-hot: store y.argmax(axis=1)" if onehot else "")
            )
        y = y.reshape((len(y), *label.shape))
    if not np.all(np.isfinite(y)):
        raise DataError(f"{where}: y contains NaN or infinity")
    if label.num_classes is not None:
        if np.any(y != np.round(y)):
            raise DataError(f"{where}: labels must be integer class ids; expected "
                            f"{_label_hint(manifest)}")
        if len(y) and (y.min() < 0 or y.max() >= label.num_classes):
            raise DataError(
                f"{where}: labels must be in [0, {label.num_classes}), found "
                f"{int(y.min())}..{int(y.max())}"
            )
    elif manifest.loss == "binary_crossentropy" and len(y) and (y.min() < 0 or y.max() > 1):
        raise DataError(f"{where}: binary cross-entropy targets must be in [0, 1], found "
                        f"{float(y.min()):g}..{float(y.max()):g}")
    x = x.astype(manifest.input.dtype, copy=False)
    y = y.astype(label.dtype, copy=False)
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where}: x contains NaN or infinity")
    return x, y


class ArrayData:
    """In-memory examples, shuffled per epoch with a seeded generator."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = x
        self.y = y

    @property
    def nbytes(self) -> int:
        return int(self.x.nbytes + self.y.nbytes)

    def __len__(self) -> int:
        return len(self.x)

    def batches(
        self, batch_size: int, epochs: int, max_examples: int | None, seed: int
    ) -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        left = max_examples if max_examples is not None else None
        for _ in range(epochs):
            order = rng.permutation(len(self.x))
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                if left is not None:
                    if left <= 0:
                        return
                    idx = idx[:left]
                    left -= len(idx)
                yield self.x[idx], self.y[idx]


def _files(path: Path, suffix: str) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob(f"*{suffix}"))
        if not files:
            raise DataError(f"{path}: no {suffix} files in this directory")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{path}: no such file or directory")


def load_npz(path: Path, manifest: Manifest) -> ArrayData:
    xs, ys = [], []
    for file in _files(path, ".npz"):
        try:
            with np.load(file, allow_pickle=False) as npz:
                if "x" not in npz.files or "y" not in npz.files:
                    raise DataError(
                        f"{file}: expected arrays 'x' (features) and 'y' (labels), found "
                        f"{npz.files} (save with np.savez(path, x=..., y=...))"
                    )
                x_raw, y_raw = npz["x"], npz["y"]
        except DataError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            # Only reading fails here: a .npz that opens but does not fit the
            # model is reported as such by conform below, never as unreadable.
            raise DataError(f"{file}: not a readable .npz ({exc})") from exc
        x, y = conform(x_raw, y_raw, manifest, str(file))
        xs.append(x)
        ys.append(y)
    return ArrayData(np.concatenate(xs), np.concatenate(ys))


def load_csv(path: Path, label_column: str, manifest: Manifest) -> ArrayData:
    xs, ys = [], []
    for file in _files(path, ".csv"):
        try:
            with file.open(newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                header = next(reader, None)
                if not header:
                    raise DataError(f"{file}: empty file (expected a header row)")
                header = [h.strip() for h in header]
                if label_column not in header:
                    raise DataError(
                        f"{file}: no label column {label_column!r} (columns: {header[:10]}…)"
                    )
                label_at = header.index(label_column)
                rows = []
                for line, row in enumerate(reader, start=2):
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise DataError(
                            f"{file}:{line}: {len(row)} fields, the header has {len(header)}"
                        )
                    try:
                        rows.append([float(v) for v in row])
                    except ValueError as exc:
                        raise DataError(f"{file}:{line}: non-numeric value ({exc})") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{file}: cannot read ({exc})") from exc
        if not rows:
            raise DataError(f"{file}: no data rows")
        table = np.asarray(rows, dtype=np.float64)
        y = table[:, label_at]
        x = np.delete(table, label_at, axis=1)
        x, y = conform(x, y, manifest, str(file))
        xs.append(x)
        ys.append(y)
    return ArrayData(np.concatenate(xs), np.concatenate(ys))


class CallableData:
    """``module:function`` returning an iterable of ``(x, y)`` batches (one epoch per
    call). If the function takes ``batch_size``, the plan's value is passed."""

    def __init__(self, func: Callable[..., Iterable[Any]], name: str, manifest: Manifest) -> None:
        self.func = func
        self.name = name
        self.manifest = manifest
        import inspect  # noqa: PLC0415  (only callable sources need it; keeps the worker small)

        try:
            self._takes_batch = "batch_size" in inspect.signature(func).parameters
        except (TypeError, ValueError):
            self._takes_batch = False

    def batches(
        self, batch_size: int, epochs: int, max_examples: int | None, seed: int
    ) -> Iterator[Batch]:
        left = max_examples
        for epoch in range(epochs):
            try:
                produced = self.func(batch_size=batch_size) if self._takes_batch else self.func()
                iterator = iter(produced)
            except Exception as exc:
                raise DataError(f"{self.name}: raised {type(exc).__name__}: {exc}") from exc
            for i, item in enumerate(iterator):
                where = f"{self.name} epoch {epoch} batch {i}"
                if not isinstance(item, tuple) or len(item) != 2:
                    raise DataError(f"{where}: expected an (x, y) tuple")
                x, y = conform(np.asarray(item[0]), np.asarray(item[1]), self.manifest, where)
                if left is not None:
                    if left <= 0:
                        return
                    x, y = x[:left], y[:left]
                    left -= len(x)
                yield x, y


def load_callable(spec: str, python_path: tuple[str, ...], manifest: Manifest) -> CallableData:
    module_name, _, func_name = spec.partition(":")
    for entry in python_path:
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DataError(f"data.callable: cannot import {module_name!r} ({exc})") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise DataError(f"data.callable: {module_name!r} has no function {func_name!r}")
    return CallableData(func, spec, manifest)


def open_source(config: DataConfig, manifest: Manifest) -> ArrayData | CallableData:
    if config.kind == "npz":
        return load_npz(Path(str(config.path)), manifest)
    if config.kind == "csv":
        return load_csv(Path(str(config.path)), str(config.label_column), manifest)
    return load_callable(str(config.callable), config.python_path, manifest)
