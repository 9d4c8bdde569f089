"""``fedge export``: export a reference model or a user's Keras factory.

TensorFlow is imported only when the command runs, never when the parser is built.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from model_export.errors import InvalidOptionError, UnsupportedModelError
from model_export.optimizers import OPTIMIZERS
from model_export.options import LOSS_ALIASES, LOSSES
from model_export.reference import REFERENCE_MODELS
from model_export.targets import TARGETS

REFERENCE_DEFAULTS = {"mlp": (64,), "cnn": (28, 28, 1), "cnn1d": (128, 3), "transfer": (8, 8, 1)}


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise InvalidOptionError(
            f"{flag}: expected comma-separated positive integers, got {text!r}"
        ) from exc
    if not values or any(v < 1 for v in values):
        raise InvalidOptionError(
            f"{flag}: expected comma-separated positive integers, got {text!r}"
        )
    return values


def load_factory(spec: str) -> Any:
    """``path/to/file.py:function`` → the Keras model the function returns."""
    path_text, _, attr = spec.rpartition(":")
    if not path_text or not attr:
        raise InvalidOptionError(
            f"{spec!r} is neither a reference model ({', '.join(REFERENCE_MODELS)}) nor "
            "path/to/file.py:factory"
        )
    path = Path(path_text)
    if not path.is_file() or path.suffix != ".py":
        raise InvalidOptionError(f"{spec!r}: {path} is not a Python file")
    module_spec = importlib.util.spec_from_file_location(f"fedge_user_model_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidOptionError(f"{spec!r}: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: report its error, not a traceback
        raise InvalidOptionError(
            f"{spec!r}: importing {path} failed: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidOptionError(f"{spec!r}: {path} has no function {attr!r}")
    try:
        model = factory()
    except Exception as exc:
        raise InvalidOptionError(f"{spec!r}: {attr}() raised {type(exc).__name__}: {exc}") from exc
    if not hasattr(model, "layers") or not hasattr(model, "inputs"):
        raise UnsupportedModelError(
            f"{spec!r}: {attr}() returned {type(model).__name__}, expected a Keras model"
        )
    return model


def _run(args: argparse.Namespace) -> int:
    from model_export import export_keras, export_reference

    common: dict[str, Any] = {
        "loss": args.loss,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "fedprox": args.fedprox,
        "verify": not args.no_verify,
        "verify_pythons": tuple(args.verify_python),
        "target": args.target,
    }
    if args.from_logits is not None:
        common["from_logits"] = args.from_logits == "true"
    if args.name in REFERENCE_MODELS:
        shape = (_ints(args.input_shape, "--input-shape") if args.input_shape
                 else REFERENCE_DEFAULTS[args.name])
        model_options: dict[str, Any] = {"seed": args.seed}
        if args.hidden:
            model_options["hidden"] = _ints(args.hidden, "--hidden")
        if args.filters:
            model_options["filters"] = _ints(args.filters, "--filters")
        if args.dropout is not None:
            model_options["dropout"] = args.dropout
        report = export_reference(args.name, args.out, input_shape=shape,
                                  classes=args.classes, **model_options, **common)
    else:
        for flag in ("input_shape", "hidden", "filters", "dropout"):
            if getattr(args, flag) is not None:
                raise InvalidOptionError(
                    f"--{flag.replace('_', '-')} applies to reference models only; a factory "
                    "builds its own model"
                )
        report = export_keras(load_factory(args.name), args.out, **common)
    print(report.summary(), file=sys.stdout)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a builtin-only trainable TFLite model (+ manifest.json)",
        description=(
            "Export a Keras model to model.tflite + manifest.json with train/evaluate/infer/"
            "get_weights/set_weights signatures made of TFLite builtin ops only, verified "
            "against TensorFlow autodiff in every available runtime."
        ),
    )
    parser.add_argument("name", metavar="NAME",
                        help=f"{'|'.join(REFERENCE_MODELS)} or path/to/file.py:factory")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--input-shape", help="e.g. 64 or 28,28,1 (reference models)")
    parser.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    parser.add_argument("--hidden", help="dense layer sizes, e.g. 64,64")
    parser.add_argument("--filters", help="conv filters per layer, e.g. 8,16")
    parser.add_argument("--dropout", type=float, help="dropout rate before the head")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--loss", default="sparse_categorical_crossentropy",
                        help=f"{', '.join(LOSSES)} (or {', '.join(LOSS_ALIASES)})")
    parser.add_argument("--from-logits", choices=("true", "false"),
                        help="whether the model outputs logits (default: unless it ends in "
                             "softmax/sigmoid)")
    parser.add_argument("--optimizer", default="sgd", help=", ".join(OPTIMIZERS))
    parser.add_argument("--learning-rate", type=float, help="default learning rate in the manifest")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fedprox", action="store_true", help="add the FedProx μ input to train")
    parser.add_argument("--target", default="any", choices=TARGETS,
                        help="refuse graphs the target runtime cannot run")
    parser.add_argument("--verify-python", action="append", default=[], type=Path,
                        metavar="PATH", help="also verify with this interpreter (repeatable)")
    parser.add_argument("--no-verify", action="store_true", help="skip verification")
    parser.set_defaults(func=_run)
