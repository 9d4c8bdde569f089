"""Runtime targets and their known limits, checked on the converted flatbuffer.

tflite-runtime 2.14 (the last wheel, Raspberry Pi OS bookworm) aborts the
process — SIGABRT, no message — when its DIV, SUB or SQUARED_DIFFERENCE
kernel broadcasts at rank 6: the broadcast path is templated on 5 dimensions
and ``RuntimeShape::ExtendedShape(5, …)`` fails a TFLITE_CHECK. TF 2.21's
converter emits such ops with the same version as a 5-D broadcast, so an
op-version table cannot catch it; the shapes can. fedge's own layers never
build rank-6 tensors, so this guard fires only if a future layer does.
"""

# ruff: noqa: PLC0415  (TensorFlow/Keras are imported lazily, on purpose)

from __future__ import annotations

from dataclasses import dataclass

from model_export.errors import TargetUnsupportedError

TARGETS = ("any", "tflite-runtime-2.14")
_BROADCAST_LIMITED = ("DIV", "SUB", "SQUARED_DIFFERENCE")


@dataclass(frozen=True)
class Violation:
    subgraph: str
    operator: int
    op: str
    shapes: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        shapes = " and ".join(str(list(s)) for s in self.shapes)
        return (f"{self.op} broadcasts a rank-6 tensor ({shapes}) at operator #{self.operator} "
                f"of {self.subgraph}")


def rank6_broadcasts(model: bytes) -> list[Violation]:
    """Every DIV/SUB/SQUARED_DIFFERENCE that broadcasts with an output of rank > 5."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAsModel(model, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    found = []
    for s in range(root.SubgraphsLength()):
        graph = root.Subgraphs(s)
        label = (graph.Name() or b"").decode() or f"subgraph {s}"
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = root.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")
            if name not in _BROADCAST_LIMITED or op.InputsLength() != 2:
                continue
            shapes = []
            for k in range(2):
                tensor = graph.Tensors(op.Inputs(k))
                sig = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else None
                shape = sig if sig is not None else tensor.ShapeAsNumpy()
                shapes.append(tuple(int(d) for d in shape) if not isinstance(shape, int) else ())
            rank = max(len(shapes[0]), len(shapes[1]))
            # Equal signatures with a dynamic (−1) dimension may still broadcast at
            # run time (−1 resolving to 1 on one side), so those count too.
            dynamic_same = shapes[0] == shapes[1] and -1 in shapes[0]
            if rank > 5 and (shapes[0] != shapes[1] or dynamic_same):
                found.append(Violation(label, i, name, (shapes[0], shapes[1])))
    return found


def check_target(model: bytes, target: str) -> None:
    if target != "tflite-runtime-2.14":
        return
    problems = rank6_broadcasts(model)
    if problems:
        raise TargetUnsupportedError(
            f"target {target}: {problems[0]}; tflite-runtime 2.14 aborts the process on it "
            "(its DIV/SUB/SQUARED_DIFFERENCE broadcast kernels support at most 5 dimensions). "
            "Keep tensors at rank ≤ 5 or use MUL/ADD"
            + (f" ({len(problems) - 1} more)" if len(problems) > 1 else "")
        )
