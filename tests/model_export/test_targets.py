"""The tflite-runtime 2.14 guard: rank-6 broadcasting DIV/SUB is refused at export time."""

from __future__ import annotations

import pytest

tf = pytest.importorskip("tensorflow")

from model_export import TargetUnsupportedError  # noqa: E402
from model_export.convert import op_codes  # noqa: E402
from model_export.targets import check_target, rank6_broadcasts  # noqa: E402


def _convert(fn: object, spec: object) -> bytes:
    concrete = tf.function(fn, input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    content: bytes = converter.convert()
    return content


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    def divide(x: object) -> object:
        # The divisor depends on the dynamic batch, so it is not constant-folded:
        # a rank-6 DIV broadcasting against a scalar, as TF's Mean gradient makes.
        count = tf.cast(tf.shape(x)[0], tf.float32)
        return {"y": x / count}

    def divide5(x: object) -> object:
        return {"y": x / tf.cast(tf.shape(x)[0], tf.float32)}

    return {
        "rank6": _convert(divide, tf.TensorSpec([None, 2, 2, 2, 2, 3], tf.float32)),
        "rank5": _convert(divide5, tf.TensorSpec([None, 2, 2, 2, 3], tf.float32)),
    }


def test_rank6_broadcasting_div_is_found(models: dict[str, bytes]) -> None:
    assert "DIV" in {c.name for c in op_codes(models["rank6"])}
    problems = rank6_broadcasts(models["rank6"])
    assert [p.op for p in problems] == ["DIV"]
    with pytest.raises(TargetUnsupportedError, match=r"DIV broadcasts a rank-6 tensor.*aborts"):
        check_target(models["rank6"], "tflite-runtime-2.14")
    check_target(models["rank6"], "any")  # other targets are not restricted


def test_rank5_broadcast_passes(models: dict[str, bytes]) -> None:
    assert rank6_broadcasts(models["rank5"]) == []
    check_target(models["rank5"], "tflite-runtime-2.14")
