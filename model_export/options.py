"""Export options, parsed once into a frozen object with errors that say what to fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model_export.errors import InvalidOptionError
from model_export.optimizers import OPTIMIZERS, SPEC_NAMES, OptimizerSpec
from model_export.targets import TARGETS

LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy", "mean_squared_error")
LOSS_ALIASES = {
    "sparse_ce": "sparse_categorical_crossentropy",
    "scce": "sparse_categorical_crossentropy",
    "bce": "binary_crossentropy",
    "mse": "mean_squared_error",
}
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "momentum": 0.01, "adam": 0.001, "rmsprop": 0.001}


@dataclass(frozen=True)
class ExportOptions:
    """What the caller asked for. ``loss``, ``optimizer`` and ``learning_rate`` are
    None when not given: the model's own ``compile()`` settings (or the defaults)
    apply then (model_export.training resolves them)."""

    loss: str | None = None
    from_logits: bool | None = None  # None: logits unless the model ends in softmax/sigmoid
    optimizer: OptimizerSpec | None = None
    learning_rate: float | None = None
    batch_size: int = 32
    epochs: int = 1
    fedprox: bool = False
    target: str = "any"
    verify: bool = True
    verify_pythons: tuple[Path, ...] = ()
    name: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        loss: str | None = None,
        from_logits: bool | None = None,
        optimizer: str | OptimizerSpec | None = None,
        learning_rate: float | None = None,
        batch_size: int = 32,
        epochs: int = 1,
        fedprox: bool = False,
        target: str = "any",
        verify: bool = True,
        verify_pythons: tuple[Path | str, ...] | list[Path | str] = (),
        name: str | None = None,
    ) -> ExportOptions:
        loss_name = None if loss is None else parse_loss(loss)
        spec: OptimizerSpec | None
        if optimizer is None:
            spec = None
        elif isinstance(optimizer, str):
            opt_name = optimizer.lower()
            if opt_name not in OPTIMIZERS:
                raise InvalidOptionError(
                    f"optimizer: unknown {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}"
                )
            spec = OptimizerSpec.named(opt_name)
        elif isinstance(optimizer, OptimizerSpec):
            if optimizer.name not in SPEC_NAMES:
                raise InvalidOptionError(f"optimizer.name: unknown {optimizer.name!r}")
            spec = optimizer
        else:
            raise InvalidOptionError(
                f"optimizer: expected a name or OptimizerSpec, got {type(optimizer).__name__}"
            )
        lr = learning_rate
        if lr is not None:
            lr = check_learning_rate(lr)
        for key, value in (("batch_size", batch_size), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOptionError(f"{key}: expected a positive integer, got {value!r}")
        if target not in TARGETS:
            raise InvalidOptionError(
                f"target: unknown {target!r}; expected one of {', '.join(TARGETS)}"
            )
        if name is not None and (not name or not all(c.isalnum() or c in "_-." for c in name)):
            raise InvalidOptionError(
                f"name: {name!r} must be non-empty letters, digits, '_', '-' or '.'"
            )
        return cls(
            loss=loss_name, from_logits=from_logits, optimizer=spec,
            learning_rate=lr, batch_size=batch_size, epochs=epochs,
            fedprox=bool(fedprox), target=target, verify=bool(verify),
            verify_pythons=tuple(Path(p) for p in verify_pythons), name=name,
        )


def parse_loss(loss: str) -> str:
    """A loss name or alias → its canonical name (InvalidOptionError if unknown)."""
    name = LOSS_ALIASES.get(str(loss).lower(), str(loss).lower())
    if name not in LOSSES:
        raise InvalidOptionError(
            f"loss: unknown {loss!r}; expected one of {', '.join(LOSSES)} "
            f"(or {', '.join(LOSS_ALIASES)})"
        )
    return name


def check_learning_rate(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < 10:
        raise InvalidOptionError(f"learning_rate: expected a number in (0, 10), got {lr!r}")
    return float(lr)
