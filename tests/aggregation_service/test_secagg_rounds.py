"""Secure aggregation of sync rounds through the real aiohttp app: each
device runs privacy.secagg.SecAggClient over HTTP (the same bytes the agent
sends), the phases close early or at their deadlines on the ManualClock, and
the published version is checked against the plain mean of the inputs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregation_service import AggregationService, codec
from privacy.secagg import (
    KeyAdvert,
    MaskedInput,
    Message,
    SecAggClient,
    SecAggConfig,
    decode_message,
    encode_message,
)
from tests.aggregation_service.conftest import (
    SHAPES,
    Device,
    Env,
    EnvFactory,
    initial_weights,
)

SIZE = sum(int(np.prod(s)) for s in SHAPES.values())  # w (4, 3) + b (3,) = 15


def training(n: int, degree: int, threshold: int, **extra: Any) -> dict[str, Any]:
    return {
        "mode": "sync",
        "clients_per_round": n,
        "over_selection": 1.0,
        "report_deadline_s": 600.0,
        "codec": {"density": 1.0, "bits": 8},
        "secagg": {"degree": degree, "threshold": threshold, "clip_norm": 1.0,
                   "max_clients": 16, "min_clients": 3},
        **extra,
    }


async def settle() -> None:
    """Let the phase driver run (the sum is computed on the service's CPU thread)."""
    for _ in range(30):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    for _ in range(30):
        await asyncio.sleep(0)


class Wire:
    """One device's SecAgg client, speaking HTTP to the test app."""

    def __init__(self, env: Env, device: Device, plan: dict[str, Any]) -> None:
        self.env, self.device, self.plan = env, device, plan
        self.secagg = plan["secagg"]
        self.client = SecAggClient(device.device_id)

    async def post(self, step: str, body: bytes | Message) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else encode_message(body)
        r = await self.env.client.post(
            self.secagg["urls"][step], data=data,
            headers={**self.device.auth, "Content-Type": "application/octet-stream"},
        )
        return r.status, await r.json()

    async def get(self, step: str) -> tuple[int, Any]:
        r = await self.env.client.get(self.secagg["urls"][step], headers=self.device.auth)
        if r.status == 200:
            return 200, decode_message(await r.read())
        if r.status == 204:
            return 204, r.headers.get("Retry-After")
        return r.status, await r.json()

    async def fetch(self, step: str) -> Any:
        status, answer = await self.get(step)
        assert status == 200, (status, answer)
        return answer


async def join(env: Env, devices: list[Device]) -> list[Wire]:
    wires = [Wire(env, d, await env.plan(d)) for d in devices]
    assert len({w.secagg["round_id"] for w in wires}) == 1
    return wires


def inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        v = rng.normal(size=SIZE)
        out.append(v * (rng.uniform(0.2, 0.9) / np.linalg.norm(v)))  # inside the clip norm
    return out


async def run_to_inputs(wires: list[Wire], vectors: list[np.ndarray]) -> None:
    for w in wires:
        assert (await w.post("keys", w.client.advertise_keys()))[0] == 200
    await settle()  # the selection is full and every key is in: the phase closes at once
    for w in wires:
        setup = await w.fetch("setup")
        assert (await w.post("shares", w.client.share_keys(setup)))[0] == 200
    await settle()
    for w, v in zip(wires, vectors, strict=True):
        shares = await w.fetch("shares")
        assert (await w.post("masked-input", w.client.masked_input(shares, v)))[0] == 200
    await settle()


async def unmask(wires: list[Wire]) -> None:
    for w in wires:
        request = await w.fetch("unmask")
        assert (await w.post("unmask", w.client.unmask(request)))[0] == 200
    await settle()


async def version(service: AggregationService, number: int) -> Any:
    return await service.store.run(service.store.version, "m", number)


async def published(service: AggregationService, number: int) -> dict[str, np.ndarray]:
    row = await version(service, number)
    assert row is not None
    return codec.decode_weights(service.blobs.get(row.weights_sha256),
                                service.runtime("m").manifest)


def expected_after(vectors: list[np.ndarray]) -> dict[str, np.ndarray]:
    mean = np.mean(vectors, axis=0)
    w0, out, offset = initial_weights(), {}, 0
    for name, shape in SHAPES.items():
        size = int(np.prod(shape))
        out[name] = w0[name] + mean[offset : offset + size].reshape(shape)
        offset += size
    return out


def tolerance(n: int) -> float:
    fp = SecAggConfig(degree=2, threshold=2, clip_norm=1.0, max_clients=16).fixed_point
    return fp.resolution + 1e-6  # the mean's fixed-point error, plus float32 weights


async def metric(env: Env, name: str) -> str:
    r = await env.client.get("/metrics")
    return "\n".join(line for line in (await r.text()).splitlines() if line.startswith(name))


# --- the round -------------------------------------------------------------------------------


async def test_a_round_publishes_the_mean_of_the_inputs(make_env: EnvFactory) -> None:
    env = await make_env(**training(5, degree=4, threshold=3))
    devices = await env.enroll(5)
    wires = await join(env, devices)
    plan = wires[0].secagg
    assert plan["vector_length"] == SIZE and plan["config"]["threshold"] == 3
    assert plan["layout"] == [["w", [4, 3]], ["b", [3]]]
    vectors = inputs(5)
    await run_to_inputs(wires, vectors)
    await unmask(wires)
    await env.service.wait_idle()
    row = await version(env.service, 2)
    assert row is not None and row.num_updates == 5 and row.num_devices == 5
    r = await env.client.get("/v1/models/m", headers=env.op)
    assert (await r.json())["secagg_round"] is None  # nothing open until the next check-in
    got, want = await published(env.service, 2), expected_after(vectors)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=tolerance(5))
    assert 'outcome="completed"} 1' in await metric(env, "fedge_secagg_rounds_total")
    # A new check-in opens the next round from the new version.
    nxt = await env.plan(devices[0])
    assert nxt["version"] == 2 and nxt["secagg"]["round_id"] != plan["round_id"]


async def test_dropouts_after_masked_input_up_to_the_threshold_are_recovered(
    make_env: EnvFactory,
) -> None:
    env = await make_env(**training(8, degree=6, threshold=4))
    wires = await join(env, await env.enroll(8))
    vectors = inputs(8, seed=1)
    await run_to_inputs(wires, vectors)
    await unmask(wires[:6])  # two devices go silent after their masked input
    assert await version(env.service, 2) is None  # the unmask phase waits for them
    env.clock.advance(600.0 + 60.0 + 1.0)  # past the unmask deadline
    await settle()
    await env.service.wait_idle()
    got, want = await published(env.service, 2), expected_after(vectors)  # all 8 inputs are summed
    for name in SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=tolerance(8))


async def test_beyond_the_threshold_the_round_is_abandoned_and_a_new_one_opens(
    make_env: EnvFactory,
) -> None:
    env = await make_env(**training(8, degree=6, threshold=4))
    devices = await env.enroll(8)
    wires = await join(env, devices)
    await run_to_inputs(wires, inputs(8))
    await unmask(wires[:4])  # four silent: some secret has fewer than 4 shares
    env.clock.advance(661.0)
    await settle()
    await env.service.wait_idle()
    assert await version(env.service, 2) is None
    assert 'outcome="too_few_unmask_shares"} 1' in await metric(env, "fedge_secagg_rounds_total")
    assert "fedge_rounds_abandoned_total" in await metric(env, "fedge_rounds_abandoned_total")
    status, body = await wires[0].get("unmask")
    assert status == 409 and body["error"]["code"] == "round_abandoned"
    fresh = await env.plan(devices[0])
    assert fresh["version"] == 1 and fresh["secagg"]["round_id"] != wires[0].secagg["round_id"]


async def test_too_few_keys_abandon_at_the_key_deadline(make_env: EnvFactory) -> None:
    env = await make_env(**training(5, degree=4, threshold=3))
    wires = await join(env, await env.enroll(2))  # the selection never fills
    for w in wires:
        await w.post("keys", w.client.advertise_keys())
    status, retry = await wires[0].get("setup")
    assert status == 204 and 1 <= int(retry) <= 2
    env.clock.advance(121.0)  # 20 % of the report deadline
    await settle()
    await env.service.wait_idle()
    assert 'outcome="too_few_keys"} 1' in await metric(env, "fedge_secagg_rounds_total")


# --- refusals --------------------------------------------------------------------------------


async def test_bad_messages_are_refused_and_the_round_still_completes(
    make_env: EnvFactory,
) -> None:
    env = await make_env(**training(5, degree=4, threshold=3))
    devices = await env.enroll(6)
    wires = await join(env, devices[:5])
    outsider = Wire(env, devices[5], wires[0].plan)  # never selected: same URLs, other token
    advert = wires[0].client.advertise_keys()

    async def refused(wire: Wire, step: str, body: bytes | Message, status: int, code: str,
                      **headers: str) -> None:
        if headers:
            r = await env.client.post(wire.secagg["urls"][step], data=body,
                                      headers={**wire.device.auth, **headers})
            got, answer = r.status, await r.json()
        else:
            got, answer = await wire.post(step, body)
        assert (got, answer["error"]["code"]) == (status, code), answer

    await refused(outsider, "keys", outsider.client.advertise_keys(), 403, "not_in_round")
    await refused(wires[0], "keys", b"FSA1\x01garbage", 400, "bad_secagg_message")
    await refused(wires[0], "keys", encode_message(advert)[:-3], 400, "bad_secagg_message")
    await refused(wires[0], "keys", encode_message(KeyAdvert(wires[1].device.device_id,
                                                             advert.c_pk, advert.s_pk)),
                  403, "device_mismatch")
    await refused(wires[0], "masked-input",
                  MaskedInput(wires[0].device.device_id, np.zeros(SIZE, np.uint32)),
                  409, "wrong_phase")
    await refused(wires[0], "keys", encode_message(advert), 415, "unsupported_media_type",
                  **{"Content-Type": "application/json"})
    await refused(wires[0], "keys", b"\0" * (3 << 20), 413, "too_large",
                  **{"Content-Type": "application/octet-stream"})
    r = await env.client.post("/v1/devices/secagg/rd-nosuchround/keys", data=b"x",
                              headers={**devices[0].auth,
                                       "Content-Type": "application/octet-stream"})
    assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_round"
    r = await env.client.get(wires[0].secagg["urls"]["setup"])
    assert r.status == 401

    assert (await wires[0].post("keys", advert)) == (200, {
        "status": "received", "round_id": wires[0].secagg["round_id"], "phase": "keys"})
    # A retry of the same bytes (a lost answer) is answered like the first ...
    status, body = await wires[0].post("keys", advert)
    assert (status, body["status"]) == (200, "duplicate")
    # ... other keys for the same step are a replay attack, refused.
    await refused(wires[0], "keys", SecAggClient(wires[0].device.device_id).advertise_keys(),
                  409, "already_sent")
    r = await env.client.get("/v1/models/m", headers=env.op)
    state = (await r.json())["secagg_round"]
    assert state["round_id"] == wires[0].secagg["round_id"]
    assert (state["phase"], state["selected"], state["target"]) == ("keys", 5, 5)
    assert state["sent"] == {"keys": 1}

    vectors = inputs(5, seed=3)
    for w in wires[1:]:
        await w.post("keys", w.client.advertise_keys())
    await settle()
    for w in wires:
        await w.post("shares", w.client.share_keys(await w.fetch("setup")))
    await settle()
    for i, (w, v) in enumerate(zip(wires, vectors, strict=True)):
        masked = w.client.masked_input(await w.fetch("shares"), v)
        if i == 4:  # a vector of the wrong length: 422, and the device is out of the sum
            short = MaskedInput(masked.device, masked.vector[:-1])
            await refused(w, "masked-input", short, 422, "protocol_violation")
            continue
        assert (await w.post("masked-input", masked))[0] == 200
    await settle()
    status, body = await wires[4].get("unmask")
    assert (status, body["error"]["code"]) == (409, "excluded")
    await unmask(wires[:4])
    await env.service.wait_idle()
    got, want = await published(env.service, 2), expected_after(vectors[:4])
    for name in SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=tolerance(4))
    refusals = await metric(env, "fedge_secagg_messages_refused_total")
    for code in ("not_in_round", "bad_secagg_message", "already_sent", "protocol_violation"):
        assert f'code="{code}"' in refusals


async def test_a_device_in_the_open_round_is_told_to_wait(make_env: EnvFactory) -> None:
    env = await make_env(**training(3, degree=2, threshold=2))
    devices = await env.enroll(4)
    await join(env, devices[:3])
    answer = await env.checkin(devices[0])  # already in: a second plan would fork its keys
    assert answer["action"] == "wait"
    answer = await env.checkin(devices[3])  # the selection is full
    assert answer["action"] == "wait"


async def test_secagg_config_through_patch(make_env: EnvFactory) -> None:
    env = await make_env()  # async by default
    secagg = {"degree": 4, "threshold": 3, "clip_norm": 1.0, "max_clients": 20}
    r = await env.client.patch("/v1/models/m/config", json={"secagg": secagg}, headers=env.op)
    assert r.status == 422
    detail = (await r.json())["error"]["detail"]
    assert "needs synchronous rounds" in detail
    assert "buffered asynchronous secure aggregation" in detail
    for patch, message in [
        ({"mode": "sync", "secagg": secagg}, "codec.density"),
        ({"mode": "sync", "secagg": secagg, "codec": {"density": 1.0},
          "clients_per_round": 30}, "secagg.max_clients: 20 is below the 39 devices"),
        ({"mode": "sync", "secagg": {**secagg, "threshold": 2}, "codec": {"density": 1.0}},
         "secagg.threshold"),
        ({"mode": "sync", "secagg": secagg, "codec": {"density": 1.0},
          "aggregator": "median"}, "hides from the server"),
        ({"mode": "sync", "secagg": {**secagg, "clip_norm": 2.0}, "codec": {"density": 1.0},
          "dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5}},
         "secagg.clip_norm: 2 is above dp.clip_norm"),
    ]:
        r = await env.client.patch("/v1/models/m/config", json=patch, headers=env.op)
        assert r.status == 422, patch
        assert message in (await r.json())["error"]["detail"], patch
    ok = {"mode": "sync", "secagg": secagg, "codec": {"density": 1.0},
          "dp": {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5}}
    r = await env.client.patch("/v1/models/m/config", json=ok, headers=env.op)
    assert r.status == 200, await r.text()
    assert (await r.json())["secagg"]["max_clients"] == 20
    # Off again: DP then needs a clipping codec of its own (the secagg clip is gone).
    r = await env.client.patch("/v1/models/m/config", json={"secagg": None}, headers=env.op)
    assert r.status == 422 and "codec.clip_norm" in (await r.json())["error"]["detail"]
    r = await env.client.patch("/v1/models/m/config", json={"secagg": None, "dp": None},
                               headers=env.op)
    assert r.status == 200 and (await r.json())["secagg"] is None


async def test_dp_noise_goes_on_the_secure_sum(make_env: EnvFactory) -> None:
    env = await make_env(**training(
        4, degree=2, threshold=2,
        dp={"noise_multiplier": 0.5, "clip_norm": 1.0, "delta": 1e-5}))
    wires = await join(env, await env.enroll(4))
    vectors = inputs(4, seed=5)
    await run_to_inputs(wires, vectors)
    await unmask(wires)
    await env.service.wait_idle()
    row = await env.service.version_row("m", 2)
    assert row.to_json()["privacy"]["steps"] == 1
    got, clean = await published(env.service, 2), expected_after(vectors)
    # (sum + N(0, (z·C)²)) / clients_per_round: noise of std 0.5 / 4 per coordinate.
    diff = np.concatenate([(got[k] - clean[k]).ravel() for k in SHAPES])
    assert 0.02 < float(np.std(diff)) < 0.5


async def test_a_restart_abandons_the_running_round_and_starts_cleanly(
    make_env: EnvFactory, tmp_path: Path
) -> None:
    data = tmp_path / "restart"
    env = await make_env(data_dir=data, **training(3, degree=2, threshold=2))
    devices = await env.enroll(3)
    wires = await join(env, devices)
    await run_to_inputs(wires, inputs(3))  # masked inputs in, unmask pending
    await env.client.close()  # a restart: the SecAgg state lived in memory only
    env2 = await make_env(data_dir=data, register=False, **training(3, degree=2, threshold=2))
    for w in wires:
        w.env = env2
    status, body = await wires[0].get("unmask")
    assert (status, body["error"]["code"]) == (404, "unknown_round")
    fresh = await join(env2, devices)
    assert fresh[0].secagg["round_id"] != wires[0].secagg["round_id"]
    vectors = inputs(3, seed=9)
    await run_to_inputs(fresh, vectors)
    await unmask(fresh)
    await env2.service.wait_idle()
    got, want = await published(env2.service, 2), expected_after(vectors)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=tolerance(3))


@pytest.mark.parametrize("step", ["setup", "shares", "unmask"])
async def test_polling_before_the_phase_closes_says_when_to_come_back(
    make_env: EnvFactory, step: str
) -> None:
    env = await make_env(**training(3, degree=2, threshold=2))
    wires = await join(env, await env.enroll(3))
    status, retry = await wires[0].get(step)
    assert status == 204 and retry is not None and float(retry) >= 1
