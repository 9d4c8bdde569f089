"""Keras model → verified export directory (model.tflite + manifest.json)."""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import fedge
from fedge.manifest import MANIFEST_FILE, MODEL_FILE, InputSpec, LabelSpec, Manifest, TensorSpec
from fedge.manifest import sha256_file as _sha256_file
from model_export.errors import (
    InvalidOptionError,
    UnsupportedModelError,
    VerificationError,
)
from model_export.options import ExportOptions
from model_export.report import ExportReport, RuntimeCheck
from model_export.training import TrainingSettings, resolve

log = logging.getLogger(__name__)


def _loss_for(settings: TrainingSettings, final_activation: str | None) -> Any:
    from model_export.losses import Loss

    # Keras (3.x) treats the input of *any* final softmax or sigmoid as logits
    # for either cross-entropy (its `_keras_logits`); fedge does the same, so
    # training matches model.fit and saturated probabilities cannot stall it.
    cross_entropy = settings.loss != "mean_squared_error"
    fused = cross_entropy and final_activation in ("softmax", "sigmoid")
    from_logits = settings.from_logits
    if from_logits is None:
        from_logits = final_activation not in ("softmax", "sigmoid")
    return Loss(settings.loss, from_logits=bool(from_logits), fused=fused)


def _keras_loss(loss: Any) -> Any:
    import keras

    if loss.name == "sparse_categorical_crossentropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=loss.from_logits)
    if loss.name == "binary_crossentropy":
        return keras.losses.BinaryCrossentropy(from_logits=loss.from_logits)
    return keras.losses.MeanSquaredError()


def _label(settings: TrainingSettings, output_shape: tuple[int, ...]) -> LabelSpec:
    if settings.loss == "sparse_categorical_crossentropy":
        if len(output_shape) != 1 or output_shape[0] < 2:
            source = settings.sources.get("loss", "default")
            raise UnsupportedModelError(
                f"sparse categorical cross-entropy (from {source}) needs an output of shape "
                f"[batch, classes] with classes ≥ 2, got {[None, *output_shape]}: pass "
                "--loss bce for binary labels or --loss mse for regression"
            )
        return LabelSpec(shape=(), dtype="int32", num_classes=output_shape[0])
    return LabelSpec(shape=output_shape, dtype="float32", num_classes=None)


def _check_out_dir(out_dir: Path) -> None:
    """An existing ``out_dir`` may only be empty or an earlier export (which is replaced)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidOptionError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.exists():
        entries = {p.name for p in out_dir.iterdir()}
        if entries and not entries <= {MODEL_FILE, MANIFEST_FILE}:
            raise InvalidOptionError(
                f"{out_dir} exists and is not an export directory (it holds "
                f"{', '.join(sorted(entries)[:5])}); choose another --out"
            )


def _finalize(tmp: Path, out_dir: Path) -> None:
    """Move the verified files into place; an earlier export there is replaced."""
    if out_dir.exists():
        _check_out_dir(out_dir)
        old = out_dir.with_name(f".{out_dir.name}.fedge-old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def export_model(model: Any, out_dir: Path | str, options: ExportOptions) -> ExportReport:
    import tensorflow as tf

    from model_export.convert import check_builtin_only, convert, op_codes, operator_counts
    from model_export.module import TrainingModule, TrainingSpec
    from model_export.targets import check_target
    from model_export.translate import translate
    from model_export.verify import (
        check_in_process,
        check_subprocess,
        reference_steps,
        sample_batch,
    )

    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if not hasattr(model, "layers") or not hasattr(model, "inputs"):
        raise UnsupportedModelError(f"expected a Keras model, got {type(model).__name__}")
    _check_out_dir(out_dir)
    _model_name(options, model)  # refuse a nameless model before the expensive part
    translated = translate(model)
    binary_head = translated.output_shape == (1,) and translated.final_activation == "sigmoid"
    settings = resolve(model, options, binary_head=binary_head)
    loss = _loss_for(settings, translated.final_activation)
    label = _label(settings, translated.output_shape)
    spec = TrainingSpec(
        graph=translated.graph, loss=loss, optimizer=settings.optimizer, fedprox=options.fedprox,
        input_shape=translated.input_shape, input_dtype=translated.input_dtype,
        label_shape=label.shape, label_dtype=label.dtype,
    )
    refs = translated.graph.weights()
    if not any(r.param.trainable for r in refs):
        raise UnsupportedModelError("the model has no trainable weights (every layer is frozen)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.fedge-tmp-", dir=out_dir.parent))
    try:
        module = TrainingModule(spec)
        content = convert(module, module.signatures(), scratch=tmp)
        timings["convert_s"] = time.perf_counter() - started
        codes = op_codes(content)
        operators = operator_counts(content)
        check_builtin_only(codes)
        check_target(content, options.target)
        (tmp / MODEL_FILE).write_bytes(content)

        name = _model_name(options, model)
        manifest = Manifest(
            name=name,
            tensors=tuple(
                TensorSpec(r.tensor_name, tuple(int(d) for d in r.param.value.shape),
                           "float32", r.param.trainable)
                for r in refs
            ),
            input=InputSpec(translated.input_shape, translated.input_dtype),
            label=label,
            loss=settings.loss,
            optimizer=settings.optimizer.to_manifest(),
            hyperparameters={
                "learning_rate": settings.learning_rate,
                "batch_size": options.batch_size,
                "epochs": options.epochs,
                **({"fedprox_mu": 0.01} if options.fedprox else {}),
            },
            sha256=_sha256_file(tmp / MODEL_FILE),
            fedprox=options.fedprox,
            exporter={
                "fedge": fedge.__version__,
                "tensorflow": tf.__version__,
                "ops": sorted({c.name for c in codes}),
                "op_versions": {c.name: c.version for c in codes},
                "target": options.target,
                "loss_on_logits": loss.on_logits,
            },
            extra={
                "training": {
                    "batchnorm": "frozen statistics (moving mean/variance are not updated)",
                    "dropout": "counter-hash mask, active in train only",
                    "set_weights_resets_optimizer": True,
                    "settings_from": dict(settings.sources),
                },
            },
        )
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())

        checks: list[RuntimeCheck] = []
        if options.verify:
            verify_started = time.perf_counter()
            vocabulary = next(
                (int(r.param.value.shape[0]) for r in refs if r.param.name == "embeddings"), None
            )
            classes = label.num_classes or (None if loss.name == "mean_squared_error" else 2)
            x, y = sample_batch(translated.input_shape, translated.input_dtype, label.shape,
                                label.dtype, num_classes=classes, vocabulary=vocabulary)
            lr = _verification_lr(settings)
            reference = reference_steps(
                model, translated.sources,
                trainable=[r.tensor_name for r in refs if r.param.trainable],
                dropouts=translated.dropouts, keras_loss=_keras_loss(loss),
                optimizer=settings.optimizer.keras(lr),
                x=x, y=y, lr=lr, mu=0.1 if options.fedprox else 0.0, fedprox=options.fedprox,
            )
            fixture = tmp / "fixture.npz"
            reference.save(fixture)
            checks += check_in_process(tmp, fixture)
            for python in options.verify_pythons:
                checks.append(check_subprocess(python, tmp, fixture))
            fixture.unlink()
            timings["verify_s"] = time.perf_counter() - verify_started
            failed = [c for c in checks if not c.passed]
            if failed:
                details = "; ".join(c.summary() for c in failed)
                hint = ""
                if any("crashed" in (c.error or "") for c in failed):
                    hint = (" — if this is tflite-runtime 2.14, see docs/model_export.md "
                            "(--target tflite-runtime-2.14)")
                raise VerificationError(f"verification failed: {details}{hint}")
            manifest = Manifest.from_dict(
                manifest.to_dict() | {"verified_runtimes": [c.to_manifest() for c in checks]}
            )
            (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        _finalize(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    timings["total_s"] = time.perf_counter() - started
    report = ExportReport(
        path=out_dir,
        manifest=manifest,
        num_parameters=manifest.num_parameters,
        num_trainable_parameters=manifest.num_trainable_parameters,
        file_size=(out_dir / MODEL_FILE).stat().st_size,
        ops=tuple(sorted({c.name for c in codes})),
        verification=tuple(checks),
        seconds=timings,
        training=settings.describe(),
        operators=operators,
    )
    log.info("exported %s: %d parameters, %d bytes", name, report.num_parameters,
             report.file_size)
    return report


KERAS_DEFAULT_NAME = re.compile(r"(sequential|functional|model)(_\d+)?")


def _model_name(options: ExportOptions, model: Any) -> str:
    """``--name``, else the model's own name — never a name Keras made up."""
    if options.name:
        return options.name
    name = str(getattr(model, "name", "") or "")
    if not name or KERAS_DEFAULT_NAME.fullmatch(name):
        raise InvalidOptionError(
            f"the model is called {name!r}, Keras's default name: pass --name "
            "(name=… in Python) or give the model a name (keras.Model(…, name=…))"
        )
    if not all(c.isalnum() or c in "_-." for c in name):
        raise InvalidOptionError(
            f"the model's name {name!r} is not usable as a model name (letters, digits, '_', "
            "'-', '.'): pass --name"
        )
    return name


def _verification_lr(settings: TrainingSettings) -> float:
    """A step large enough that float32 rounding of ``w + Δw`` stays far below the tolerance."""
    if settings.optimizer.name in ("adam", "rmsprop"):
        return max(settings.learning_rate, 0.01)
    return max(settings.learning_rate, 0.1)



__all__ = ["export_model"]
