"""Privacy benchmark: secure aggregation cost, and DP-FedAvg accuracy, ε and
membership-inference AUC.

1. Secure aggregation (``privacy.secagg``), one full round run in-process with
   every message encoded to bytes, for 10, 50, 100, 200 and 500 devices
   (``--quick``: up to 100) and two model sizes: the reference ``mlp`` as
   ``fedge export mlp --input-shape 64 --classes 10`` writes it (64→64→64→10,
   8,970 parameters) and 100,000 parameters. 5 % of the devices drop out
   after sharing their keys, so the server also rebuilds their mask keys.
   Graph degree k = 2⌈log2 n⌉ (capped at n − 1, even), threshold k/2 + 1.
   Reported per device: bytes sent and received by the protocol, client CPU
   time; for the server: CPU time. Baselines measured in the same run: the
   plain-mode upload (``quantization`` frame, top-1 %/8-bit and dense
   float32), the plain-mode client encode time (top-1 %/8-bit) and the
   plain-mode server time (``decode_into`` of n dense float32 frames).

2. DP-FedAvg accuracy vs ε and membership-inference AUC — a **centralized
   emulation** (``privacy.audit_fedavg.run_fedavg``), not the fleet simulator:
   the real exported TFLite mlp (``model_export.export_reference`` +
   ``fedge.runtime.TrainableModel``) trained on scikit-learn's digits split
   over 1,200 single-user "devices"; each round samples devices with
   probability q (Poisson), each trains locally from the global weights,
   clips its delta to C, the server sums, adds N(0, (zC)²) with
   ``privacy.dp.add_noise``, divides by the expected count and steps. ε from
   dp-accounting's RDP accountant for the events ``privacy.accountant``
   charges (composed once for all rounds; δ = 1e-5). The audit is
   ``privacy.audit.audit_model`` on 300 training vs 300 held-out examples.

   A second, memorization-prone scenario (200 devices, 10 local steps, long
   training) gives the audit something to find without DP.

3. Poisoning: synchronous FedAvg, 40 devices × 30 digits, 8 of them label
   flipping (y → 9 − y) or sending −10 × their update; test accuracy with the
   mean, coordinate-wise median, 20 % trimmed mean, and the mean after the
   anomaly scorer + quarantine policy, against the clean mean in the same run.

4. Secure aggregation served: one round through the real aiohttp service on
   loopback, n devices speaking HTTP with ``SecAggClient`` (10; full: 10 and
   50), per-device bytes up and down against plain codec frames of the same
   update (dense float32, dense 8-bit, top-1 %/8-bit), measured in the run.

5. Audits that measure (``privacy.audit_*``; numbers and settings in
   docs/privacy.md):

   - gradient inversion of one device's update from the exported TFLite mlp
     (and cnn), per batch size, local epochs and protection — dense float32,
     top-10 %/8-bit and top-1 %/8-bit codec frames, local DP at several z,
     secure sums of n devices — PSNR, SSIM and the fraction of examples
     identified by nearest neighbour, for the analytic attack and gradient
     matching (baseline: the undefended update of the same batch size and
     epochs; the data's mean image is the no-information guess); example
     images in ``bench/results/privacy_inversion.png``;
   - the one-run empirical ε from canary clients in the DP-FedAvg
     emulation, per noise multiplier, against the accountant's ε for the
     same run (baseline: PLD ε), and the estimator on exact Gaussian-mechanism
     samples (baseline: the mechanism's ε);
   - LiRA with shadow models: AUC and TPR at 0.1 % FPR by model width and
     training-set size without DP (baseline: the loss-threshold attack on the
     same models), then under DP-FedAvg (baseline: FedAvg without DP).

Run: ``.venv/bin/python bench/bench_privacy.py [--quick] [--audits-only]``;
writes ``bench/results/privacy.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import quantization as q  # noqa: E402
from fedge.bench import emit  # noqa: E402
from privacy import secagg  # noqa: E402
from privacy.audit_fedavg import FedAvgConfig, accountant_epsilon, run_fedavg  # noqa: E402

Row = dict[str, Any]
MLP_PARAMS = 8970  # 64·64+64 + 64·64+64 + 64·10+10


def row(benchmark: str, metric: str, value: float, unit: str, *, baseline: float | None = None,
        target: str | None = None, note: str = "") -> Row:
    ratio = value / baseline if baseline not in (None, 0) else None
    return {"benchmark": benchmark, "metric": metric, "value": float(value), "unit": unit,
            "baseline": None if baseline is None else float(baseline), "ratio": ratio,
            "target": target, "note": note}


# --------------------------------------------------------------------------- secure aggregation


def _degree(n: int) -> int:
    k = 2 * math.ceil(math.log2(n))
    k = min(k, n - 1)
    return k - (k % 2)


def secagg_rows(n: int, d: int, clip: float = 1.0) -> list[Row]:
    rng = np.random.default_rng(n * 7 + d)
    inputs = {}
    for i in range(n):
        v = rng.normal(size=d)
        inputs[f"dev-{i:04d}"] = v / np.linalg.norm(v) * clip * 0.9
    k = _degree(n)
    cfg = secagg.SecAggConfig(degree=k, threshold=k // 2 + 1, clip_norm=clip,
                              max_clients=max(n, 3), min_clients=3)
    dropped = frozenset(sorted(inputs)[:: 20][: max(1, n // 20)])
    started = time.perf_counter()
    result, stats, _ = secagg.run_local_round(
        cfg, inputs, dropouts=secagg.Dropouts(after_shares=dropped)
    )
    wall = time.perf_counter() - started
    expected = np.sum([v for name, v in inputs.items() if name not in dropped], axis=0)
    error = float(np.abs(result.total - expected).max())
    survivors = [x for x in inputs if x not in dropped]
    up = float(np.mean([stats.bytes_up[x] for x in survivors]))
    down = float(np.mean([stats.bytes_down[x] for x in survivors]))
    client_s = float(np.mean([stats.client_seconds[x] for x in survivors]))

    # Plain mode, same updates, same run.
    layout = {"w": (d,)}
    sample = {"w": inputs[survivors[0]].astype(np.float32)}
    topk = q.CodecSpec(clip_norm=clip, density=0.01, bits=8)
    dense = q.CodecSpec.lossless()
    topk_bytes = len(q.encode(sample, topk, seed=1).payload)
    dense_frames = [q.encode({"w": inputs[x].astype(np.float32)}, dense).payload
                    for x in survivors]
    t0 = time.perf_counter()
    for _ in range(5):
        q.encode(sample, topk, seed=1)
    encode_s = (time.perf_counter() - t0) / 5
    acc = {"w": np.zeros(d, np.float64)}
    t0 = time.perf_counter()
    for frame in dense_frames:
        q.decode_into(frame, acc, 1.0, expected=layout)
    plain_server_s = time.perf_counter() - t0

    label = f"secagg n={n} d={d:,}"
    note = (f"k={k}, t={k // 2 + 1}, {len(dropped)} dropped after sharing; "
            f"max sum error {error:.1e} (bound {len(survivors) * cfg.fixed_point.resolution:.1e}); "
            f"round wall {wall:.2f} s")
    return [
        row(label, "bytes up per device", up, "B", baseline=topk_bytes,
            note=f"baseline: plain top-1%/8-bit frame; dense float32 frame is "
                 f"{len(dense_frames[0])} B ({up / len(dense_frames[0]):.2f}×). {note}"),
        row(label, "bytes down per device", down, "B", baseline=None,
            note="protocol messages only (neighbour keys, routed shares, unmask request)"),
        row(label, "client time per device", client_s * 1e3, "ms", baseline=encode_s * 1e3,
            note="baseline: plain top-1%/8-bit encode of the same update"),
        row(label, "server time", stats.server_seconds * 1e3, "ms",
            baseline=plain_server_s * 1e3,
            note=f"baseline: decode_into of {len(survivors)} dense float32 frames"),
    ]


# --------------------------------------------------------------------------- DP-FedAvg emulation


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return (x[order] / 16.0).astype(np.float32), y[order].astype(np.int32)


def dp_rows(quick: bool) -> list[Row]:
    from fedge.manifest import load_model_dir
    from fedge.runtime import TrainableModel
    from model_export import export_reference

    with tempfile.TemporaryDirectory() as tmp:
        export_reference("mlp", Path(tmp) / "mlp", input_shape=(64,), classes=10,
                         verify=False)
        manifest, path = load_model_dir(Path(tmp) / "mlp")
        model = TrainableModel(path, manifest)
    # Every scenario and every noise level starts from the exported initial
    # weights (the model object is reused, so they are kept here).
    init = model.get_weights()
    rows = dp_scenario(
        model, init, "dp-fedavg emulation", devices=1200, expected_k=100,
        rounds=60 if quick else 200, local_steps=5, levels=(None, 0.5, 1.0, 2.0),
    )
    # A small fleet trained long: memorization-prone, so the audit has
    # something to find without DP.
    rows += dp_scenario(
        model, init, "dp-fedavg small fleet", devices=200, expected_k=50,
        rounds=100 if quick else 300, local_steps=10, levels=(None, 1.0, 4.0),
    )
    rows += robust_rows(model, init, quick)
    return rows


def dp_scenario(model: Any, init: dict[str, np.ndarray], name: str, *, devices: int,
                expected_k: int, rounds: int, local_steps: int,
                levels: tuple[float | None, ...]) -> list[Row]:
    from privacy.audit import audit_model, dp_advantage_bound

    x, y = _digits()
    x_train, y_train = x[:devices], y[:devices]
    x_test, y_test = x[1200:], y[1200:]  # the same 597 held-out examples in every scenario
    q_rate = expected_k / devices
    clip, local_lr, delta = 1.0, 0.1, 1e-5
    audit_n = min(300, devices)

    def train(z: float | None, seed: int) -> tuple[dict[str, np.ndarray], float, int, float]:
        config = FedAvgConfig(rounds=rounds, clients_per_round=expected_k,
                              local_steps=local_steps, local_lr=local_lr, clip_norm=clip,
                              noise_multiplier=z or None, delta=delta)
        devices_xy = [(x_train[d : d + 1], y_train[d : d + 1]) for d in range(devices)]
        run = run_fedavg(model, init, devices_xy, config, np.random.default_rng(seed))
        model.set_weights(run.weights)
        acc = model.evaluate(x_test, y_test)["accuracy"]
        eps = accountant_epsilon(q_rate, z, rounds, delta) if z else math.inf
        return run.weights, eps, run.clipped, acc

    results = {}
    for z in levels:
        started = time.perf_counter()
        weights, eps, clipped_count, acc = train(z, seed=1)
        model.set_weights(weights)
        audit = audit_model(model, (x_train[:audit_n], y_train[:audit_n]),
                            (x_test[:audit_n], y_test[:audit_n]))
        results[z] = (acc, eps, audit, time.perf_counter() - started, clipped_count)
    rows: list[Row] = []
    base_acc, _, base_audit, _, _ = results[None]
    for z in levels:
        acc, eps, audit, secs, clipped_count = results[z]
        label = f"{name} " + ("no DP" if z is None else f"z={z}")
        common = (f"centralized emulation on digits with the real TFLite mlp; {devices} devices "
                  f"× 1 example, q={q_rate:.3f}, {rounds} rounds, {local_steps} local steps; "
                  f"{secs:.0f} s")
        rows.append(row(label, "test accuracy", acc, "", baseline=None if z is None else base_acc,
                        note=common + ("" if z is None else
                                       f"; C={clip}, {clipped_count} clipped updates")))
        if z is not None:
            rows.append(row(label, "epsilon", eps, "", note=f"RDP, δ={delta}, Poisson q"))
            rows.append(row(label, "DP advantage bound", dp_advantage_bound(eps, delta), "",
                            note="largest membership advantage (ε, δ)-DP allows"))
        rows.append(row(label, "MIA AUC", audit.auc, "",
                        baseline=None if z is None else base_audit.auc,
                        note=f"loss-threshold attack, {audit_n} members vs {audit_n} "
                             "non-members"))
        rows.append(row(label, "MIA advantage", audit.advantage, "",
                        baseline=None if z is None else base_audit.advantage, note=""))
    return rows


def robust_rows(model: Any, init: dict[str, np.ndarray], quick: bool) -> list[Row]:
    """Synchronous FedAvg with 20 % poisoned devices: label flipping on their
    local data, or sending −10 × their honest update; accuracy with the
    plain mean, coordinate-wise median, trimmed mean, and the mean after the
    anomaly scorer + quarantine policy. Baseline: the plain mean without
    attackers, same run."""
    from privacy.robust import (
        Action,
        AnomalyScorer,
        QuarantinePolicy,
        RobustConfig,
        coordinate_median,
        trimmed_mean,
    )

    x, y = _digits()
    devices, per_device, bad = 40, 30, 8
    rounds = 15 if quick else 30
    x_test, y_test = x[1200:], y[1200:]
    names = [t.name for t in model.manifest.trainable]

    def local_update(weights: dict[str, np.ndarray], dev: int, attack: str) -> dict[str, Any]:
        xs = x[dev * per_device : (dev + 1) * per_device]
        ys = y[dev * per_device : (dev + 1) * per_device]
        malicious = dev < bad
        if malicious and attack == "label flip":
            ys = (9 - ys).astype(np.int32)
        model.set_weights(weights)
        for i in range(0, per_device, 10):
            model.train_step(xs[i : i + 10], ys[i : i + 10], 0.1)
        after = model.get_weights()
        update = {n: after[n] - weights[n] for n in names}
        if malicious and attack == "sign flip ×10":
            update = {n: -10.0 * v for n, v in update.items()}
        return update

    def train(attack: str, aggregator: str) -> tuple[float, int, int]:
        """Returns accuracy, updates left out, rounds with nothing kept."""
        rng = np.random.default_rng(3)
        left_out = empty_rounds = 0
        weights = {k: v.copy() for k, v in init.items()}
        cfg = RobustConfig(warmup=10)
        scorer, policy = AnomalyScorer(cfg), QuarantinePolicy(cfg)
        for r in range(rounds):
            order = rng.permutation(devices)  # the order updates reach the service
            updates = [local_update(weights, int(d), attack) for d in order]
            if aggregator == "median":
                agg = coordinate_median(updates)
            elif aggregator == "trimmed mean 20%":
                agg = trimmed_mean(updates, 0.2)
            elif aggregator == "mean + quarantine":
                kept = []
                for u, dev in zip(updates, order, strict=True):
                    decision = policy.decide(f"d{dev}", scorer.score(u), now=1000.0 * r)
                    if decision.action is Action.ACCEPT:
                        scorer.observe(u)
                        kept.append(u)
                left_out += len(updates) - len(kept)
                if not kept:
                    empty_rounds += 1
                    continue  # nothing accepted: no step this round
                agg = {n: np.mean([u[n] for u in kept], axis=0) for n in names}
            else:
                agg = {n: np.mean([u[n] for u in updates], axis=0) for n in names}
            for n in names:
                weights[n] = (weights[n] + agg[n]).astype(np.float32)
        model.set_weights(weights)
        return float(model.evaluate(x_test, y_test)["accuracy"]), left_out, empty_rounds

    clean, _, _ = train("none", "mean")
    rows = [row("robust sync FedAvg, no attack", "test accuracy (mean)", clean, "",
                note=f"{devices} devices × {per_device} digits, all in every round, {rounds} "
                     "rounds, real TFLite mlp")]
    for attack in ("label flip", "sign flip ×10"):
        for aggregator in ("mean", "median", "trimmed mean 20%", "mean + quarantine"):
            acc, left_out, empty = train(attack, aggregator)
            extra = (f"; {left_out} of {rounds * devices} updates left out, {empty} rounds "
                     "with none kept" if aggregator == "mean + quarantine" else "")
            rows.append(row(f"robust sync FedAvg, {bad}/{devices} {attack}",
                            f"test accuracy ({aggregator})", acc, "", baseline=clean,
                            note="baseline: plain mean without attackers" + extra))
    return rows


# --------------------------------------------------------------------- served secure aggregation


async def _served_round(n: int, d: int, workdir: Path) -> tuple[dict[str, int], dict[str, int],
                                                                 float, np.ndarray, np.ndarray]:
    """One secure aggregation round through the real service on loopback:
    n devices speak HTTP (aiohttp) with SecAggClient; returns bytes up/down
    per device (request/response bodies), the round's wall time, the mean of
    the inputs and the published update."""
    import hashlib
    import random

    import aiohttp
    from aiohttp import web

    from aggregation_service import AggregationService, ServiceConfig, codec, create_app
    from fedge.manifest import Manifest

    token = "bench-operator-token-0123456789"
    k = _degree(n)
    config = ServiceConfig.from_dict({
        "data_dir": str(workdir), "operator_token": token, "fsync": False,
        "rate_limit": {"rate_per_s": 10_000.0, "burst": 10_000},
        "training": {"mode": "sync", "clients_per_round": n, "over_selection": 1.0,
                     "codec": {"density": 1.0},
                     "secagg": {"degree": k, "threshold": k // 2 + 1, "clip_norm": 1.0,
                                "max_clients": n, "min_clients": 3}},
    })
    manifest = Manifest.from_dict({
        "format_version": 1, "name": "bench",
        "tensors": [{"name": "w", "shape": [d], "dtype": "float32", "trainable": True}],
        "input": {"shape": [4], "dtype": "float32"},
        "label": {"shape": [], "dtype": "int32", "num_classes": 3},
        "signatures": ["train", "evaluate", "infer", "get_weights", "set_weights"],
        "loss": "sparse_categorical_crossentropy", "optimizer": {"name": "sgd"},
        "hyperparameters": {}, "sha256": hashlib.sha256(b"bench").hexdigest(),
    })
    service = AggregationService(config, rng=random.Random(0))
    runner = web.AppRunner(create_app(config, service=service))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    await service.push_synthetic("m", manifest, {"w": np.zeros(d, np.float32)})
    rng = np.random.default_rng(n + d)
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    op = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/v1/enrollment-tokens", json={"uses": n}, headers=op) as r:
            enroll = (await r.json())["token"]
        devices = []
        for _ in range(n):
            async with http.post(f"{base}/v1/devices/enroll",
                                 json={"enrollment_token": enroll}) as r:
                body = await r.json()
            devices.append((body["device_id"], {"Authorization": f"Bearer {body['device_token']}"}))
        plans = {}
        for device, auth in devices:
            async with http.post(f"{base}/v1/devices/checkin", headers=auth,
                                 json={"model": "m", "eligible": True}) as r:
                plans[device] = (await r.json())["plan"]["secagg"]["urls"]
                up[device] = 0
                down[device] = 0
        clients = {device: secagg.SecAggClient(device) for device, _ in devices}
        inputs = {}
        for device, _ in devices:
            v = rng.normal(size=d)
            inputs[device] = v / np.linalg.norm(v) * 0.9

        async def post(device: str, auth: dict[str, str], step: str, msg: Any) -> None:
            data = secagg.encode_message(msg)
            up[device] += len(data)
            async with http.post(base + plans[device][step], data=data, headers={
                    **auth, "Content-Type": "application/octet-stream"}) as r:
                down[device] += len(await r.read())
                assert r.status == 200, await r.text()

        async def fetch(device: str, auth: dict[str, str], step: str) -> Any:
            while True:  # poll fast: this measures bytes and CPU, not Retry-After waits
                async with http.get(base + plans[device][step], headers=auth) as r:
                    data = await r.read()
                    down[device] += len(data)
                    if r.status == 200:
                        return secagg.decode_message(data)
                    assert r.status == 204, data
                await asyncio.sleep(0.005)

        started = time.perf_counter()
        await asyncio.gather(*(post(dv, a, "keys", clients[dv].advertise_keys())
                               for dv, a in devices))
        setups = await asyncio.gather(*(fetch(dv, a, "setup") for dv, a in devices))
        await asyncio.gather(*(post(dv, a, "shares", clients[dv].share_keys(s))
                               for (dv, a), s in zip(devices, setups, strict=True)))
        shares = await asyncio.gather(*(fetch(dv, a, "shares") for dv, a in devices))
        await asyncio.gather(*(post(dv, a, "masked-input",
                                    clients[dv].masked_input(s, inputs[dv]))
                               for (dv, a), s in zip(devices, shares, strict=True)))
        requests = await asyncio.gather(*(fetch(dv, a, "unmask") for dv, a in devices))
        await asyncio.gather(*(post(dv, a, "unmask", clients[dv].unmask(rq))
                               for (dv, a), rq in zip(devices, requests, strict=True)))
        while service.runtime("m").training.version < 2:
            await asyncio.sleep(0.005)
        wall = time.perf_counter() - started
    row2 = await service.store.run(service.store.version, "m", 2)
    published = codec.decode_weights(service.blobs.get(row2.weights_sha256), manifest)["w"]
    await runner.cleanup()
    return up, down, wall, np.mean(list(inputs.values()), axis=0), published


def served_secagg_rows(n: int, d: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="fedge-bench-secagg-") as tmp:
        up, down, wall, mean, published = asyncio.run(_served_round(n, d, Path(tmp)))
    error = float(np.abs(published - mean).max())
    rng = np.random.default_rng(1)
    v = rng.normal(size=d)
    sample = {"w": (v / np.linalg.norm(v) * 0.9).astype(np.float32)}
    topk = len(q.encode(sample, q.CodecSpec(clip_norm=1.0, density=0.01, bits=8), seed=1).payload)
    eight = len(q.encode(sample, q.CodecSpec(clip_norm=1.0, density=1.0, bits=8), seed=1).payload)
    dense = len(q.encode(sample, q.CodecSpec.lossless()).payload)
    mean_up = float(np.mean(list(up.values())))
    label = f"secagg served n={n} d={d:,}"
    note = (f"aiohttp service on loopback, {n} devices over HTTP, no dropouts; plain frames of "
            f"the same-size update: top-1%/8-bit {topk} B, dense 8-bit {eight} B, dense float32 "
            f"{dense} B; published mean max error {error:.1e}")
    return [
        row(label, "bytes up per device", mean_up, "B", baseline=dense,
            note="baseline: plain dense float32 frame. " + note),
        row(label, "bytes up per device vs top-1%/8-bit", mean_up, "B", baseline=topk,
            note="baseline: the default plain codec (top-1 %, 8-bit)"),
        row(label, "bytes down per device", float(np.mean(list(down.values()))), "B",
            baseline=dense, note="protocol answers (setup, shares, unmask request) and JSON "
            f"acks; baseline: a dense float32 frame. Round wall time keys → published version "
            f"{wall:.2f} s (2 shared cores, polls every 5 ms)"),
    ]


# --------------------------------------------------------------------------- audits


def _export(tmp: Path, name: str, **options: Any) -> Any:
    from privacy.audit_setup import export_reference, open_model

    shape = (8, 8, 1) if name == "cnn" else (64,)
    label = name + "".join(f"-{k}{'x'.join(map(str, v))}" for k, v in options.items())
    return open_model(export_reference(name, tmp / label, input_shape=shape, classes=10,
                                       **options))


def _best(per_attack: dict[str, Any]) -> Any:
    """The attack that identified the most examples (then: higher PSNR)."""
    return max(per_attack.values(), key=lambda r: (r.identified, r.psnr_mean))


def inversion_rows(quick: bool, tmp: Path) -> list[Row]:
    """Gradient inversion per batch size, epochs and protection (section 5)."""
    from privacy.audit_gradient import GradientConfig, make_attack
    from privacy.audit_images import save_figure
    from privacy.audit_inversion import Setting, parse_protection, run_inversion
    from privacy.audit_setup import digits

    data = digits(0)
    trials = 3 if quick else 8
    iterations = 300 if quick else 500
    lr = 0.05  # the service's default plan learning rate
    batches = (1, 8, 32) if quick else (1, 2, 4, 8, 16, 32)
    protected_batches = (1, 8)
    protected_epochs = (1,) if quick else (1, 5)
    ldp = ("ldp:0.01", "ldp:0.1", "ldp:1") if quick else ("ldp:0.001", "ldp:0.01", "ldp:0.1",
                                                         "ldp:1")
    sums = ("secsum:3", "secsum:10") if quick else ("secsum:3", "secsum:10", "secsum:30")
    others = ("topk:0.1", "topk:0.01", *ldp)
    rows: list[Row] = []
    figure: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name in ("mlp", "cnn"):
        model = _export(tmp, name)
        init = model.get_weights()
        attack = make_attack(model, init, lr=lr, image_shape=data.image_shape,
                             config=GradientConfig(iterations=iterations))
        both = ("analytic", "gradient") if name == "mlp" else ("gradient",)
        groups: list[tuple[list[Setting], tuple[str, ...]]] = []
        if name == "mlp":
            dense = parse_protection("dense")
            groups.append(([Setting(b, e, dense) for b in batches for e in (1, 5)], both))
            groups.append(([Setting(b, e, parse_protection(p)) for b in protected_batches
                            for e in protected_epochs for p in others], both))
            for p in sums:
                n = parse_protection(p).devices
                for b in protected_batches:
                    # Gradient matching of n·B unknown images, n trajectories
                    # simulated per step, is left out past 24 (minutes per device).
                    attacks = both if n * b <= 24 else ("analytic",)
                    groups.append(([Setting(b, e, parse_protection(p))
                                    for e in protected_epochs], attacks))
        else:
            cnn_batches = (1,) if quick else (1, 4)
            cnn_epochs = (1,) if quick else (1, 5)
            groups.append(([Setting(b, e, parse_protection(p)) for b in cnn_batches
                            for e in cnn_epochs for p in ("dense", "topk:0.1")], both))
        results = []
        for settings, attacks in groups:
            results.append(run_inversion(model, init, data, settings, trials=trials, lr=lr,
                                         seed=0, attacks=attacks, gradient_attack=attack))
            print(f"  inversion {name}: {len(settings)} settings done", file=sys.stderr)
        prior = results[0].prior_psnr
        table = [r for res in results for r in res.rows]
        keys = list(dict.fromkeys((r.batch_size, r.epochs, r.protection) for r in table))
        by_key = {k: {r.attack: r for r in table if (r.batch_size, r.epochs, r.protection) == k}
                  for k in keys}

        for b, e, prot in keys:
            per = by_key[(b, e, prot)]
            best = _best(per)
            dense = by_key.get((b, e, "dense float32"))
            base = None if prot == "dense float32" or dense is None else _best(dense)
            label = f"inversion {name} b={b} e={e} {prot}"
            eps = ("" if best.epsilon is None else
                   f"; local DP ε = {best.epsilon:.3g} per upload (δ 1e-5)")
            detail = "; ".join(
                f"{a}: SSIM {x.ssim_mean:.2f}, median PSNR {x.psnr_median:.1f} dB, identified "
                f"{x.identified:.0%}" + ("" if x.label_accuracy is None else
                                          f", labels {x.label_accuracy:.0%}")
                + f", {x.seconds:.2f} s/device" for a, x in per.items())
            rows.append(row(label, "identified (best attack)", best.identified, "",
                            baseline=None if base is None else base.identified,
                            note=f"best: {best.attack}; baseline: the dense update. {trials} "
                                 f"devices × {b} digit(s), {e} local epoch(s), lr {lr}, "
                                 f"{best.payload_bytes:.0f} B upload{eps}. {detail}"))
            for attack, x in per.items():
                rows.append(row(label, f"PSNR ({attack})", x.psnr_mean, "dB", baseline=prior,
                                note="baseline: the data's mean image as the guess (no "
                                     "update seen); capped at 60 dB"))
        for res in results:
            for (b, e, prot), (orig, rec) in res.examples.items():
                if name == "mlp" and b == 1 and e == 1:
                    figure.append((f"{prot}", orig, rec))
                if name == "cnn" and b == 1 and e == 1 and prot == "dense float32":
                    figure.append(("cnn, dense float32", orig, rec))
    if figure:
        save_figure(REPO / "bench" / "results" / "privacy_inversion.png", figure[0][1],
                    [(label, rec) for label, _, rec in figure], data.image_shape,
                    "one device, one digit, one local epoch: what the server reconstructs")
    return rows


def estimator_rows(quick: bool) -> list[Row]:
    """The ε estimator on exact Gaussian-mechanism samples: how far each fit
    lands from the mechanism's ε with as many canaries as the audit uses."""
    from privacy.audit_epsilon import estimate_epsilon, gaussian_mechanism_epsilon

    canaries = 500 if quick else 1000
    reps = 30 if quick else 100
    rng = np.random.default_rng(11)
    rows: list[Row] = []
    for z in (1.0, 2.0, 6.0):
        exact = gaussian_mechanism_epsilon(z, 1e-5)
        shared, paper = [], []
        for _ in range(reps):
            est = estimate_epsilon(rng.normal(1 / z, 1.0, canaries), rng.normal(0.0, 1.0, canaries),
                                   1e-5, dim=10_000)
            shared.append(est.epsilon_equal_variance)
            paper.append(est.epsilon)
        label = f"epsilon estimator, Gaussian mechanism z={z:g}"
        note = (f"{reps} draws of {canaries} seen + {canaries} unseen statistics from "
                f"N(1/z, 1) and N(0, 1); baseline: the mechanism's exact ε = {exact:.3f}")
        rows.append(row(label, "mean estimate (shared std)", float(np.mean(shared)), "",
                        baseline=exact, note=note + f"; sd {np.std(shared):.3f}"))
        rows.append(row(label, "mean estimate (two-parameter fit)", float(np.mean(paper)), "",
                        baseline=exact, note=f"the paper's fit; sd {np.std(paper):.3f}"))
    return rows


def epsilon_rows(quick: bool, tmp: Path) -> list[Row]:
    """One-run ε from canary clients vs the accountant, per noise multiplier."""
    from privacy.audit_canary import EpsilonAuditConfig, run_epsilon_audit
    from privacy.audit_setup import digits

    data = digits(0)
    model = _export(tmp, "mlp")
    config = EpsilonAuditConfig(
        noise_multipliers=(0.5, 1.0, 2.0) if quick else (0.5, 1.0, 2.0, 4.0),
        devices=1200, canaries=500 if quick else 1000, unseen=500 if quick else 1000,
        clients_per_round=100, rounds=60 if quick else 200, local_steps=5, local_lr=0.1,
        clip_norm=1.0, delta=1e-5, seed=0, bootstrap=100 if quick else 200)
    out = run_epsilon_audit(model, model.get_weights(), (data.x, data.y),
                            (data.x[1200:], data.y[1200:]), config)
    rows: list[Row] = []
    for r in out:
        label = f"one-run epsilon z={r.noise_multiplier:g}"
        setting = (f"DP-FedAvg emulation, real TFLite mlp, 1,200 one-digit devices + "
                   f"{config.canaries} canary clients ({config.unseen} unseen), q = "
                   f"{r.sampling_probability:.4f}, {r.rounds} rounds, 5 local steps, C = 1, "
                   f"δ = 1e-5; test accuracy {r.test_accuracy:.3f}; {r.seconds:.0f} s")
        rows.append(row(label, "accountant epsilon (RDP)", r.epsilon_rdp, "",
                        note="what fedge's accountant charges. " + setting))
        rows.append(row(label, "accountant epsilon (PLD)", r.epsilon_pld, "",
                        note="the same events, PLD accounting (tighter)"))
        for metric, value, interval, paper in (
                ("empirical epsilon, final model", r.final_model, r.final_model_interval,
                 r.final_model_two_parameter),
                ("empirical epsilon, every version", r.every_version, r.every_version_interval,
                 r.every_version_two_parameter)):
            verdict = ("at or below the bound" if value <= r.epsilon_pld else
                       "ABOVE the bound beyond its interval" if interval[0] > r.epsilon_pld
                       else "above the bound, within its sampling interval")
            rows.append(row(label, metric, value, "", baseline=r.epsilon_pld,
                            note=f"shared-std fit, 95 % interval [{interval[0]:.2f}, "
                                 f"{interval[1]:.2f}]; the paper's two-parameter fit "
                                 f"{paper:.2f}; baseline: PLD ε; {verdict}"))
    return rows


def lira_rows(quick: bool, tmp: Path) -> list[Row]:
    """LiRA by capacity and data size, then under DP-FedAvg."""
    from privacy.audit_fedavg import FedAvgConfig
    from privacy.audit_lira import LiraConfig, run_lira
    from privacy.audit_setup import digits

    data = digits(0)
    held_out = (data.x[-197:], data.y[-197:])
    models = 17 if quick else 65
    rows: list[Row] = []
    widths = (16, 64, 256)
    sizes = (50, 200) if quick else (50, 200, 800)
    exported = {h: _export(tmp, "mlp", hidden=(h,)) for h in widths}
    for h in widths:
        model = exported[h]
        params = model.manifest.num_trainable_parameters
        for n in sizes:
            res = run_lira(model, model.get_weights(), (data.x[: 2 * n], data.y[: 2 * n]),
                           held_out, LiraConfig(models=models, train_size=n, epochs=100))
            label = f"lira mlp-{h} ({params:,} params) n={n}"
            note = (f"central SGD, 100 epochs, batch 32, lr 0.1; {models} models each the target "
                    f"once ({res.scored:,} scores); train acc {res.train_accuracy:.3f}, test "
                    f"{res.test_accuracy:.3f}; offline LiRA AUC {res.lira_offline.auc:.3f}; "
                    f"baseline: loss threshold on the same models")
            rows.append(row(label, "LiRA AUC", res.lira_online.auc, "",
                            baseline=res.loss_threshold.auc, note=note))
            rows.append(row(label, "LiRA TPR at 0.1% FPR", res.lira_online.tpr_at_0_1pct_fpr, "",
                            baseline=res.loss_threshold.tpr_at_0_1pct_fpr,
                            note=f"TPR at 1 % FPR {res.lira_online.tpr_at_1pct_fpr:.3f} (loss "
                                 f"threshold {res.loss_threshold.tpr_at_1pct_fpr:.3f})"))
        print(f"  lira width {h} done", file=sys.stderr)
    model = exported[64]
    n, dp_models = 100, 9 if quick else 33
    rounds = 50 if quick else 100
    base: Any = None
    for z in (None, 0.5, 1.0, 2.0):
        fed = FedAvgConfig(rounds=rounds, clients_per_round=20, local_steps=10, local_lr=0.1,
                           clip_norm=1.0, noise_multiplier=z)
        res = run_lira(model, model.get_weights(), (data.x[: 2 * n], data.y[: 2 * n]), held_out,
                       LiraConfig(models=dp_models, train_size=n, fedavg=fed))
        label = "lira dp-fedavg " + ("no DP" if z is None else f"z={z:g}")
        eps = "" if res.epsilon is None else f"ε = {res.epsilon:.1f} (RDP, δ 1e-5); "
        bound = "" if res.epsilon is None else (
            f"; (ε, δ)-DP allows TPR ≤ {min(1.0, math.exp(res.epsilon) * 0.001 + 1e-5):.3g} "
            "at 0.1 % FPR")
        note = (f"{eps}{n} one-digit devices, 20 per round (q = 0.2), {rounds} rounds, 10 local "
                f"steps, C = 1; {dp_models} models; test acc {res.test_accuracy:.3f}; loss "
                f"threshold AUC {res.loss_threshold.auc:.3f}; baseline: FedAvg without DP")
        rows.append(row(label, "LiRA AUC", res.lira_online.auc, "",
                        baseline=None if base is None else base.lira_online.auc, note=note))
        rows.append(row(label, "LiRA TPR at 0.1% FPR", res.lira_online.tpr_at_0_1pct_fpr, "",
                        baseline=None if base is None else base.lira_online.tpr_at_0_1pct_fpr,
                        note=f"TPR at 1 % FPR {res.lira_online.tpr_at_1pct_fpr:.3f}{bound}"))
        rows.append(row(label, "test accuracy", res.test_accuracy, "",
                        baseline=None if base is None else base.test_accuracy, note=""))
        if z is None:
            base = res
    print("  lira dp done", file=sys.stderr)
    return rows


def audit_rows(quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="fedge-bench-audit-") as tmp:
        rows = estimator_rows(quick)
        rows += epsilon_rows(quick, Path(tmp))
        print("  one-run epsilon done", file=sys.stderr)
        rows += lira_rows(quick, Path(tmp))
        rows += inversion_rows(quick, Path(tmp))
    return rows


# --------------------------------------------------------------------------- main


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    sizes = (10, 50, 100) if quick else (10, 50, 100, 200, 500)
    for d in (MLP_PARAMS, 100_000):
        for n in sizes:
            rows.extend(secagg_rows(n, d))
            print(f"  secagg n={n} d={d} done", file=sys.stderr)
    for n in (10,) if quick else (10, 50):
        rows.extend(served_secagg_rows(n, MLP_PARAMS))
    rows.extend(dp_rows(quick))
    rows.extend(audit_rows(quick))
    return rows


def main() -> int:
    try:  # dp-accounting logs a warning per excluded RDP order; the result is unaffected
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="secure aggregation up to 100 devices; 60 DP rounds instead of 200")
    parser.add_argument("--skip-dp", action="store_true", help="secure aggregation rows only")
    parser.add_argument("--audits-only", action="store_true",
                        help="the audit rows only (inversion, one-run ε, LiRA)")
    args = parser.parse_args()
    if args.audits_only:
        rows = audit_rows(args.quick)
    elif args.skip_dp:
        rows: list[Row] = []
        for d in (MLP_PARAMS, 100_000):
            for n in (10, 50, 100) if args.quick else (10, 50, 100, 200, 500):
                rows.extend(secagg_rows(n, d))
        for n in (10,) if args.quick else (10, 50):
            rows.extend(served_secagg_rows(n, MLP_PARAMS))
    else:
        rows = run(args.quick)
    # --audits-only is for working on the audits: it must not replace the
    # full results file the README's table is collected from.
    name = "privacy_audits.json" if args.audits_only else "privacy.json"
    emit(rows, REPO / "bench" / "results" / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
