"""SavedModel → builtin-only TFLite flatbuffer, and the op table of the result."""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_export.errors import ConversionError


@dataclass(frozen=True, order=True)
class OpCode:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}/v{self.version}"


def convert(module: Any, signatures: dict[str, Any], scratch: Path | None = None) -> bytes:
    """Convert with ``TFLITE_BUILTINS`` only and resource variables enabled."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="fedge-savedmodel-", dir=scratch) as tmp:
        saved = Path(tmp) / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved), signature_keys=list(signatures)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            content: bytes = converter.convert()
        except Exception as exc:  # the converter raises ConverterError, RuntimeError …
            text = str(exc)
            ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op",
                                        text)))
            hint = f" (TensorFlow ops without a builtin: {', '.join(ops)})" if ops else ""
            raise ConversionError(f"the TFLite converter failed{hint}: {text[-2000:]}") from exc
    return content


def op_codes(model: bytes) -> tuple[OpCode, ...]:
    """The operator codes the flatbuffer declares (builtin name and version), sorted."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = set()
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            name = f"CUSTOM:{custom.decode() if custom else '?'}"
        else:
            name = names.get(builtin, str(builtin))
        codes.add(OpCode(name, code.Version()))
    return tuple(sorted(codes))


def operator_counts(model: bytes) -> dict[str, int]:
    """Operators per signature (subgraph), e.g. ``{"train": 1234, "infer": 210, …}``."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    names = {}
    for i in range(root.SignatureDefsLength()):
        sig = root.SignatureDefs(i)
        names[sig.SubgraphIndex()] = (sig.SignatureKey() or b"").decode()
    counts = {}
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        label = names.get(s) or (graph.Name() or b"").decode() or f"subgraph_{s}"
        counts[label] = graph.OperatorsLength()
    return counts


def check_builtin_only(codes: tuple[OpCode, ...]) -> None:
    custom = [c.name for c in codes if c.name.startswith("CUSTOM")]
    if custom:
        raise ConversionError(f"the model contains non-builtin ops: {', '.join(custom)}")
