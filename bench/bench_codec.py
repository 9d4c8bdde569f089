"""Update codec benchmark: payload size and speed of ``quantization``.

For updates of 100k, 1M and 10M parameters (a few tensors; heavy-tailed
values around 1e-3, like a trained delta; ``--quick`` skips 10M):

- payload bytes and ratio to dense float32 for top-1 %/8-bit, top-1 %/4-bit
  and dense float16, against the floor baseline "uint32 indices + int8 values
  + zstd" built here from the same top-k selection;
- index bytes per kept value for delta+varint, bitmap and delta+Rice;
- encode and decode throughput (MB/s of the dense float32 equivalent) against
  a plain numpy copy of the same array;
- decode_into time for 1M parameters at 1 % against one dense numpy copy;
- CPU per frame of decode_into and decode_many_into (batches of 32) into a
  float64 sum, compiled (numba) path against the numpy reference, same run,
  same frames (``--quick`` too); and the peak RSS an edge agent pays for
  importing numba (why the device side stays numpy);
- the downlink: lossless weights frame and exact XOR delta after one SGD-like
  step, against zstd of the raw float32 weights.

Run: ``.venv/bin/python bench/bench_codec.py [--quick]``; writes
``bench/results/codec.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import quantization as q  # noqa: E402
from fedge.bench import emit  # noqa: E402
from quantization import accel, api, batch, indexcoding, topk  # noqa: E402

Row = dict[str, Any]
LAYOUT = (0.62, 0.3, 0.075, 0.005)  # share of parameters per tensor


def make_update(params: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [int(params * share) for share in LAYOUT]
    sizes[0] += params - sum(sizes)
    return {
        f"layer{i}": (rng.standard_t(3, size) * 1e-3).astype(np.float32)
        for i, size in enumerate(sizes)
    }


def best_time(fn: Callable[[], object], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def floor_baseline(update: dict[str, np.ndarray], density: float) -> int:
    """uint32 absolute indices + int8 values (one float32 scale) + zstd level 3:
    the simplest sensible sparse format, with the same global top-k selection."""
    flat = np.concatenate([v.reshape(-1) for v in update.values()])
    k = topk.budget(flat.size, density)
    idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
    values = flat[idx]
    scale = float(np.abs(values).max()) / 127
    codes = np.round(values / scale).astype(np.int8)
    raw = idx.astype("<u4").tobytes() + codes.tobytes() + np.float32(scale).tobytes()
    return len(zstandard.ZstdCompressor(level=3).compress(raw))


def row(
    benchmark: str, metric: str, value: float, unit: str, *, baseline: float | None = None,
    target: str | None = None, note: str = "",
) -> Row:
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "ratio": None if baseline in (None, 0) else value / baseline,
        "target": target,
        "note": note,
    }


TARGETS = {
    ("1M", "top-1%/8-bit"): "≥ 150× smaller than dense float32",
    ("1M", "top-1%/4-bit"): "≥ 250× smaller than dense float32",
}


def size_rows(label: str, update: dict[str, np.ndarray]) -> list[Row]:
    params = sum(v.size for v in update.values())
    dense = 4 * params
    floor = floor_baseline(update, 0.01)
    floor_ratio = dense / floor
    rows = [
        row(f"codec {label}", "floor: uint32 idx + int8 + zstd, top-1%", floor_ratio, "× smaller",
            note=f"{floor:,} bytes; the baseline for the rows below"),
    ]
    for name, spec in (
        ("top-1%/8-bit", q.CodecSpec(density=0.01, bits=8)),
        ("top-1%/4-bit", q.CodecSpec(density=0.01, bits=4)),
        ("dense float16", q.CodecSpec(values="float16")),
    ):
        encoded = q.encode(update, spec, seed=1)
        stats = encoded.stats
        codings = sorted(set(stats.index_codings.values()))
        rows.append(
            row(
                f"codec {label}", f"{name} payload vs dense float32", stats.ratio, "× smaller",
                baseline=floor_ratio, target=TARGETS.get((label, name)),
                note=f"{stats.payload_bytes:,} bytes; indices {'/'.join(codings)}; "
                f"relative quantization error {stats.quantization_error:.3f}",
            )
        )
    return rows


def index_rows(label: str, update: dict[str, np.ndarray]) -> list[Row]:
    """Bytes of index coding per kept value at 1 % (the largest tensor)."""
    flat = max(update.values(), key=lambda v: v.size).reshape(-1)
    k = topk.budget(flat.size, 0.01)
    idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]).astype(np.int64)
    sizes = {
        force: len(indexcoding.encode(idx, flat.size, force)[1])
        for force in ("varint", "bitmap", "rice")
    }
    rows = []
    for force in ("varint", "bitmap", "rice"):
        spec = q.CodecSpec(density=0.01, bits=4, index_coding=force)
        stats = q.encode(update, spec, seed=1).stats
        auto = q.encode(update, q.CodecSpec(density=0.01, bits=4), seed=1).stats
        rows.append(
            row(
                f"codec {label}", f"top-1%/4-bit with {force} indices", stats.ratio, "× smaller",
                baseline=auto.ratio,
                note=f"{stats.payload_bytes:,} bytes; baseline: the automatic per-tensor choice",
            )
        )
    gaps = np.diff(idx, prepend=-1)
    p = 1 / gaps.mean()
    entropy_bits = (-(1 - p) * math.log2(1 - p) - p * math.log2(p)) / p  # geometric gaps
    for force, size in sizes.items():
        rows.append(
            row(
                f"codec {label}", f"index bits per value, {force}", 8 * size / k, "bits",
                baseline=8 * sizes["varint"] / k,
                note=f"{size:,} bytes for {k:,} of {flat.size:,}; geometric-gap entropy "
                f"{entropy_bits:.2f} bits",
            )
        )
    return rows


def speed_rows(label: str, update: dict[str, np.ndarray], repeats: int) -> list[Row]:
    params = sum(v.size for v in update.values())
    mb = 4 * params / 1e6
    arrays = list(update.values())
    copy_s = best_time(lambda: [a.copy() for a in arrays], repeats)
    copy_mbs = mb / copy_s
    rows = []
    for name, spec in (
        ("top-1%/8-bit", q.CodecSpec(density=0.01, bits=8)),
        ("lossless", q.CodecSpec.lossless()),
    ):
        payload = q.encode(update, spec, seed=1).payload
        encode_s = best_time(lambda spec=spec: q.encode(update, spec, seed=1), repeats)
        decode_s = best_time(lambda payload=payload: q.decode(payload), repeats)
        rows.append(row(f"codec {label}", f"{name} encode", mb / encode_s, "MB/s",
                        baseline=copy_mbs, note="dense-equivalent MB/s; baseline: numpy copy"))
        rows.append(row(f"codec {label}", f"{name} decode", mb / decode_s, "MB/s",
                        baseline=copy_mbs, note="dense-equivalent MB/s; baseline: numpy copy"))
    return rows


def decode_into_rows(update: dict[str, np.ndarray], repeats: int) -> list[Row]:
    expected = {k: v.shape for k, v in update.items()}
    payload = q.encode(update, q.CodecSpec(density=0.01, bits=8), seed=1).payload
    acc = {k: np.zeros(s, np.float32) for k, s in expected.items()}
    arrays = list(update.values())
    copy_s = best_time(lambda: [a.copy() for a in arrays], repeats * 3)
    into_s = best_time(lambda: q.decode_into(payload, acc, 0.5, expected=expected), repeats * 3)
    dense_add_s = best_time(lambda: [np.add(a, a, out=a) for a in acc.values()], repeats * 3)
    return [
        row("codec 1M", "decode_into top-1%/8-bit", into_s * 1e3, "ms",
            baseline=copy_s * 1e3, target="≤ 10× one dense numpy copy",
            note=f"baseline: one numpy copy of the dense update; a dense += takes "
            f"{dense_add_s * 1e3:.2f} ms"),
    ]


def cpu_time(fn: Callable[[], object], rounds: int) -> float:
    """Best thread CPU seconds of ``fn`` over ``rounds`` (other processes on a
    shared machine stretch wall time, not this thread's CPU time)."""
    best = math.inf
    for _ in range(rounds):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best


def path_rows(rounds: int) -> list[Row]:
    """decode_into / decode_many_into per frame: compiled against numpy."""
    fast = accel.compiled()
    if fast is None:
        return [row("codec paths 1M", "compiled decoding", 0.0, "ms",
                    note=f"not measured: {accel.backend().reason}")]
    fast.warm_up()
    shapes = {"dense_kernel": (1000, 1000), "dense_bias": (1000,)}
    spec = q.CodecSpec(density=0.01, bits=8)
    frames = []
    for seed in range(32):
        rng = np.random.default_rng(seed)
        delta = {k: (rng.standard_t(3, s) * 1e-3).astype(np.float32) for k, s in shapes.items()}
        frames.append(q.encode(delta, spec, seed=seed).payload)
    acc = {k: np.zeros(s, np.float64) for k, s in shapes.items()}
    weights = [1.0] * len(frames)
    calls = {
        "numpy one": lambda: [api.decode_into_numpy(f, acc, 1.0, expected=shapes) for f in frames],
        "numba one": lambda: [fast.decode_into(f, acc, 1.0, expected=shapes) for f in frames],
        "numpy many": lambda: batch.decode_many_into_numpy(frames, acc, weights, expected=shapes),
        "numba many": lambda: fast.decode_many_into(frames, acc, weights, expected=shapes),
    }
    best = dict.fromkeys(calls, math.inf)
    for _ in range(rounds):  # interleaved, so a burst of load hits every path alike
        for name, call in calls.items():
            best[name] = min(best[name], cpu_time(call, 1) / len(frames))
    ms = {name: value * 1e3 for name, value in best.items()}
    note = (f"{len(frames)} top-1%/8-bit frames of a 1,001,000-parameter model into a float64 "
            f"sum, thread CPU per frame, best of {rounds} interleaved rounds; baseline: the "
            "numpy reference, same frames, same run")
    return [
        row("codec paths 1M", "decode_into per frame, compiled", ms["numba one"], "ms",
            baseline=ms["numpy one"], note=note),
        row("codec paths 1M", "decode_many_into (batches of 32) per frame, compiled",
            ms["numba many"], "ms", baseline=ms["numpy many"], note=note),
        row("codec paths 1M", "decode_many_into per frame, numpy, vs decode_into",
            ms["numpy many"], "ms", baseline=ms["numpy one"],
            note="the reference's own batching gain, for comparison"),
    ]


def numba_rss_rows() -> list[Row]:
    """Peak RSS of an edge agent process, and of one that also imports numba."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent.
    code = ("import edge_client.agent, quantization, pathlib, re, sys\n"
            "if sys.argv[1] == '1':\n    import numba\n"
            "status = pathlib.Path('/proc/self/status').read_text()\n"
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', status).group(1)) / 1024)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    mb = []
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True,
                             env=env, check=False, timeout=120)
        if out.returncode != 0:
            return [row("codec edge", "agent peak RSS with numba imported", 0.0, "MB",
                        note=f"not measured: {out.stderr.strip().splitlines()[-1]}")]
        mb.append(float(out.stdout))
    return [row("codec edge", "agent peak RSS with numba imported", mb[1], "MB", baseline=mb[0],
                note="edge_client.agent + quantization imported; baseline: without numba")]


def downlink_rows(params: int) -> list[Row]:
    rng = np.random.default_rng(3)
    base = {k: (v * 50).astype(np.float32) for k, v in make_update(params, 7).items()}
    step = {k: (v - np.float32(0.01) * rng.normal(0, 1e-3, v.shape)).astype(np.float32)
            for k, v in base.items()}
    raw = b"".join(v.tobytes() for v in step.values())
    zstd_only = len(zstandard.ZstdCompressor(level=3).compress(raw))
    weights = len(q.encode_weights(step))
    xor = len(q.encode_model_delta(step, base))
    dense = 4 * params
    return [
        row("codec downlink 1M", "weights frame (lossless)", dense / weights, "× smaller",
            baseline=dense / zstd_only, note="baseline: zstd -3 of the raw float32 weights"),
        row("codec downlink 1M", "exact XOR delta after one step", dense / xor, "× smaller",
            baseline=dense / zstd_only,
            note="every weight moved by ~1e-5 relative; baseline: zstd -3 of the raw weights"),
    ]


def run(quick: bool) -> list[Row]:
    labels = {"100k": 100_000, "1M": 1_000_000} | ({} if quick else {"10M": 10_000_000})
    rows: list[Row] = []
    for label, params in labels.items():
        update = make_update(params)
        rows += size_rows(label, update)
        if label == "1M":
            rows += index_rows(label, update)
            rows += decode_into_rows(update, repeats=3 if quick else 5)
        rows += speed_rows(label, update, repeats=2 if quick or params > 1_000_000 else 3)
    rows += downlink_rows(1_000_000)
    rows += path_rows(rounds=5 if quick else 9)
    rows += numba_rss_rows()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 10M-parameter update")
    args = parser.parse_args()
    rows = run(args.quick)
    emit(rows, REPO / "bench" / "results" / "codec.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
