"""CodecSpec: construction, validation messages, dict/YAML round trips."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from quantization import CodecError, CodecSpec


def test_defaults_are_lossless() -> None:
    spec = CodecSpec()
    assert spec == CodecSpec.lossless()
    assert spec.is_lossless
    assert spec.values == "float32"


def test_bits_implies_stochastic_values() -> None:
    spec = CodecSpec(density=0.01, bits=8)
    assert spec.values == "stochastic"
    assert spec == CodecSpec(density=0.01, bits=8, values="stochastic")
    assert not spec.is_lossless


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"density": 0.0}, "codec.density"),
        ({"density": 1.5}, "codec.density"),
        ({"density": "0.1"}, "expected a number"),
        ({"density": float("nan")}, "codec.density"),
        ({"clip_norm": 0.0}, "codec.clip_norm"),
        ({"clip_norm": float("inf")}, "codec.clip_norm"),
        ({"clip_norm": True}, "expected a number"),
        ({"bits": 0}, "codec.bits"),
        ({"bits": 9}, "codec.bits"),
        ({"bits": 4.0}, "expected an integer"),
        ({"bits": 8, "values": "float16"}, "only applies to values 'stochastic'"),
        ({"values": "stochastic"}, "needs codec.bits"),
        ({"values": "int8"}, "codec.values"),
        ({"sparsify": "topK"}, "codec.sparsify"),
        ({"scope": "layer"}, "codec.scope"),
        ({"chunk_size": 0}, "codec.chunk_size"),
        ({"chunk_size": 1 << 21}, "codec.chunk_size"),
        ({"zstd_level": 0}, "codec.zstd_level"),
        ({"zstd_level": 22}, "codec.zstd_level"),
        ({"error_feedback": 1}, "codec.error_feedback"),
        ({"index_coding": "huffman"}, "codec.index_coding"),
    ],
)
def test_invalid_fields_name_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        CodecSpec(**kwargs)


def test_from_dict_rejects_unknown_keys_by_name() -> None:
    with pytest.raises(CodecError, match=r"unknown key\(s\) 'desnity'.*expected some of"):
        CodecSpec.from_dict({"desnity": 0.1, "bits": 8})


def test_from_dict_rejects_non_mappings() -> None:
    with pytest.raises(CodecError, match="expected a mapping"):
        CodecSpec.from_dict([("density", 0.1)])


def test_yaml_round_trip() -> None:
    text = """
    clip_norm: 1.0
    density: 0.01
    scope: per_tensor
    bits: 4
    chunk_size: 128
    zstd_level: 9
    error_feedback: true
    """
    spec = CodecSpec.from_dict(yaml.safe_load(text))
    assert spec.bits == 4 and spec.values == "stochastic" and spec.scope == "per_tensor"
    again = CodecSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict())))
    assert again == spec


def test_integer_density_from_yaml_is_accepted() -> None:
    assert CodecSpec.from_dict({"density": 1}).is_lossless


def test_compact_dict_keeps_only_what_differs_from_the_defaults() -> None:
    spec = CodecSpec(density=0.01, bits=8)
    assert spec.to_dict(compact=True) == {"density": 0.01, "bits": 8}
    assert CodecSpec.from_dict(spec.to_dict(compact=True)) == spec
    assert CodecSpec().to_dict(compact=True) == {}
    half = CodecSpec(values="float16", error_feedback=False)
    assert half.to_dict(compact=True) == {"values": "float16", "error_feedback": False}
