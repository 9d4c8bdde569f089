"""Builtin-only trainable TFLite export for fedge.

A Keras model (Sequential or functional, of supported layers) is translated
into fedge layers with hand-written backward passes, so the exported
``train`` signature is forward → loss → backward → optimizer update made of
TFLite builtin ops only: it runs under ai-edge-litert and tflite-runtime
without the Flex delegate. Every export is verified against TensorFlow
autodiff of the original Keras model in each available runtime before
anything is written. See docs/model_export.md and docs/manifest.md.

TensorFlow is imported lazily: importing this package (for example on a
device, to run :mod:`model_export.runtime_check`) never loads it.

Exceptions::

    fedge.errors.FedgeError
    └── ExportError                      the model cannot be exported
        ├── InvalidOptionError (ValueError)  bad loss/optimizer/shape/size/path option
        ├── UnsupportedLayerError        a layer (or setting) without a builtin-only implementation
        ├── UnsupportedModelError        inputs/outputs/topology/dtype not exportable
        ├── ConversionError              the TFLite converter failed or emitted non-builtin ops
        ├── TargetUnsupportedError       the graph needs something the --target runtime lacks
        └── VerificationError            a runtime check failed; nothing was written
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_export.errors import (
    ConversionError,
    ExportError,
    InvalidOptionError,
    TargetUnsupportedError,
    UnsupportedLayerError,
    UnsupportedModelError,
    VerificationError,
)
from model_export.report import ExportReport, RuntimeCheck

__all__ = [
    "ConversionError",
    "ExportError",
    "ExportReport",
    "InvalidOptionError",
    "RuntimeCheck",
    "TargetUnsupportedError",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "VerificationError",
    "export_keras",
    "export_reference",
]


def export_keras(
    model: Any,
    out_dir: Path | str,
    *,
    loss: str | None = None,
    optimizer: Any = None,
    learning_rate: float | None = None,
    batch_size: int = 32,
    epochs: int = 1,
    fedprox: bool = False,
    verify: bool = True,
    verify_pythons: tuple[Path | str, ...] | list[Path | str] = (),
    from_logits: bool | None = None,
    target: str = "any",
    name: str | None = None,
) -> ExportReport:
    """Export a built Keras model to ``out_dir`` (``model.tflite`` + ``manifest.json``).

    ``loss``: sparse_categorical_crossentropy (labels int32 ``[batch]``),
    binary_crossentropy or mean_squared_error (labels float32 ``[batch, units]``).
    ``optimizer``: sgd, momentum, nesterov, adam, adamw, rmsprop, or a
    :class:`model_export.optimizers.OptimizerSpec`. ``learning_rate`` is the
    manifest's default (the device passes ``lr`` to every ``train`` call).
    Left as None, each comes from the model's ``compile()`` if it was compiled,
    else the defaults (binary cross-entropy for one sigmoid unit, sparse
    categorical cross-entropy otherwise; SGD). ``name`` defaults to the
    model's own name (a Keras default such as ``sequential`` is refused).
    ``fedprox`` adds the ``mu`` input to ``train``.
    ``verify_pythons`` are other interpreters (e.g. tflite-runtime 2.14 with
    NumPy 1.x) to verify under. ``target="tflite-runtime-2.14"`` refuses graphs
    known to crash that runtime.
    """
    from model_export.exporter import export_model
    from model_export.options import ExportOptions

    options = ExportOptions.parse(
        loss=loss, from_logits=from_logits, optimizer=optimizer, learning_rate=learning_rate,
        batch_size=batch_size, epochs=epochs, fedprox=fedprox, target=target, verify=verify,
        verify_pythons=verify_pythons, name=name,
    )
    return export_model(model, out_dir, options)


def export_reference(
    name: str,
    out_dir: Path | str,
    *,
    input_shape: tuple[int, ...],
    classes: int,
    **options: Any,
) -> ExportReport:
    """Export a reference model (mlp, cnn, cnn1d, transfer, charlstm, chargru,
    chartransformer); see :mod:`model_export.reference`.

    Model options: ``hidden`` (layer sizes), ``filters`` (conv widths),
    ``dropout``, ``seed``; every other option goes to :func:`export_keras`.
    """
    from model_export.reference import build_reference

    model_keys = ("hidden", "filters", "dropout", "seed")
    model_options = {k: options.pop(k) for k in model_keys if k in options}
    options.setdefault("name", name)
    model = build_reference(name, tuple(input_shape), classes, **model_options)
    return export_keras(model, out_dir, **options)
