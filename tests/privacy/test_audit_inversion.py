"""Gradient inversion: the quality measures, the protections as the server
sees them, and both attacks against updates the real TFLite mlp produced —
an undefended batch-1 update gives its example back, a heavily noised one
does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from privacy.audit_images import identified, match, psnr, quality, ssim
from privacy.audit_inversion import (
    Observation,
    Protection,
    Setting,
    analytic_attack,
    device_update,
    first_dense_layer,
    observe,
    parse_protection,
    run_inversion,
)
from privacy.errors import AuditError

# --------------------------------------------------------------------------- measures


def test_psnr_and_ssim() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(64)
    assert psnr(a, a) == 60.0  # capped
    assert psnr(a + 0.1, a) == pytest.approx(20.0)
    assert ssim(a, a, (8, 8)) == pytest.approx(1.0)
    noisy = [ssim(np.clip(a + rng.normal(0, s, 64), 0, 1), a, (8, 8)) for s in (0.05, 0.2, 0.5)]
    assert noisy[0] > noisy[1] > noisy[2]
    assert ssim(a, 1 - a, (8, 8)) < 0


def test_match_and_identification() -> None:
    rng = np.random.default_rng(1)
    gallery = rng.random((50, 64))
    originals = gallery[[3, 7, 9]]
    recon = originals[[2, 0, 1]] + rng.normal(0, 0.01, (3, 64))
    assert match(recon, originals).tolist() == [1, 2, 0]
    assert identified(recon[[1, 2, 0]], originals, gallery).all()
    assert not identified(gallery[[4, 5, 6]], originals, gallery).any()
    q = quality([(recon[[1, 2, 0]], originals)], (8, 8), gallery)
    assert q.identified == 1.0 and q.psnr_mean > 35 and q.examples == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dense", Protection("dense")),
        ("topk:0.1", Protection("codec", density=0.1, bits=8)),
        ("topk:0.01:4", Protection("codec", density=0.01, bits=4)),
        ("ldp:0.01", Protection("local_dp", noise_multiplier=0.01)),
        ("LDP:1:0.5", Protection("local_dp", noise_multiplier=1.0, clip_norm=0.5)),
        ("secsum:10", Protection("secure_sum", devices=10)),
    ],
)
def test_parse_protection(text: str, expected: Protection) -> None:
    assert parse_protection(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topk:2", "0 < D ≤ 1"),
        ("topk:0.1:9", "BITS ≤ 8"),
        ("ldp:0", "Z > 0"),
        ("secsum:2", "at least 3 devices"),
        ("gzip", "expected dense, topk"),
        ("ldp:abc", "expected dense, topk"),
    ],
)
def test_parse_protection_errors(text: str, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        parse_protection(text)


# --------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def mlp(exported_mlp: Path) -> tuple[object, dict[str, np.ndarray], object]:
    from privacy.audit_setup import digits, open_model

    model = open_model(exported_mlp)
    return model, model.get_weights(), digits(0)


def _update(mlp: tuple[object, dict[str, np.ndarray], object], idx: list[int],
            epochs: int) -> dict[str, np.ndarray]:
    model, init, data = mlp
    return device_update(model, init, data.x[idx], data.y[idx], epochs=epochs,  # type: ignore[arg-type, attr-defined]
                         lr=0.05)


@pytest.mark.parametrize("epochs", [1, 5])
def test_an_undefended_batch_1_update_gives_its_example_back(
    mlp: tuple[object, dict[str, np.ndarray], object], epochs: int,
) -> None:
    model, _, data = mlp
    layer = first_dense_layer(model.manifest)  # type: ignore[attr-defined]
    assert layer == ("dense_0_kernel", "dense_0_bias")
    obs = observe(Protection("dense"), [_update(mlp, [17], epochs)], np.random.default_rng(0),
                  seed=0)
    (rec,) = analytic_attack(obs, layer, 1)
    assert psnr(rec, data.x[17]) > 50  # type: ignore[attr-defined]
    assert identified(rec[None], data.x[17:18], data.x).all()  # type: ignore[attr-defined]


def test_a_heavily_noised_update_gives_nothing_back(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    model, _, data = mlp
    layer = first_dense_layer(model.manifest)  # type: ignore[attr-defined]
    assert layer is not None
    update = _update(mlp, [17], 1)
    obs = observe(Protection("local_dp", noise_multiplier=1.0, clip_norm=1.0), [update],
                  np.random.default_rng(0), seed=0)
    assert obs.noise_std == 1.0 and obs.epsilon is not None and obs.epsilon < 20
    (rec,) = analytic_attack(obs, layer, 1)
    assert psnr(rec, data.x[17]) < 15  # type: ignore[attr-defined]
    assert not identified(rec[None], data.x[17:18], data.x).any()  # type: ignore[attr-defined]


def test_the_codec_view_and_what_it_leaves(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    model, _, data = mlp
    layer = first_dense_layer(model.manifest)  # type: ignore[attr-defined]
    assert layer is not None
    update = _update(mlp, [17], 1)
    scores = {}
    for density in (0.1, 0.01):
        obs = observe(Protection("codec", density=density, bits=8), [update],
                      np.random.default_rng(0), seed=0)
        assert obs.mask is not None
        sent = sum(int(m.sum()) for m in obs.mask.values())
        assert sent <= density * 4810 + 1
        scores[density] = psnr(analytic_attack(obs, layer, 1)[0], data.x[17])  # type: ignore[attr-defined]
    assert scores[0.1] > 20 > scores[0.01]


def test_the_secure_sum_is_the_sum_and_mixes_the_devices(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    updates = [_update(mlp, [i], 1) for i in (3, 4, 5, 6)]
    obs = observe(Protection("secure_sum", devices=4), updates, np.random.default_rng(0),
                  seed=0)
    assert obs.devices == 4 and obs.mask is None
    for name, total in obs.update.items():
        np.testing.assert_allclose(total, sum(u[name] for u in updates), atol=1e-6)


def test_run_inversion_scores_each_setting(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    model, init, data = mlp
    settings = [Setting(1, 1, Protection("dense")),
                Setting(1, 1, Protection("local_dp", noise_multiplier=1.0)),
                Setting(4, 1, Protection("dense"))]
    result = run_inversion(model, init, data, settings, trials=2, lr=0.05, seed=0,  # type: ignore[arg-type]
                           attacks=["analytic"])
    rows = {(r.batch_size, r.protection): r for r in result.rows}
    assert rows[(1, "dense float32")].psnr_mean == 60.0
    assert rows[(1, "dense float32")].identified == 1.0
    assert rows[(1, "local DP z=1")].identified == 0.0
    assert rows[(1, "local DP z=1")].psnr_mean < result.prior_psnr + 3
    assert rows[(4, "dense float32")].examples == 8
    assert result.prior_identified == 0.0
    assert set(result.examples) == {(1, 1, "dense float32"), (1, 1, "local DP z=1"),
                                    (4, 1, "dense float32")}


def test_run_inversion_input_errors(mlp: tuple[object, dict[str, np.ndarray], object]) -> None:
    model, init, data = mlp
    with pytest.raises(AuditError, match="unknown attack"):
        run_inversion(model, init, data, [], trials=1, lr=0.05, seed=0, attacks=["magic"])  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="not given"):
        run_inversion(model, init, data, [], trials=1, lr=0.05, seed=0, attacks=["gradient"])  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="trials"):
        run_inversion(model, init, data, [], trials=0, lr=0.05, seed=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- TensorFlow attack


def test_gradient_matching_inverts_batch_1_and_infers_labels(
    mlp: tuple[object, dict[str, np.ndarray], object],
) -> None:
    from privacy.audit_gradient import GradientConfig, make_attack

    model, init, data = mlp
    attack = make_attack(model, init, lr=0.05, image_shape=(8, 8),  # type: ignore[arg-type]
                         config=GradientConfig(iterations=300))
    obs = observe(Protection("dense"), [_update(mlp, [17], 1)], np.random.default_rng(0), seed=0)
    (rec,), labels = attack(obs, 1, Setting(1, 1, Protection("dense")))
    assert labels.tolist() == [int(data.y[17])]  # type: ignore[attr-defined]
    assert psnr(rec, data.x[17]) > 22  # type: ignore[attr-defined]
    # Eight examples: the label counts come out of the head's bias update.
    idx = list(range(40, 48))
    obs8 = observe(Protection("dense"), [_update(mlp, idx, 1)], np.random.default_rng(0),
                   seed=0)
    _, labels8 = attack(obs8, 8, Setting(8, 1, Protection("dense")))
    assert sorted(labels8.tolist()) == sorted(data.y[idx].tolist())  # type: ignore[attr-defined]


def test_gradient_matching_models_the_cnn_and_refuses_what_it_cannot(tmp_path: Path) -> None:
    from privacy.audit_gradient import GradientConfig, make_attack
    from privacy.audit_setup import export_reference, open_model

    cnn = open_model(export_reference("cnn", tmp_path / "cnn", input_shape=(8, 8, 1),
                                      classes=10))
    assert first_dense_layer(cnn.manifest) is None  # the analytic attack does not apply
    make_attack(cnn, cnn.get_weights(), lr=0.05, image_shape=(8, 8),
                config=GradientConfig(iterations=1))  # the simulation check passes
    # With dropout the device's step is not the one the attacker simulates.
    from model_export import export_reference as export

    export("mlp", tmp_path / "drop", input_shape=(64,), classes=10, dropout=0.5, verify=False)
    dropped = open_model(tmp_path / "drop")
    with pytest.raises(AuditError, match="does not reproduce"):
        make_attack(dropped, dropped.get_weights(), lr=0.05, image_shape=(8, 8),
                    config=GradientConfig(iterations=1))


def test_observation_is_what_the_attack_reads() -> None:
    # A hand-made rank-one update: the analytic attack is exact on it.
    x = np.linspace(0, 1, 16)
    b = np.array([0.5, -0.2, 0.0, 0.1])
    obs = Observation({"k": np.outer(x, b).astype(np.float32), "b": b.astype(np.float32)},
                      None, 0.0, 1, 0)
    (rec,) = analytic_attack(obs, ("k", "b"), 1)
    np.testing.assert_allclose(rec, x, atol=1e-6)
