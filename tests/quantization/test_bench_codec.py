"""bench/bench_codec.py still runs against the API and emits well-formed rows."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.conftest import REPO

KEYS = {"benchmark", "metric", "value", "unit", "baseline", "ratio", "target", "note"}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_codec", REPO / "bench" / "bench_codec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_rows_on_a_small_update() -> None:
    bench = _bench()
    update = bench.make_update(50_000)
    assert sum(v.size for v in update.values()) == 50_000
    rows = bench.size_rows("50k", update) + bench.index_rows("50k", update)
    rows += bench.speed_rows("50k", update, repeats=1)
    for row in rows:
        assert set(row) == KEYS
        assert row["value"] > 0
        if row["baseline"] is not None:
            assert row["ratio"] == row["value"] / row["baseline"]
    ratios = {r["metric"]: r["value"] for r in rows if r["unit"] == "× smaller"}
    # Sizes are deterministic: the codec must beat the naive sparse format.
    floor = ratios["floor: uint32 idx + int8 + zstd, top-1%"]
    assert ratios["top-1%/8-bit payload vs dense float32"] > floor
    assert ratios["top-1%/4-bit payload vs dense float32"] > ratios[
        "top-1%/8-bit payload vs dense float32"
    ]
