"""``fedge export``: export a reference model, a saved Keras model or a user's factory.

TensorFlow is imported only when the command runs, never when the parser is built;
its start-up noise on stderr is silenced unless ``--verbose`` (model_export.quiet).
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from model_export.errors import InvalidOptionError
from model_export.loading import default_name, load
from model_export.optimizers import OPTIMIZERS
from model_export.options import LOSS_ALIASES, LOSSES
from model_export.quiet import quiet_stderr
from model_export.reference import CHAR_MODELS, REFERENCE_DEFAULTS, REFERENCE_MODELS
from model_export.targets import TARGETS


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


def _classes(args: argparse.Namespace) -> int:
    """--classes, or for the character models the vocabulary (--vocabulary)."""
    if args.name in CHAR_MODELS:
        if (args.classes is not None and args.vocabulary is not None
                and args.classes != args.vocabulary):
            raise InvalidOptionError(
                f"--classes {args.classes} and --vocabulary {args.vocabulary} disagree: "
                f"{args.name} predicts the next character, so give one of them"
            )
        return int(args.vocabulary or args.classes or 80)
    if args.vocabulary is not None:
        raise InvalidOptionError(
            f"--vocabulary applies to {', '.join(CHAR_MODELS)} only; use --classes"
        )
    return int(args.classes or 10)


def _export(args: argparse.Namespace) -> Any:
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
        if args.model_name:
            common["name"] = args.model_name
        return export_reference(args.name, args.out, input_shape=shape,
                                classes=_classes(args), **model_options, **common)
    for flag in ("input_shape", "hidden", "filters", "dropout", "classes", "vocabulary"):
        if getattr(args, flag) is not None:
            raise InvalidOptionError(
                f"--{flag.replace('_', '-')} applies to reference models only; your model "
                "defines its own"
            )
    model = load(args.name)
    # The manifest's name: --name, else the model's own unless Keras made it up
    # ("sequential", "functional_3"), else the file's or the factory's name.
    from model_export.exporter import KERAS_DEFAULT_NAME

    name = args.model_name
    if name is None and KERAS_DEFAULT_NAME.fullmatch(str(model.name)):
        name = default_name(args.name)
    return export_keras(model, args.out, name=name, **common)


def _run(args: argparse.Namespace) -> int:
    verbose = bool(args.verbose or args.export_verbose)
    with quiet_stderr(enabled=not verbose):
        report = _export(args)
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
                        help=f"{'|'.join(REFERENCE_MODELS)}, path/to/model.keras, a SavedModel "
                             "directory or path/to/file.py:factory")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--input-shape", help="e.g. 64 or 28,28,1 (reference models)")
    parser.add_argument("--classes", type=int,
                        help="number of classes (reference models; default 10)")
    parser.add_argument("--vocabulary", type=int,
                        help="character vocabulary size (charlstm, chargru, chartransformer; "
                             "default 80)")
    parser.add_argument("--hidden", help="dense layer sizes, e.g. 64,64")
    parser.add_argument("--filters", help="conv filters per layer, e.g. 8,16")
    parser.add_argument("--dropout", type=float, help="dropout rate before the head")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--loss",
                        help=f"{', '.join(LOSSES)} (or {', '.join(LOSS_ALIASES)}); default: the "
                             "model's compile() loss, else bce for one sigmoid unit, else scce")
    parser.add_argument("--from-logits", choices=("true", "false"),
                        help="whether the model outputs logits (default: unless it ends in "
                             "softmax/sigmoid)")
    parser.add_argument("--optimizer",
                        help=f"{', '.join(OPTIMIZERS)}; default: the model's compile() "
                             "optimizer, else sgd")
    parser.add_argument("--learning-rate", type=float,
                        help="default learning rate in the manifest (default: the compiled "
                             "optimizer's, else per optimizer)")
    parser.add_argument("--name", dest="model_name",
                        help="the model's name in the manifest (default: the model's own)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fedprox", action="store_true", help="add the FedProx μ input to train")
    parser.add_argument("--target", default="any", choices=TARGETS,
                        help="refuse graphs the target runtime cannot run")
    parser.add_argument("--verify-python", action="append", default=[], type=Path,
                        metavar="PATH", help="also verify with this interpreter (repeatable)")
    parser.add_argument("--no-verify", action="store_true", help="skip verification")
    parser.add_argument("--verbose", dest="export_verbose", action="store_true",
                        help="let TensorFlow's and the converter's messages through on stderr")
    parser.set_defaults(func=_run)
