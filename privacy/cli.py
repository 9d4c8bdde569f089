"""``fedge audit``: empirical privacy audits.

    fedge audit membership EXPORT_DIR --members train.npz --non-members heldout.npz \\
        [--weights weights.bin|weights.npz] [--epsilon E --delta D] [--json]
    fedge audit inversion [--model mlp|cnn | --model-dir DIR] [--data digits|images.npz] \\
        [--batch-sizes 1,8] [--epochs 1,5] [--protections dense,topk:0.1,ldp:0.01,secsum:10] \\
        [--attacks analytic,gradient] [--trials N] [--png out.png] [--json]
    fedge audit epsilon [--model-dir DIR] [--noise 0.5,1,2] [--canaries K] [--rounds R] [--json]
    fedge audit lira [--hidden H | --model-dir DIR] [--train-size N] [--models M] \\
        [--training central|fedavg --noise Z] [--json]

``membership`` is the loss-threshold attack on a trained version (members
and non-members given as ``.npz`` with ``x`` and ``y``; ``--weights`` is the
lossless frame the service serves at ``GET /v1/models/{m}/versions/{v}/weights``
or an ``.npz`` of tensors). ``inversion`` reconstructs devices' examples from
their updates (:mod:`privacy.audit_inversion`), ``epsilon`` estimates ε from
one DP-FedAvg run with canary clients (:mod:`privacy.audit_canary`), and
``lira`` runs the likelihood-ratio membership attack with shadow models
(:mod:`privacy.audit_lira`). The last three export the reference model with
TensorFlow unless given ``--model-dir`` (the ``audit`` extra).

Heavy modules (the TFLite runtime, quantization, TensorFlow) are imported
when a command runs, never when the parser is built: this module is
imported by every ``fedge`` invocation, on devices too.
"""

# ruff: noqa: PLC0415  (runtime imports are lazy on purpose)

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from privacy.errors import AuditError

T = TypeVar("T")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="empirical privacy audits: membership inference, gradient inversion, one-run ε",
        description="Empirical privacy audits of fedge models and updates.",
    )
    audits = parser.add_subparsers(dest="audit", metavar="AUDIT")
    parser.set_defaults(func=_missing_audit(parser))
    _membership_parser(audits)
    _inversion_parser(audits)
    _epsilon_parser(audits)
    _lira_parser(audits)


def _missing_audit(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        raise AuditError("name an audit: membership, inversion, epsilon or lira")

    return run


def _membership_parser(audits: Any) -> None:
    p = audits.add_parser(
        "membership",
        help="loss-threshold membership inference on a model version (AUC, advantage)",
        description="Membership-inference audit (loss threshold) of a model version.",
    )
    p.add_argument("model_dir", type=Path, help="a `fedge export` directory")
    p.add_argument("--members", type=Path, required=True,
                   help=".npz (x, y) of examples the model was trained on")
    p.add_argument("--non-members", type=Path, required=True,
                   help=".npz (x, y) of examples it never saw")
    p.add_argument("--weights", type=Path,
                   help="trained weights: a lossless weights frame or an .npz")
    p.add_argument("--epsilon", type=float,
                   help="the accountant's ε, to print the DP advantage bound")
    p.add_argument("--delta", type=float, default=1e-5, help="δ for --epsilon")
    p.add_argument("--runtime", help="TFLite runtime to use (default: the first installed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_membership)


def _inversion_parser(audits: Any) -> None:
    p = audits.add_parser(
        "inversion",
        help="reconstruct devices' training examples from their updates (PSNR, SSIM)",
        description="Gradient inversion of single devices' updates as the server sees them: "
        "dense, through the codec, with local DP, or summed by secure aggregation.",
    )
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="reference model to export (TensorFlow) (default: mlp)")
    p.add_argument("--model-dir", type=Path,
                   help="an existing `fedge export` directory instead of --model")
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn's 8×8) or an .npz of images x in [0, 1] and "
                   "labels y")
    p.add_argument("--batch-sizes", default="1,8",
                   help="examples per device, comma-separated (default: 1,8)")
    p.add_argument("--epochs", default="1,5",
                   help="local epochs (one full-batch step each), comma-separated (default: 1,5)")
    p.add_argument("--protections", default="dense,topk:0.1,topk:0.01",
                   help="comma-separated: dense, topk:DENSITY[:BITS], ldp:Z[:CLIP], secsum:N "
                   "(default: dense,topk:0.1,topk:0.01)")
    p.add_argument("--attacks", default="analytic,gradient",
                   help="analytic (numpy) and/or gradient (TensorFlow) (default: both)")
    p.add_argument("--trials", type=int, default=3, help="devices per setting (default: 3)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="the plan's learning rate (default: 0.05, the service's)")
    p.add_argument("--iterations", type=int, default=500,
                   help="gradient-matching optimisation steps (default: 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", type=Path, help="write example reconstructions to this PNG")
    p.add_argument("--runtime", help="TFLite runtime to use (default: the first installed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_inversion)


def _epsilon_parser(audits: Any) -> None:
    p = audits.add_parser(
        "epsilon",
        help="one-run empirical ε from canary clients, beside the accountant's ε",
        description="Insert canary clients into an emulated DP-FedAvg run of the real TFLite "
        "mlp on the digits and estimate ε from that run (Andrew et al. 2023).",
    )
    p.add_argument("--model-dir", type=Path,
                   help="a `fedge export` mlp for 64 inputs and 10 classes (default: export one)")
    p.add_argument("--noise", default="0.5,1,2",
                   help="noise multipliers, comma-separated (default: 0.5,1,2)")
    p.add_argument("--devices", type=int, default=1200,
                   help="real devices, one digit each (default: 1200)")
    p.add_argument("--canaries", type=int, default=1000, help="canary clients (default: 1000)")
    p.add_argument("--unseen", type=int, help="canaries never inserted (default: --canaries)")
    p.add_argument("--clients-per-round", type=float, default=100.0,
                   help="expected clients per round, canaries included (default: 100)")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1, help="local learning rate (default: 0.1)")
    p.add_argument("--clip", type=float, default=1.0, help="clip norm C (default: 1)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap resamples for the intervals (default: 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runtime", help="TFLite runtime to use (default: the first installed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_epsilon)


def _lira_parser(audits: Any) -> None:
    p = audits.add_parser(
        "lira",
        help="likelihood-ratio membership attack with shadow models (AUC, TPR at low FPR)",
        description="LiRA (Carlini et al. 2022) against the real TFLite mlp trained on "
        "digits, every model the target once with the others as shadows.",
    )
    p.add_argument("--hidden", type=int,
                   help="hidden width of the exported mlp (default: 64, the reference)")
    p.add_argument("--model-dir", type=Path,
                   help="a `fedge export` model for 64 inputs and 10 classes instead")
    p.add_argument("--train-size", type=int, default=200,
                   help="examples each model trains on; the pool is twice that (default: 200)")
    p.add_argument("--models", type=int, default=17,
                   help="models trained, the target and its shadows (default: 17)")
    p.add_argument("--training", choices=("central", "fedavg"), default="central",
                   help="central mini-batch SGD, or the DP-FedAvg emulation with one example "
                   "per device (default: central)")
    p.add_argument("--epochs", type=int, default=100, help="central: epochs (default: 100)")
    p.add_argument("--batch-size", type=int, default=32, help="central: batch size")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default: 0.1)")
    p.add_argument("--noise", type=float,
                   help="fedavg: noise multiplier (DP-FedAvg); without it, plain FedAvg")
    p.add_argument("--rounds", type=int, default=100, help="fedavg: rounds (default: 100)")
    p.add_argument("--clients-per-round", type=float, default=20.0,
                   help="fedavg: expected clients per round (default: 20)")
    p.add_argument("--local-steps", type=int, default=10, help="fedavg: local steps")
    p.add_argument("--clip", type=float, default=1.0, help="fedavg with --noise: clip norm")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runtime", help="TFLite runtime to use (default: the first installed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_lira)


# --------------------------------------------------------------------------- flag parsing


def _list(text: str, flag: str, convert: Callable[[str], T], check: Callable[[T], bool],
          what: str) -> tuple[T, ...]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise AuditError(f"{flag}: empty; give {what}, comma-separated")
    out = []
    for item in items:
        try:
            value = convert(item)
        except ValueError:
            raise AuditError(f"{flag}: {item!r} is not {what}") from None
        if not check(value):
            raise AuditError(f"{flag}: {item!r} is not {what}")
        out.append(value)
    return tuple(out)


def _positive_ints(text: str, flag: str, maximum: int) -> tuple[int, ...]:
    return _list(text, flag, int, lambda v: 1 <= v <= maximum,
                 f"a whole number from 1 to {maximum}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AuditError(message)


def _finite_positive(value: float, flag: str) -> None:
    _check(math.isfinite(value) and value > 0, f"{flag}: {value} must be a number > 0")


@contextmanager
def _model_dir(given: Path | None, name: str, *, input_shape: tuple[int, ...],
               hidden: tuple[int, ...] | None = None) -> Iterator[Path]:
    """The model to audit: ``given``, or the reference ``name`` exported
    into a temporary directory."""
    if given is not None:
        yield given
        return
    from privacy.audit_setup import export_reference

    with tempfile.TemporaryDirectory(prefix="fedge-audit-") as tmp:
        yield export_reference(name, Path(tmp) / name, input_shape=input_shape, classes=10,
                               hidden=hidden)


def _open(model_dir: Path, runtime: str | None) -> Any:
    from fedge.runtime import ModelRuntimeError, RuntimeUnavailable
    from privacy.audit_setup import open_model

    try:
        return open_model(model_dir, runtime)
    except (ModelRuntimeError, RuntimeUnavailable) as exc:
        raise AuditError(f"cannot load {model_dir}: {exc}") from exc


def _emit(report: dict[str, Any]) -> None:
    print(json.dumps(report, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    if abs(value) >= 1e4:
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


# --------------------------------------------------------------------------- membership


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


def run_membership(args: argparse.Namespace) -> int:
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
        _emit(report)
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


# --------------------------------------------------------------------------- inversion


def run_inversion(args: argparse.Namespace) -> int:
    from privacy.audit_inversion import ATTACKS, Setting, parse_protection, run_inversion
    from privacy.audit_setup import check_fits, digits, load_images, require

    batches = _positive_ints(args.batch_sizes, "--batch-sizes", 256)
    epochs = _positive_ints(args.epochs, "--epochs", 100)
    protections = [parse_protection(p) for p in _list(args.protections, "--protections", str,
                                                      bool, "a protection")]
    attacks = _list(args.attacks, "--attacks", str, lambda a: a in ATTACKS,
                    "an attack (analytic or gradient)")
    _check(args.trials >= 1, f"--trials: {args.trials} must be ≥ 1")
    _check(args.iterations >= 1, f"--iterations: {args.iterations} must be ≥ 1")
    _finite_positive(args.lr, "--lr")
    if args.model_dir is not None and args.model != "mlp":
        raise AuditError("--model and --model-dir: give one of them")
    if "gradient" in attacks:
        require("tensorflow", "the gradient-matching attack (or use --attacks analytic)")
    if args.png is not None:
        require("matplotlib", "--png")
        _check(args.png.parent.is_dir(), f"--png: directory {args.png.parent} does not exist")
    data = digits(0) if args.data == "digits" else load_images(Path(args.data), "--data")
    need = max(batches) * max((p.devices for p in protections), default=1)
    _check(need <= len(data.x), f"the largest setting needs {need} distinct examples; the data "
           f"has {len(data.x)}")
    input_shape = (data.x.shape[1],) if args.model == "mlp" else (*data.image_shape, 1)
    with _model_dir(args.model_dir, args.model, input_shape=input_shape) as model_dir:
        model = _open(model_dir, args.runtime)
        check_fits(model.manifest, data)
        init = model.get_weights()
        gradient = None
        if "gradient" in attacks:
            from privacy.audit_gradient import GradientConfig, make_attack

            gradient = make_attack(model, init, lr=args.lr, image_shape=data.image_shape,
                                   config=GradientConfig(iterations=args.iterations,
                                                         seed=args.seed))
        settings = [Setting(b, e, p) for b in batches for e in epochs for p in protections]
        result = run_inversion(model, init, data, settings, trials=args.trials, lr=args.lr,
                               seed=args.seed, attacks=attacks, gradient_attack=gradient,
                               progress=None if args.json else _progress)
    if args.png is not None:
        _inversion_figure(args.png, result, data.image_shape, model.manifest.name)
    if args.json:
        _emit({"model": model.manifest.name, "prior_psnr": result.prior_psnr,
               "prior_identified": result.prior_identified,
               "rows": [r.to_dict() for r in result.rows],
               "png": None if args.png is None else str(args.png)})
        return 0
    print(f"model {model.manifest.name}: gradient inversion, {args.trials} device(s) per "
          f"setting, lr {args.lr:g}")
    print(f"  guessing the data's mean image (no update seen): PSNR {result.prior_psnr:.1f} dB, "
          f"identified {result.prior_identified:.0%}")
    print(f"  {'batch':>5} {'epochs':>6}  {'protection':<26} {'attack':<9} {'PSNR':>6} "
          f"{'median':>6} {'SSIM':>5} {'identified':>10} {'bytes':>7}  ε (local DP)")
    for r in result.rows:
        print(f"  {r.batch_size:>5} {r.epochs:>6}  {r.protection:<26} {r.attack:<9} "
              f"{r.psnr_mean:>6.1f} {r.psnr_median:>6.1f} {r.ssim_mean:>5.2f} "
              f"{r.identified:>10.0%} {r.payload_bytes:>7.0f}  {_fmt(r.epsilon, 1)}")
    print("  PSNR in dB (capped at 60), identified: the original is the reconstruction's "
          "nearest neighbour among all examples")
    if args.png is not None:
        print(f"  examples: {args.png}")
    return 0


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _inversion_figure(path: Path, result: Any, shape: tuple[int, int], model: str) -> None:
    from privacy.audit_images import save_figure

    batch = min(b for b, _, _ in result.examples)  # its rows all show the same victims
    rows = [(f"b{b} e{e} {label}", orig, rec)
            for (b, e, label), (orig, rec) in result.examples.items() if b == batch]
    save_figure(path, rows[0][1], [(label, rec) for label, _, rec in rows], shape,
                f"{model}: devices' examples from their updates (batch {batch}; best attack "
                "per row)")


# --------------------------------------------------------------------------- epsilon


def run_epsilon(args: argparse.Namespace) -> int:
    from privacy.audit_canary import EpsilonAuditConfig, run_epsilon_audit
    from privacy.audit_setup import check_fits, digits

    noise = _list(args.noise, "--noise", float, lambda z: math.isfinite(z) and z > 0,
                  "a noise multiplier > 0")
    for flag, value in (("--devices", args.devices), ("--canaries", args.canaries),
                        ("--rounds", args.rounds), ("--local-steps", args.local_steps)):
        _check(value >= 1, f"{flag}: {value} must be ≥ 1")
    _check(args.canaries >= 2, f"--canaries: {args.canaries} must be ≥ 2")
    unseen = args.canaries if args.unseen is None else args.unseen
    _check(unseen >= 2, f"--unseen: {unseen} must be ≥ 2")
    _check(args.bootstrap >= 0, f"--bootstrap: {args.bootstrap} must be ≥ 0")
    for flag, value in (("--lr", args.lr), ("--clip", args.clip),
                        ("--clients-per-round", args.clients_per_round)):
        _finite_positive(value, flag)
    _check(0 < args.delta < 1, f"--delta: {args.delta} must be strictly between 0 and 1")
    data = digits(0)
    _check(args.devices <= len(data.x) - 100,
           f"--devices: {args.devices} leaves fewer than 100 of the {len(data.x)} digits to "
           "test on")
    population = args.devices + args.canaries
    _check(args.clients_per_round <= population,
           f"--clients-per-round: {args.clients_per_round:g} exceeds the population {population} "
           "(devices + canaries)")
    config = EpsilonAuditConfig(
        noise_multipliers=noise, devices=args.devices, canaries=args.canaries, unseen=unseen,
        clients_per_round=args.clients_per_round, rounds=args.rounds,
        local_steps=args.local_steps, local_lr=args.lr, clip_norm=args.clip, delta=args.delta,
        seed=args.seed, bootstrap=args.bootstrap,
    )
    with _model_dir(args.model_dir, "mlp", input_shape=(64,)) as model_dir:
        model = _open(model_dir, args.runtime)
        check_fits(model.manifest, data)
        rows = run_epsilon_audit(model, model.get_weights(), (data.x, data.y),
                                 (data.x[args.devices :], data.y[args.devices :]), config,
                                 progress=None if args.json else _progress)
    if args.json:
        _emit({"model": model.manifest.name, "rows": [r.to_dict() for r in rows]})
        return 0
    print(f"model {model.manifest.name}: one-run ε from {args.canaries} canary clients "
          f"({unseen} unseen), {args.devices} devices, {args.rounds} rounds, "
          f"{args.clients_per_round:g} clients per round, C = {args.clip:g}, δ = {args.delta:g}")
    print(f"  {'z':>5} {'q':>7} {'acc':>5} {'ε RDP':>7} {'ε PLD':>7}   "
          f"{'final model (95 %)':<24} {'every version (95 %)':<24} bound")
    for r in rows:
        lo, hi = r.final_model_interval
        slo, shi = r.every_version_interval
        verdict = ("ok" if r.within_bound else
                   "ABOVE (significant: a bug)" if r.significantly_above else
                   "above, within sampling error")
        print(f"  {r.noise_multiplier:>5g} {r.sampling_probability:>7.4f} "
              f"{r.test_accuracy:>5.3f} {_fmt(r.epsilon_rdp):>7} {_fmt(r.epsilon_pld):>7}   "
              f"{_fmt(r.final_model) + f' [{_fmt(lo)}, {_fmt(hi)}]':<24} "
              f"{_fmt(r.every_version) + f' [{_fmt(slo)}, {_fmt(shi)}]':<24} {verdict}")
    print("  final model: canaries' cosine with θ_T − θ_0 against N(0, 1/d); every version: "
          "their largest cosine with one round's step against unseen canaries")
    return 0


# --------------------------------------------------------------------------- lira


def run_lira(args: argparse.Namespace) -> int:
    from privacy.audit import dp_advantage_bound
    from privacy.audit_fedavg import FedAvgConfig
    from privacy.audit_lira import LiraConfig
    from privacy.audit_lira import run_lira as lira
    from privacy.audit_setup import check_fits, digits

    if args.model_dir is not None and args.hidden is not None:
        raise AuditError("--hidden and --model-dir: give one of them")
    _check(args.hidden is None or args.hidden >= 1, f"--hidden: {args.hidden} must be ≥ 1")
    for flag, value in (("--train-size", args.train_size), ("--epochs", args.epochs),
                        ("--batch-size", args.batch_size), ("--rounds", args.rounds),
                        ("--local-steps", args.local_steps)):
        _check(value >= 1, f"{flag}: {value} must be ≥ 1")
    _check(args.models >= 3, f"--models: {args.models} must be ≥ 3 (a target and two shadows)")
    _finite_positive(args.lr, "--lr")
    if args.training == "central" and args.noise is not None:
        raise AuditError("--noise: DP applies to --training fedavg (the DP-FedAvg emulation)")
    data = digits(0)
    pool = 2 * args.train_size
    held_out = 197  # the last digits: never in any pool
    _check(pool <= len(data.x) - held_out,
           f"--train-size: the pool of {pool} would overlap the {held_out} held-out digits; "
           f"use at most {(len(data.x) - held_out) // 2}")
    fedavg = None
    if args.training == "fedavg":
        _finite_positive(args.clients_per_round, "--clients-per-round")
        _check(args.clients_per_round <= args.train_size,
               f"--clients-per-round: {args.clients_per_round:g} exceeds the {args.train_size} "
               "devices")
        _finite_positive(args.clip, "--clip")
        if args.noise is not None:
            _check(math.isfinite(args.noise) and args.noise >= 0,
                   f"--noise: {args.noise} must be a number ≥ 0")
        fedavg = FedAvgConfig(rounds=args.rounds, clients_per_round=args.clients_per_round,
                              local_steps=args.local_steps, local_lr=args.lr,
                              clip_norm=args.clip, noise_multiplier=args.noise, delta=args.delta)
    config = LiraConfig(models=args.models, train_size=args.train_size, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, seed=args.seed, fedavg=fedavg)
    hidden = None if args.hidden is None else (args.hidden,)
    with _model_dir(args.model_dir, "mlp", input_shape=(64,), hidden=hidden) as model_dir:
        model = _open(model_dir, args.runtime)
        check_fits(model.manifest, data)
        shape = (-1, *model.manifest.input.shape)
        result = lira(model, model.get_weights(),
                      (data.x[:pool].reshape(shape), data.y[:pool]),
                      (data.x[-held_out:].reshape(shape), data.y[-held_out:]), config)
    report: dict[str, Any] = {"model": model.manifest.name,
                              "parameters": model.manifest.num_trainable_parameters,
                              "train_size": args.train_size, "training": args.training,
                              "noise_multiplier": args.noise, **result.to_dict()}
    if result.epsilon is not None:
        report["dp_tpr_bound_at_0_1pct_fpr"] = min(
            1.0, math.exp(min(result.epsilon, 700.0)) * 0.001 + args.delta)
        report["dp_advantage_bound"] = dp_advantage_bound(result.epsilon, args.delta)
    if args.json:
        _emit(report)
        return 0
    how = (f"central SGD, {args.epochs} epochs" if fedavg is None else
           f"FedAvg emulation, {args.rounds} rounds" + (
               "" if args.noise is None else f", DP z = {args.noise:g}, ε = "
               f"{_fmt(result.epsilon)}"))
    print(f"model {model.manifest.name} ({model.manifest.num_trainable_parameters:,} parameters),"
          f" {args.train_size} training examples, {how}; {result.models} models, each the "
          f"target once")
    print(f"  accuracy: train {result.train_accuracy:.3f}, test {result.test_accuracy:.3f}; "
          f"{result.scored:,} (model, example) pairs scored")
    print(f"  {'attack':<16} {'AUC':>6} {'TPR@0.1%FPR':>12} {'TPR@1%FPR':>10} {'advantage':>10}")
    for name, s in (("LiRA (online)", result.lira_online), ("LiRA (offline)", result.lira_offline),
                    ("loss threshold", result.loss_threshold)):
        print(f"  {name:<16} {s.auc:>6.3f} {s.tpr_at_0_1pct_fpr:>12.3f} {s.tpr_at_1pct_fpr:>10.3f}"
              f" {s.advantage:>10.3f}")
    if result.epsilon is not None:
        print(f"  (ε, δ) = ({_fmt(result.epsilon)}, {args.delta:g}) allows TPR ≤ "
              f"{report['dp_tpr_bound_at_0_1pct_fpr']:.3f} at 0.1 % FPR")
    return 0
