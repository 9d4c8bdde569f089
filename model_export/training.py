"""The training settings an export uses: flags first, then the model's ``compile()``.

A compiled Keras model carries its optimizer (with its learning rate) and its
loss; fedge trains with those on the device unless ``--optimizer``,
``--learning-rate`` or ``--loss`` says otherwise. Without either, a model
whose output is one sigmoid unit gets binary cross-entropy and every other
model sparse categorical cross-entropy; the optimizer is plain SGD. Settings
fedge cannot reproduce on a device are refused with the flag that overrides
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from model_export.errors import InvalidOptionError
from model_export.optimizers import OPTIMIZERS, OptimizerSpec
from model_export.options import DEFAULT_LEARNING_RATE, LOSSES, ExportOptions

FLAG = "flag"
COMPILE = "model.compile"
DEFAULT = "default"

# Keras loss classes and functions → fedge loss names.
_KERAS_LOSSES = {
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
    "BinaryCrossentropy": "binary_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
    "MeanSquaredError": "mean_squared_error",
    "mean_squared_error": "mean_squared_error",
    "mse": "mean_squared_error",
}


@dataclass(frozen=True)
class TrainingSettings:
    """The resolved loss, optimizer and learning rate, and where each came from
    (``sources``: "flag", "model.compile" or "default")."""

    loss: str
    from_logits: bool | None
    optimizer: OptimizerSpec
    learning_rate: float
    sources: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        src = self.sources
        return (f"loss: {self.loss} ({src.get('loss', DEFAULT)}), optimizer: "
                f"{self.optimizer.label} ({src.get('optimizer', DEFAULT)}), learning rate "
                f"{self.learning_rate:g} ({src.get('learning_rate', DEFAULT)})")


def _refuse_loss(what: str) -> InvalidOptionError:
    return InvalidOptionError(
        f"model.compile(loss=…) uses {what}, which fedge cannot train on a device; "
        f"supported: {', '.join(LOSSES)}; pass --loss to choose one"
    )


def compiled_loss(model: Any) -> tuple[str, bool | None] | None:
    """(fedge loss name, from_logits) of a compiled model, None if not compiled."""
    loss = getattr(model, "loss", None)
    if loss is None or not getattr(model, "compiled", False):
        return None
    if isinstance(loss, list | tuple | dict):
        raise _refuse_loss(f"several losses ({type(loss).__name__})")
    if isinstance(loss, str):
        name = _KERAS_LOSSES.get(loss, loss)
        if name not in LOSSES:
            raise _refuse_loss(repr(loss))
        return name, None
    key = type(loss).__name__
    if key == "LossFunctionWrapper":  # a Keras loss function wrapped as a Loss
        key = getattr(loss.fn, "__name__", key)
    elif key not in _KERAS_LOSSES and callable(loss):
        key = getattr(loss, "__name__", key)
    if key not in _KERAS_LOSSES:
        raise _refuse_loss(key)
    name = _KERAS_LOSSES[key]
    config = loss.get_config() if hasattr(loss, "get_config") else {}
    if float(config.get("label_smoothing", 0.0) or 0.0) != 0.0:
        raise InvalidOptionError(
            f"model.compile(loss={key}) uses label_smoothing, which fedge does not support; "
            "compile without it or pass --loss to override"
        )
    if config.get("ignore_class") is not None:
        raise InvalidOptionError(
            f"model.compile(loss={key}) uses ignore_class, which fedge does not support; "
            "compile without it or pass --loss to override"
        )
    from_logits = config.get("from_logits")
    return name, None if from_logits is None else bool(from_logits)


def _refuse_optimizer(what: str) -> InvalidOptionError:
    return InvalidOptionError(
        f"model.compile(optimizer=…) uses {what}, which fedge cannot run on a device; "
        f"supported: SGD (with momentum, Nesterov), Adam, AdamW, RMSprop; pass --optimizer "
        f"({'|'.join(OPTIMIZERS)}) to override"
    )


def _float(value: Any) -> float:
    return float(value.numpy() if hasattr(value, "numpy") else value)


def compiled_optimizer(model: Any) -> tuple[OptimizerSpec, float] | None:
    """(spec, learning rate) of a compiled model's optimizer, None if not compiled."""
    opt = getattr(model, "optimizer", None)
    if opt is None or not getattr(model, "compiled", False):
        return None
    cls = type(opt).__name__
    if cls == "LossScaleOptimizer":
        raise _refuse_optimizer("a LossScaleOptimizer (mixed precision)")
    for attr, what in (("clipnorm", "clipnorm"), ("clipvalue", "clipvalue"),
                       ("global_clipnorm", "global_clipnorm")):
        if getattr(opt, attr, None) is not None:
            raise _refuse_optimizer(f"{cls} with {what}")
    if getattr(opt, "use_ema", False):
        raise _refuse_optimizer(f"{cls} with use_ema")
    if getattr(opt, "gradient_accumulation_steps", None):
        raise _refuse_optimizer(f"{cls} with gradient_accumulation_steps")
    if not hasattr(opt, "_learning_rate") or callable(getattr(opt, "_learning_rate", None)):
        raise InvalidOptionError(
            f"model.compile(optimizer={cls}) uses a learning-rate schedule; the device "
            "passes one learning rate per step: pass --learning-rate"
        )
    lr = _float(opt.learning_rate)
    decay = float(opt.weight_decay) if getattr(opt, "weight_decay", None) else 0.0
    if cls == "SGD":
        momentum = _float(opt.momentum)
        if momentum == 0.0:
            if opt.nesterov:
                raise _refuse_optimizer("SGD with nesterov=True and momentum 0")
            return OptimizerSpec("sgd", weight_decay=decay), lr
        return OptimizerSpec("momentum", momentum=momentum, nesterov=bool(opt.nesterov),
                             weight_decay=decay), lr
    if cls in ("Adam", "AdamW"):
        if getattr(opt, "amsgrad", False):
            raise _refuse_optimizer(f"{cls} with amsgrad=True")
        return OptimizerSpec("adam", beta_1=_float(opt.beta_1), beta_2=_float(opt.beta_2),
                             epsilon=float(opt.epsilon), weight_decay=decay), lr
    if cls == "RMSprop":
        return OptimizerSpec("rmsprop", rho=_float(opt.rho), momentum=_float(opt.momentum),
                             epsilon=float(opt.epsilon), centered=bool(opt.centered),
                             weight_decay=decay), lr
    raise _refuse_optimizer(cls)


def resolve(model: Any, options: ExportOptions, *, binary_head: bool) -> TrainingSettings:
    """Flags override ``compile()``; without either, the defaults."""
    sources: dict[str, str] = {}
    from_logits = options.from_logits
    if options.loss is not None:
        loss, sources["loss"] = options.loss, FLAG
    else:
        compiled = compiled_loss(model)
        if compiled is not None:
            loss, sources["loss"] = compiled[0], COMPILE
            if from_logits is None:
                from_logits = compiled[1]
        else:
            loss = "binary_crossentropy" if binary_head else "sparse_categorical_crossentropy"
            sources["loss"] = DEFAULT
    lr: float | None = options.learning_rate
    if options.optimizer is not None:
        spec, sources["optimizer"] = options.optimizer, FLAG
    else:
        optimizer = compiled_optimizer(model)
        if optimizer is not None:
            spec, sources["optimizer"] = optimizer[0], COMPILE
            if lr is None:
                lr, sources["learning_rate"] = optimizer[1], COMPILE
        else:
            spec, sources["optimizer"] = OptimizerSpec("sgd"), DEFAULT
    if lr is None:
        lr, sources["learning_rate"] = DEFAULT_LEARNING_RATE[spec.name], DEFAULT
    else:
        sources.setdefault("learning_rate", FLAG)
    if not 0 < lr < 10:
        raise InvalidOptionError(
            f"the learning rate {lr:g} (from {sources['learning_rate']}) is outside (0, 10); "
            "pass --learning-rate"
        )
    return TrainingSettings(loss, from_logits, spec, float(lr), sources)
