"""The manifest: what ``fedge export`` writes beside ``model.tflite``.

The manifest is the contract between the exporter, the aggregation service
and the device agent: the ordered tensor table defines the update layout, the
input and label specs define the data a device may train on, and ``sha256``
pins the model file. It is parsed once into frozen objects and validated on
load, with errors that name the offending key. docs/manifest.md documents the
format for other implementations.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError

FORMAT_VERSION = 1
MODEL_FILE = "model.tflite"
MANIFEST_FILE = "manifest.json"
DTYPES = frozenset({"float32", "float16", "int32", "int64", "int8", "uint8", "bool"})
SIGNATURES = ("train", "evaluate", "infer", "get_weights", "set_weights")


class ManifestError(FedgeError, ValueError):
    """manifest.json is malformed, or does not match its model file."""


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise ManifestError(f"{where}: expected a list of non-negative integers, got {value!r}")
    return tuple(value)


def _dtype(value: Any, where: str) -> str:
    if value not in DTYPES:
        raise ManifestError(f"{where}: unknown dtype {value!r}; expected one of {sorted(DTYPES)}")
    return str(value)


@dataclass(frozen=True)
class TensorSpec:
    """One model variable, in the order the update layout uses."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    trainable: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected an object")
        name = _require(data, "name", str, where)
        if not name or not all(c.isalnum() or c == "_" for c in name):
            raise ManifestError(f"{where}.name: {name!r} must be letters, digits and '_' only")
        return cls(
            name=name,
            shape=_shape(_require(data, "shape", list, where), f"{where}.shape"),
            dtype=_dtype(_require(data, "dtype", str, where), f"{where}.dtype"),
            trainable=bool(_require(data, "trainable", bool, where)),
        )


@dataclass(frozen=True)
class InputSpec:
    """Model input: ``shape`` excludes the (dynamic) batch dimension."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, data: Any, where: str) -> InputSpec:
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected an object")
        return cls(
            shape=_shape(_require(data, "shape", list, where), f"{where}.shape"),
            dtype=_dtype(_require(data, "dtype", str, where), f"{where}.dtype"),
        )


@dataclass(frozen=True)
class LabelSpec:
    """Training target; ``num_classes`` is None for regression."""

    shape: tuple[int, ...]
    dtype: str
    num_classes: int | None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> LabelSpec:
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: expected an object")
        num_classes = data.get("num_classes")
        if num_classes is not None and (
            not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
        ):
            raise ManifestError(f"{where}.num_classes: expected a positive integer or null")
        return cls(
            shape=_shape(_require(data, "shape", list, where), f"{where}.shape"),
            dtype=_dtype(_require(data, "dtype", str, where), f"{where}.dtype"),
            num_classes=num_classes,
        )


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.json."""

    name: str
    tensors: tuple[TensorSpec, ...]
    input: InputSpec
    label: LabelSpec
    loss: str
    optimizer: Mapping[str, Any]
    hyperparameters: Mapping[str, Any]
    sha256: str
    signatures: tuple[str, ...] = SIGNATURES
    fedprox: bool = False
    exporter: Mapping[str, Any] = field(default_factory=dict)
    verified_runtimes: tuple[Mapping[str, Any], ...] = ()
    format_version: int = FORMAT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trainable(self) -> tuple[TensorSpec, ...]:
        """The tensors a device update carries, in order."""
        return tuple(t for t in self.tensors if t.trainable)

    @property
    def num_parameters(self) -> int:
        return sum(t.size for t in self.tensors)

    @property
    def num_trainable_parameters(self) -> int:
        return sum(t.size for t in self.trainable)

    def tensor(self, name: str) -> TensorSpec:
        for spec in self.tensors:
            if spec.name == name:
                return spec
        raise ManifestError(f"model {self.name!r} has no tensor {name!r}")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        where = "manifest"
        if not isinstance(data, Mapping):
            raise ManifestError("manifest: expected a JSON object at the top level")
        version = _require(data, "format_version", int, where)
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"manifest.format_version: {version} is not supported; this fedge reads "
                f"version {FORMAT_VERSION}"
            )
        raw_tensors = _require(data, "tensors", list, where)
        if not raw_tensors:
            raise ManifestError("manifest.tensors: a model needs at least one tensor")
        tensors = tuple(
            TensorSpec.from_dict(t, f"manifest.tensors[{i}]") for i, t in enumerate(raw_tensors)
        )
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ManifestError("manifest.tensors: tensor names must be unique")
        signatures = _require(data, "signatures", list, where)
        missing = [s for s in SIGNATURES if s not in signatures]
        if missing:
            raise ManifestError(f"manifest.signatures: missing {missing}")
        sha = _require(data, "sha256", str, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ManifestError("manifest.sha256: expected 64 lowercase hex digits")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            name=_require(data, "name", str, where),
            tensors=tensors,
            input=InputSpec.from_dict(_require(data, "input", Mapping, where), "manifest.input"),
            label=LabelSpec.from_dict(_require(data, "label", Mapping, where), "manifest.label"),
            loss=_require(data, "loss", str, where),
            optimizer=dict(_require(data, "optimizer", Mapping, where)),
            hyperparameters=dict(_require(data, "hyperparameters", Mapping, where)),
            sha256=sha,
            signatures=tuple(str(s) for s in signatures),
            fedprox=bool(data.get("fedprox", False)),
            exporter=dict(data.get("exporter", {})),
            verified_runtimes=tuple(dict(r) for r in data.get("verified_runtimes", [])),
            format_version=version,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "trainable": t.trainable}
                for t in self.tensors
            ],
            "input": {"shape": list(self.input.shape), "dtype": self.input.dtype},
            "label": asdict(self.label) | {"shape": list(self.label.shape)},
            "signatures": list(self.signatures),
            "loss": self.loss,
            "optimizer": dict(self.optimizer),
            "hyperparameters": dict(self.hyperparameters),
            "fedprox": self.fedprox,
            "sha256": self.sha256,
            "exporter": dict(self.exporter),
            "verified_runtimes": [dict(r) for r in self.verified_runtimes],
        }
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"manifest: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    def check_model_bytes(self, model: bytes) -> None:
        """Raise ManifestError unless ``model`` is the file this manifest describes."""
        digest = hashlib.sha256(model).hexdigest()
        if digest != self.sha256:
            raise ManifestError(
                f"model file sha256 {digest} does not match the manifest's {self.sha256}"
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_dir(directory: Path | str) -> tuple[Manifest, Path]:
    """Load ``manifest.json`` from an export directory and verify its model file."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    model_path = directory / MODEL_FILE
    for path in (manifest_path, model_path):
        if not path.is_file():
            raise ManifestError(
                f"{directory}: no {path.name} (is this a `fedge export` directory?)"
            )
    manifest = Manifest.from_json(manifest_path.read_bytes())
    digest = sha256_file(model_path)
    if digest != manifest.sha256:
        raise ManifestError(
            f"{model_path}: sha256 {digest} does not match manifest.json's {manifest.sha256}"
        )
    return manifest, model_path
