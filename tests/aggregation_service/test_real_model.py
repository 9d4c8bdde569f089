"""With a real exported model: push over HTTP (the server loads it in its TFLite
runtime and checks the initial weights against the manifest), evaluation on
held-out digits, and a device-side round trip (download, set_weights)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest

import quantization
from fedge.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from fedge.runtime import TrainableModel
from tests.aggregation_service.conftest import EnvFactory


def _form(directory: Path, manifest: bytes | None = None) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(
        "manifest", manifest or (directory / MANIFEST_FILE).read_bytes(), filename=MANIFEST_FILE
    )
    form.add_field("model", (directory / MODEL_FILE).read_bytes(), filename=MODEL_FILE)
    return form


@pytest.mark.slow
async def test_push_evaluate_train_and_publish_a_real_model(
    make_env: EnvFactory, exported_mlp: Path
) -> None:
    from sklearn.datasets import load_digits

    env = await make_env(register=False, buffer_size=2, client={"learning_rate": 0.1})
    c = env.client
    r = await c.post("/v1/models/digits/versions", data=_form(exported_mlp), headers=env.op)
    assert r.status == 201, await r.text()
    manifest = Manifest.from_json((exported_mlp / MANIFEST_FILE).read_bytes())
    assert await r.json() == {"model": "digits", "version": 1, "sha256": manifest.sha256}
    # The tensor table must match what the runtime reports: a wrong table is refused.
    tampered = json.loads((exported_mlp / MANIFEST_FILE).read_text())
    tampered["tensors"][0]["shape"] = [s + 1 for s in tampered["tensors"][0]["shape"]]
    r = await c.post(
        "/v1/models/digits/versions",
        data=_form(exported_mlp, json.dumps(tampered).encode()),
        headers=env.op,
    )
    assert r.status == 422 and (await r.json())["error"]["code"] in {
        "weights_mismatch",
        "model_unloadable",
    }

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(manifest.label.dtype)
    buf = io.BytesIO()
    np.savez(buf, x=x[1500:], y=y[1500:])
    r = await c.put(
        "/v1/models/digits/eval-data",
        data=buf.getvalue(),
        headers={**env.op, "Content-Type": "application/octet-stream"},
    )
    assert r.status == 200

    devices = await env.enroll(2)
    for i, d in enumerate(devices):
        plan = await env.plan(d, "digits")
        graph = await (await c.get(plan["urls"]["model"], headers=d.auth)).read()
        weights = quantization.decode_weights(
            await (await c.get(plan["urls"]["weights"], headers=d.auth)).read()
        )
        model = TrainableModel(graph, manifest)
        model.set_weights(weights)
        part = slice(i * 700, (i + 1) * 700)
        for start in range(0, 700, 32):
            model.train_step(x[part][start : start + 32], y[part][start : start + 32], lr=0.1)
        trained = model.get_weights()
        delta = {t.name: trained[t.name] - weights[t.name] for t in manifest.trainable}
        body = quantization.encode(
            delta, quantization.CodecSpec(density=0.5, bits=8), seed=i
        ).payload
        status, answer = await env.upload(d, plan, body, examples=700)
        assert status == 202, answer
    await env.service.wait_idle()
    for _ in range(200):  # evaluation runs in the background
        info = await (await c.get("/v1/models/digits", headers=env.op)).json()
        if all(v["metrics"] for v in info["versions"]):
            break
        await asyncio.sleep(0.05)
    v1, v2 = info["versions"]
    assert v2["base_version"] == 1 and v2["num_updates"] == 2
    assert v1["metrics"]["examples"] == len(x) - 1500
    loss_key = next(k for k in v1["metrics"] if "loss" in k)
    assert v2["metrics"][loss_key] < v1["metrics"][loss_key]  # two devices' training helped
