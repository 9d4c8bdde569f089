"""Secure aggregation: exact sums, uniform-looking uploads, dropout recovery,
abandonment without revelation, and lying participants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from privacy import shamir
from privacy.errors import PrivacyConfigError, ProtocolViolation, SecAggAbandoned, SecAggError
from privacy.secagg import (
    ClientState,
    Dropouts,
    FixedPoint,
    KeyAdvert,
    MaskedInput,
    RoundSetup,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    ServerState,
    ShareKeys,
    SharesFor,
    UnmaskRequest,
    check_codec_for_secagg,
    check_mode,
    decode_message,
    encode_message,
    flatten,
    harary_graph,
    run_local_round,
    unflatten,
)

D = 600  # vector length: small keeps the suite fast; the maths does not care


def _inputs(n: int, clip: float = 1.0, seed: int = 0, length: int = D) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        v = rng.normal(size=length)
        out[f"dev-{i:03d}"] = v / np.linalg.norm(v) * clip * rng.uniform(0.1, 1.0)
    return out


def _config(**kw: object) -> SecAggConfig:
    base: dict[str, object] = {"degree": 6, "threshold": 4, "clip_norm": 1.0, "max_clients": 50}
    base.update(kw)
    return SecAggConfig(**base)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sums


@pytest.mark.parametrize("bits", [32, 64])
def test_the_sum_is_exact_to_the_fixed_point_resolution(bits: int) -> None:
    cfg = _config(modulus_bits=bits)
    inputs = _inputs(16)
    result, stats_, server = run_local_round(cfg, inputs)
    expected = np.sum(list(inputs.values()), axis=0)
    error = np.abs(result.total - expected).max()
    assert error <= 16 * cfg.fixed_point.resolution + 1e-12  # float64 summation error
    assert result.survivors == tuple(sorted(inputs)) and result.dropped == ()
    assert server.state is ServerState.DONE
    # The masked upload is exactly 4 (or 8) bytes per value plus a small header.
    assert all(b > D * bits // 8 for b in stats_.bytes_up.values())


def test_fixed_point_never_wraps_at_max_clients_with_extreme_inputs() -> None:
    fp = FixedPoint(clip_norm=2.0, max_clients=300)
    worst = np.zeros(4)
    worst[0] = 2.0  # the whole norm on one coordinate
    encoded = [fp.encode(worst if i % 2 else -worst) for i in range(300)]
    encoded_pos = [fp.encode(worst) for _ in range(300)]
    total = np.asarray(np.sum(np.stack(encoded_pos), axis=0, dtype=np.uint32))
    assert fp.decode_sum(total, 300)[0] == pytest.approx(600.0, abs=300 * fp.resolution)
    mixed = np.asarray(np.sum(np.stack(encoded), axis=0, dtype=np.uint32))
    assert fp.decode_sum(mixed, 300)[0] == pytest.approx(0.0, abs=300 * fp.resolution)
    assert fp.scale * 2.0 * 300 + 300 <= 2**31 - 1


def test_fixed_point_refuses_unclipped_or_non_finite_input() -> None:
    fp = FixedPoint(clip_norm=1.0, max_clients=10)
    with pytest.raises(SecAggError, match="clip first"):
        fp.encode(np.array([1.0, 1.0]))
    with pytest.raises(SecAggError, match="non-finite"):
        fp.encode(np.array([np.nan]))
    with pytest.raises(SecAggError, match="max_clients"):
        fp.decode_sum(np.zeros(2, dtype=np.uint32), 11)


# --------------------------------------------------------------------------- uniformity


def test_a_masked_upload_is_indistinguishable_from_uniform() -> None:
    cfg = _config()
    server = SecAggServer(cfg, 20_000, round_id=b"r" * 16)
    clients = {f"d{i}": SecAggClient(f"d{i}") for i in range(8)}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    setups = server.close_keys()
    for name, c in clients.items():
        server.receive_shares(c.share_keys(setups[name]))
    routed = server.close_shares()
    # A highly structured input: all zeros but one coordinate.
    x = np.zeros(20_000)
    x[0] = 0.5
    masked = clients["d0"].masked_input(routed["d0"], x).vector
    plain = cfg.fixed_point.encode(x + np.linspace(-0.001, 0.001, 20_000))

    def p_values(values: np.ndarray) -> tuple[float, float]:
        counts = np.bincount((values >> np.uint32(24)).astype(np.int64), minlength=256)
        chi2 = stats.chisquare(counts).pvalue
        ks = stats.kstest(values.astype(np.float64) / 2.0**32, "uniform").pvalue
        return float(chi2), float(ks)

    chi2, ks = p_values(masked)
    assert chi2 > 1e-4 and ks > 1e-4
    # The same tests do reject an unmasked encoding: they can fail.
    chi2_plain, ks_plain = p_values(plain)
    assert chi2_plain < 1e-6 and ks_plain < 1e-6


# --------------------------------------------------------------------------- dropouts


def test_dropouts_up_to_the_threshold_are_recovered() -> None:
    # Degree 8, threshold 5: every device can lose 3 of its neighbours and
    # still have its secrets rebuilt. Three devices that were in the graph
    # do not answer the unmask request (names[1], [5], [9]).
    cfg = _config(degree=8, threshold=5)
    inputs = _inputs(14, seed=1)
    names = sorted(inputs)
    drops = Dropouts(
        before_keys=frozenset({names[0]}),
        after_keys=frozenset({names[1]}),
        after_shares=frozenset({names[5]}),  # its masks are removed with its rebuilt key
        after_input=frozenset({names[9]}),  # its input counts; it just does not unmask
    )
    result, _, server = run_local_round(cfg, inputs, dropouts=drops)
    counted = set(names) - {names[0], names[1], names[5]}
    expected = np.sum([inputs[n] for n in counted], axis=0)
    assert set(result.survivors) == counted
    assert result.dropped == (names[5],)
    assert np.abs(result.total - expected).max() <= len(counted) * cfg.fixed_point.resolution
    _never_both(server)


def _never_both(server: SecAggServer) -> None:
    for device, (b, sk) in server.revealed().items():
        assert b == 0 or sk == 0, f"server holds both kinds of shares of {device}"


def test_beyond_the_threshold_the_round_is_abandoned_without_revealing_anything() -> None:
    # Complete graph on 5 devices: each has 4 neighbours, threshold 3. Two
    # survivors vanish before unmasking: every survivor's seed has only 2
    # shares left.
    cfg = _config(degree=4, threshold=3, min_clients=3)
    inputs = _inputs(5, seed=2)
    names = sorted(inputs)
    drops = Dropouts(after_input=frozenset(names[:2]))
    with pytest.raises(SecAggAbandoned, match="threshold is 3"):
        run_local_round(cfg, inputs, dropouts=drops)
    server = _last_server(cfg, inputs, drops)
    assert server.state is ServerState.ABANDONED
    _never_both(server)
    revealed = server.revealed()
    # Every device sent its input, so no mask key was ever asked for: each
    # masked vector keeps its pairwise masks, whatever self-mask seeds the
    # server could rebuild, and the sum is never formed.
    assert all(sk == 0 for _, sk in revealed.values())
    assert any(b < cfg.threshold for b, _ in revealed.values())


def _last_server(cfg: SecAggConfig, inputs: dict[str, np.ndarray], drops: Dropouts) -> SecAggServer:
    """Replays a round that abandons at finalize, keeping the server."""
    captured: list[SecAggServer] = []
    original = SecAggServer.finalize

    def spy(self: SecAggServer) -> object:
        captured.append(self)
        return original(self)

    mp = pytest.MonkeyPatch()
    mp.setattr(SecAggServer, "finalize", spy)
    try:
        with pytest.raises(SecAggAbandoned):
            run_local_round(cfg, inputs, dropouts=drops)
    finally:
        mp.undo()
    return captured[0]


def test_too_few_inputs_abandon_before_any_unmask_request() -> None:
    cfg = _config(degree=4, threshold=3, min_clients=4)
    inputs = _inputs(5, seed=3)
    names = sorted(inputs)
    server = SecAggServer(cfg, D)
    clients = {n: SecAggClient(n) for n in names}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    setups = server.close_keys()
    for n, c in clients.items():
        server.receive_shares(c.share_keys(setups[n]))
    routed = server.close_shares()
    for n in names[:3]:
        server.receive_masked_input(clients[n].masked_input(routed[n], inputs[n]))
    with pytest.raises(SecAggAbandoned, match="3 masked inputs"):
        server.close_inputs()
    assert all(v == (0, 0) for v in server.revealed().values())
    with pytest.raises(SecAggError, match="abandoned"):
        server.finalize()


def test_a_disconnected_survivor_graph_is_abandoned() -> None:
    # A ring (degree 2) of 8: two non-adjacent dropouts split it in two, and
    # each half's sum would be revealed separately.
    cfg = _config(degree=2, threshold=2, min_clients=2)
    inputs = _inputs(8, seed=4)
    graph = harary_graph(sorted(inputs), 2, b"g" * 16)
    first = sorted(inputs)[0]
    # Walk the ring from `first` and drop positions 0 and 4.
    ring = [first]
    while len(ring) < 8:
        ring.append(next(v for v in graph[ring[-1]] if v not in ring))
    drops = Dropouts(after_shares=frozenset({ring[0], ring[4]}))
    with pytest.raises(SecAggAbandoned, match="not connected"):
        run_local_round(cfg, inputs, dropouts=drops, round_id=b"g" * 16)


def test_harary_graph_is_k_regular_symmetric_and_complete_when_small() -> None:
    names = [f"n{i}" for i in range(30)]
    graph = harary_graph(names, 6, b"x" * 16)
    assert all(len(v) == 6 for v in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    small = harary_graph(names[:5], 6, b"x" * 16)
    assert all(len(v) == 4 for v in small.values())


# --------------------------------------------------------------------------- lies


def test_a_masked_vector_of_the_wrong_length_is_detected_and_excluded() -> None:
    cfg = _config()
    inputs = _inputs(10, seed=5)
    liar = sorted(inputs)[3]

    class ShortClient(SecAggClient):
        def masked_input(self, shares: SharesFor, vector: np.ndarray) -> MaskedInput:
            real = super().masked_input(shares, vector)
            return MaskedInput(self.device, real.vector[:-1])

    result, _, server = run_local_round(cfg, inputs, clients={liar: ShortClient(liar)})
    assert [v.device for v in server.violations] == [liar]
    assert result.dropped == (liar,)
    expected = np.sum([v for k, v in inputs.items() if k != liar], axis=0)
    assert np.abs(result.total - expected).max() <= 10 * cfg.fixed_point.resolution


def test_inconsistent_shares_are_caught_by_the_commitment() -> None:
    cfg = _config(degree=4, threshold=3)
    inputs = _inputs(8, seed=6)
    liar = sorted(inputs)[2]

    class GarbageShares(SecAggClient):
        """Deals its self-mask seed from two different polynomials: half its
        neighbours get shares of the committed seed, half of another one."""

        def share_keys(self, setup: RoundSetup) -> ShareKeys:
            real_split = shamir.split
            calls = []

            def two_faced(secret: bytes, threshold: int, xs: list[int]) -> list[shamir.Share]:
                calls.append(secret)
                good = real_split(secret, threshold, xs)
                if len(calls) > 1:  # the second call shares the mask key: honest
                    return good
                bad = real_split(bytes(32), threshold, xs)
                half = len(xs) // 2
                return good[:half] + bad[half:]

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(shamir, "split", two_faced)
                return super().share_keys(setup)

    with pytest.raises(SecAggAbandoned, match=f"shares of {liar}'s secret do not match"):
        run_local_round(cfg, inputs, clients={liar: GarbageShares(liar)})


def test_one_wrong_share_is_outvoted_and_reported() -> None:
    cfg = _config(degree=6, threshold=4)
    inputs = _inputs(10, seed=7)
    liar = sorted(inputs)[4]

    class BadUnmask(SecAggClient):
        def unmask(self, request: UnmaskRequest) -> object:  # type: ignore[override]
            response = super().unmask(request)
            shares = {u: (int.from_bytes(y, "big") + 1).to_bytes(66, "big")
                      for u, y in response.self_mask_shares.items()}
            return dataclasses.replace(response, self_mask_shares=shares)

    result, _, _ = run_local_round(cfg, inputs, clients={liar: BadUnmask(liar)})
    expected = np.sum(list(inputs.values()), axis=0)
    assert np.abs(result.total - expected).max() <= 10 * cfg.fixed_point.resolution
    assert result.inconsistent and all(holder == liar for _, holder in result.inconsistent)


def test_a_client_refuses_to_reveal_both_shares_of_a_device_or_to_answer_twice() -> None:
    cfg = _config(degree=4, threshold=3)
    inputs = _inputs(6, seed=8)
    server = SecAggServer(cfg, D)
    clients = {n: SecAggClient(n) for n in inputs}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    setups = server.close_keys()
    for n, c in clients.items():
        server.receive_shares(c.share_keys(setups[n]))
    routed = server.close_shares()
    for n, c in clients.items():
        server.receive_masked_input(c.masked_input(routed[n], inputs[n]))
    requests = server.close_inputs()
    name = sorted(clients)[0]
    honest = requests[name]
    greedy = UnmaskRequest(name, honest.survivors, honest.survivors[:1], honest.survivor_count)
    with pytest.raises(ProtocolViolation, match="both shares"):
        clients[name].unmask(greedy)
    assert clients[name].state is ClientState.ABORTED
    other = sorted(clients)[1]
    clients[other].unmask(requests[other])
    with pytest.raises(ProtocolViolation, match="cannot unmask in state done"):
        clients[other].unmask(requests[other])
    third = sorted(clients)[2]
    tiny = dataclasses.replace(requests[third], survivor_count=1)
    with pytest.raises(ProtocolViolation, match="refusing to unmask"):
        clients[third].unmask(tiny)


def test_colluding_neighbours_below_threshold_cannot_rebuild_a_seed() -> None:
    """A lying device learns at most its neighbours' shares; t − 1 of them
    pooled do not give anyone's self-mask seed (so nobody's input)."""
    cfg = _config(degree=6, threshold=4)
    inputs = _inputs(10, seed=9)
    server = SecAggServer(cfg, D)
    clients = {n: SecAggClient(n) for n in inputs}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    setups = server.close_keys()
    for n, c in clients.items():
        server.receive_shares(c.share_keys(setups[n]))
    routed = server.close_shares()
    for n, c in clients.items():
        c.masked_input(routed[n], inputs[n])
    victim = sorted(clients)[0]
    colluders = list(server.graph[victim])[: cfg.threshold - 1]
    pooled = [clients[c]._held[victim][0] for c in colluders]
    guess = shamir.interpolate(pooled)
    assert guess != int.from_bytes(clients[victim]._b, "big")
    # …while one more share gives it: the threshold is exactly t.
    pooled.append(clients[list(server.graph[victim])[cfg.threshold - 1]]._held[victim][0])
    assert shamir.combine(pooled, 32) == clients[victim]._b


def test_shares_from_a_non_neighbour_or_tampered_are_refused_by_the_client() -> None:
    cfg = _config(degree=4, threshold=3)
    server = SecAggServer(cfg, D)
    clients = {f"d{i}": SecAggClient(f"d{i}") for i in range(7)}
    for c in clients.values():
        server.receive_keys(c.advertise_keys())
    setups = server.close_keys()
    for n, c in clients.items():
        server.receive_shares(c.share_keys(setups[n]))
    routed = server.close_shares()
    target = "d0"
    stranger = next(n for n in clients if n != target and n not in server.graph[target])
    forged = SharesFor(target, {**routed[target].ciphertexts, stranger: b"\x00" * 60})
    with pytest.raises(ProtocolViolation, match="not a neighbour") as info:
        clients[target].masked_input(forged, np.zeros(D))
    assert info.value.device == stranger
    victim = "d1"
    sender = server.graph[victim][0]
    blob = bytearray(routed[victim].ciphertexts[sender])
    blob[-1] ^= 1
    tampered = SharesFor(victim, {**routed[victim].ciphertexts, sender: bytes(blob)})
    with pytest.raises(ProtocolViolation, match="do not decrypt"):
        clients[victim].masked_input(tampered, np.zeros(D))


def test_server_refuses_protocol_violations_with_the_culprit_named() -> None:
    cfg = _config(degree=4, threshold=3)
    server = SecAggServer(cfg, D)
    a, b = SecAggClient("a"), SecAggClient("b")
    ad = a.advertise_keys()
    server.receive_keys(ad)
    with pytest.raises(ProtocolViolation, match="twice") as info:
        server.receive_keys(ad)
    assert info.value.device == "a"
    with pytest.raises(ProtocolViolation, match="32 bytes"):
        server.receive_keys(KeyAdvert("c", b"x", b"y"))
    with pytest.raises(ProtocolViolation, match="must differ"):
        server.receive_keys(KeyAdvert("c", b"k" * 32, b"k" * 32))
    with pytest.raises(SecAggError, match="cannot receive shares"):
        server.receive_shares(ShareKeys("a", b"", {}))
    server.receive_keys(b.advertise_keys())
    with pytest.raises(SecAggAbandoned, match="min_clients"):
        server.close_keys()


def test_out_of_order_client_calls_are_refused() -> None:
    client = SecAggClient("a")
    with pytest.raises(ProtocolViolation, match="cannot unmask in state new"):
        client.unmask(UnmaskRequest("a", (), (), 5))


# --------------------------------------------------------------------------- wire format


def test_messages_round_trip_through_bytes() -> None:
    cfg = _config(degree=4, threshold=3)
    inputs = _inputs(6, seed=10)
    # run_local_round encodes and decodes every message; equality of the
    # result with the sum proves the round trip.
    result, stats_, _ = run_local_round(cfg, inputs)
    assert np.abs(result.total - np.sum(list(inputs.values()), axis=0)).max() < 1e-5
    assert all(v > 0 for v in stats_.bytes_down.values())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:5],
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:9] + b"[" + b[10:],
        lambda b: b[:-1],
        lambda b: b + b"\x00\x00\x00\x00",
        lambda b: b[:4] + b"\x09" + b[5:],
    ],
)
def test_malformed_messages_raise_protocol_violation_only(mutate: object) -> None:
    msg = MaskedInput("dev", np.arange(10, dtype=np.uint32))
    wire = encode_message(msg)
    with pytest.raises(ProtocolViolation):
        decode_message(mutate(wire))  # type: ignore[operator]


def test_decode_bounds_the_vector_length_and_type() -> None:
    wire = encode_message(MaskedInput("dev", np.zeros(100, dtype=np.uint32)))
    with pytest.raises(ProtocolViolation, match="100 elements"):
        decode_message(wire, max_vector_length=10)
    floats = encode_message(MaskedInput("dev", np.zeros(4, dtype=np.float32)))
    with pytest.raises(ProtocolViolation, match="not a ring element"):
        decode_message(floats)
    advert = encode_message(KeyAdvert("dev", b"a" * 32, b"b" * 32))
    broken = advert.replace(b'"c_pk":"Y', b'"c_pk":"!')  # same length, not base64
    with pytest.raises(ProtocolViolation, match="base64"):
        decode_message(broken)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"degree": 5}, "even number"),
        ({"degree": 0}, "even number"),
        ({"threshold": 3}, "more than half"),
        ({"threshold": 7}, "more than half"),
        ({"min_clients": 1}, "min_clients"),
        ({"max_clients": 2}, "below min_clients"),
        ({"modulus_bits": 16}, "32 or 64"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"degree": 6.0}, "expected an integer"),
        ({"clip_norm": 1e7, "max_clients": 1000}, "use modulus_bits 64"),
    ],
)
def test_config_refusals(kw: dict[str, object], message: str) -> None:
    with pytest.raises(PrivacyConfigError) as info:
        _config(**kw)
    assert message in str(info.value)


def test_config_from_dict() -> None:
    cfg = SecAggConfig.from_dict({"degree": 8, "threshold": 5, "clip_norm": 1, "max_clients": 100})
    assert SecAggConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PrivacyConfigError, match="unknown key"):
        SecAggConfig.from_dict({**cfg.to_dict(), "k": 3})
    with pytest.raises(PrivacyConfigError, match="missing key"):
        SecAggConfig.from_dict({"degree": 8})
    with pytest.raises(PrivacyConfigError, match="expected a number"):
        SecAggConfig.from_dict({**cfg.to_dict(), "clip_norm": "1"})


def test_async_mode_and_sparse_codecs_are_refused() -> None:
    with pytest.raises(PrivacyConfigError, match="synchronous rounds"):
        check_mode("async")
    check_mode("sync")
    with pytest.raises(PrivacyConfigError, match="density"):
        check_codec_for_secagg({"density": 0.01, "bits": 8})
    check_codec_for_secagg({"density": 1.0})


def test_flatten_and_unflatten_follow_the_layout() -> None:
    layout = [("w", (3, 2)), ("b", (2,))]
    update = {"b": np.array([1.0, 2.0]), "w": np.arange(6.0).reshape(3, 2)}
    flat = flatten(update, layout)
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 1, 2]
    back = unflatten(flat, layout)
    assert np.array_equal(back["w"], update["w"])
    with pytest.raises(SecAggError, match="missing tensor"):
        flatten({"w": update["w"]}, layout)
    with pytest.raises(SecAggError, match="shape"):
        flatten({**update, "b": np.zeros(3)}, layout)
    with pytest.raises(SecAggError, match="layout needs"):
        unflatten(np.zeros(9), layout)


# --------------------------------------------------------------------------- property


def test_any_dropout_pattern_gives_the_exact_sum_or_an_abandoned_round() -> None:
    """40 random dropout patterns (who drops, at which step): each gives
    either the survivors' exact sum or SecAggAbandoned — never both kinds of
    share of one device — and both outcomes occur."""
    rng = np.random.default_rng(11)
    stages = ("before_keys", "after_keys", "after_shares", "after_input")
    outcomes = {"sum": 0, "abandoned": 0}
    servers: list[SecAggServer] = []
    original = SecAggServer.__init__

    def spy(self: SecAggServer, *args: object) -> None:
        original(self, *args)  # type: ignore[arg-type]
        servers.append(self)

    for _ in range(40):
        n = int(rng.integers(4, 11))
        degree = int(rng.choice([2, 4, 6]))
        cfg = _config(degree=degree, threshold=degree // 2 + 1, min_clients=3)
        inputs = _inputs(n, seed=int(rng.integers(1 << 30)), length=40)
        fate = {
            name: ("stay" if rng.random() < 0.8 else str(rng.choice(stages)))
            for name in sorted(inputs)
        }
        drops = Dropouts(**{s: frozenset(k for k, v in fate.items() if v == s) for s in stages})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SecAggServer, "__init__", spy)
            try:
                result = run_local_round(cfg, inputs, dropouts=drops)[0]
            except SecAggAbandoned:
                result = None
        _never_both(servers[-1])
        if result is None:
            outcomes["abandoned"] += 1
            continue
        outcomes["sum"] += 1
        counted = {k for k, v in fate.items() if v in ("stay", "after_input")}
        assert set(result.survivors) == counted
        expected = np.sum([inputs[k] for k in counted], axis=0)
        assert np.abs(result.total - expected).max() <= n * cfg.fixed_point.resolution
    assert outcomes["sum"] >= 5 and outcomes["abandoned"] >= 5, outcomes
