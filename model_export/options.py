"""Export options, parsed once into a frozen object with errors that say what to fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from model_export.errors import InvalidOptionError
from model_export.optimizers import OPTIMIZERS, OptimizerSpec
from model_export.targets import TARGETS

LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy", "mean_squared_error")
LOSS_ALIASES = {
    "sparse_ce": "sparse_categorical_crossentropy",
    "scce": "sparse_categorical_crossentropy",
    "bce": "binary_crossentropy",
    "mse": "mean_squared_error",
}
DEFAULT_LEARNING_RATE = {"sgd": 0.05, "momentum": 0.01, "adam": 0.001}


@dataclass(frozen=True)
class ExportOptions:
    loss: str = "sparse_categorical_crossentropy"
    from_logits: bool | None = None  # None: logits unless the model ends in softmax/sigmoid
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    learning_rate: float = DEFAULT_LEARNING_RATE["sgd"]
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
        loss: str = "sparse_categorical_crossentropy",
        from_logits: bool | None = None,
        optimizer: str | OptimizerSpec = "sgd",
        learning_rate: float | None = None,
        batch_size: int = 32,
        epochs: int = 1,
        fedprox: bool = False,
        target: str = "any",
        verify: bool = True,
        verify_pythons: tuple[Path | str, ...] | list[Path | str] = (),
        name: str | None = None,
    ) -> ExportOptions:
        loss_name = LOSS_ALIASES.get(str(loss).lower(), str(loss).lower())
        if loss_name not in LOSSES:
            raise InvalidOptionError(
                f"loss: unknown {loss!r}; expected one of {', '.join(LOSSES)} "
                f"(or {', '.join(LOSS_ALIASES)})"
            )
        if isinstance(optimizer, str):
            opt_name = optimizer.lower()
            if opt_name not in OPTIMIZERS:
                raise InvalidOptionError(
                    f"optimizer: unknown {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}"
                )
            spec = OptimizerSpec(opt_name)
        elif isinstance(optimizer, OptimizerSpec):
            if optimizer.name not in OPTIMIZERS:
                raise InvalidOptionError(f"optimizer.name: unknown {optimizer.name!r}")
            spec = optimizer
        else:
            raise InvalidOptionError(
                f"optimizer: expected a name or OptimizerSpec, got {type(optimizer).__name__}"
            )
        lr = DEFAULT_LEARNING_RATE[spec.name] if learning_rate is None else learning_rate
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < 10:
            raise InvalidOptionError(f"learning_rate: expected a number in (0, 10), got {lr!r}")
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
            learning_rate=float(lr), batch_size=batch_size, epochs=epochs,
            fedprox=bool(fedprox), target=target, verify=bool(verify),
            verify_pythons=tuple(Path(p) for p in verify_pythons), name=name,
        )
