"""``fedge audit``: a membership-inference audit of a model version.

    fedge audit EXPORT_DIR --members train.npz --non-members heldout.npz \\
        [--weights weights.bin|weights.npz] [--epsilon E --delta D] [--json]

``EXPORT_DIR`` is a ``fedge export`` directory (``model.tflite`` +
``manifest.json``). ``--weights`` loads a trained version's weights: the
lossless frame the service serves at ``GET /v1/models/{m}/versions/{v}/weights``
or an ``.npz`` of tensor name → array; without it the exported initial
weights are audited. The data files are ``.npz`` with arrays ``x`` and ``y``
(the format of the service's eval-data upload). With ``--epsilon`` the report
adds the largest advantage (ε, δ)-DP allows, for comparison.

Heavy modules (the TFLite runtime, quantization) are imported when the
command runs, not when the parser is built.
"""

# ruff: noqa: PLC0415  (runtime imports are lazy on purpose)

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from privacy.errors import AuditError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="membership-inference audit of a model (attack AUC and advantage)",
        description="Membership-inference audit (loss threshold) of a model version.",
    )
    parser.add_argument("model_dir", type=Path, help="a `fedge export` directory")
    parser.add_argument("--members", type=Path, required=True,
                        help=".npz (x, y) of examples the model was trained on")
    parser.add_argument("--non-members", type=Path, required=True,
                        help=".npz (x, y) of examples it never saw")
    parser.add_argument("--weights", type=Path,
                        help="trained weights: a lossless weights frame or an .npz")
    parser.add_argument("--epsilon", type=float,
                        help="the accountant's ε, to print the DP advantage bound")
    parser.add_argument("--delta", type=float, default=1e-5, help="δ for --epsilon")
    parser.add_argument("--runtime", help="TFLite runtime to use (default: the first installed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _load_xy(path: Path, flag: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise AuditError(f"{flag}: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise AuditError(
                    f"{flag}: {path} has arrays {sorted(data.files)}; it needs 'x' and 'y'"
                )
            return np.asarray(data["x"]), np.asarray(data["y"])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise AuditError(f"{flag}: {path} is not a readable .npz file ({exc})") from exc


def _load_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise AuditError(f"--weights: {path} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                weights = {k: np.asarray(data[k]) for k in data.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise AuditError(f"--weights: {path} is not a readable .npz file ({exc})") from exc
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise AuditError(f"--weights: {path} lacks tensors {missing}")
        return weights
    from quantization import CodecError, decode_weights

    try:
        return dict(decode_weights(path.read_bytes(), expected=expected))
    except CodecError as exc:
        raise AuditError(f"--weights: {path} is not a weights frame for this model: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from fedge.manifest import load_model_dir
    from fedge.runtime import ModelRuntimeError, TrainableModel
    from privacy.audit import audit_model, dp_advantage_bound

    manifest, model_path = load_model_dir(args.model_dir)
    members = _load_xy(args.members, "--members")
    non_members = _load_xy(args.non_members, "--non-members")
    model = TrainableModel(model_path, manifest, runtime=args.runtime)
    if args.weights is not None:
        expected = {t.name: tuple(t.shape) for t in manifest.tensors}
        try:
            model.set_weights(_load_weights(args.weights, expected))
        except ModelRuntimeError as exc:
            raise AuditError(f"--weights: {exc}") from exc
    try:
        result = audit_model(model, members, non_members)
    except ModelRuntimeError as exc:
        raise AuditError(f"the model could not evaluate the data: {exc}") from exc
    report: dict[str, Any] = {"model": manifest.name, **result.to_dict()}
    if args.epsilon is not None:
        report["epsilon"] = args.epsilon
        report["delta"] = args.delta
        report["dp_advantage_bound"] = dp_advantage_bound(args.epsilon, args.delta)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"model {manifest.name}: loss-threshold membership inference")
        print(f"  members {result.members}, non-members {result.non_members}")
        print(f"  mean loss: members {result.member_loss:.4f}, "
              f"non-members {result.non_member_loss:.4f}")
        print(f"  attack AUC {result.auc:.3f} (0.5 = chance), "
              f"advantage {result.advantage:.3f} at loss ≤ {result.threshold:.4g}")
        if args.epsilon is not None:
            print(f"  (ε = {args.epsilon:g}, δ = {args.delta:g}) allows an advantage of at most "
                  f"{report['dp_advantage_bound']:.3f}")
    return 0
