"""DPConfig validation, the Gaussian mechanism, clipping, local DP, adaptive
clipping and the codec compatibility check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.dp import (
    AdaptiveClipper,
    AdaptiveClipping,
    DPConfig,
    DPMode,
    add_local_noise,
    add_noise,
    check_codec_compatible,
    clip_update,
    global_norm,
    noise_std,
)
from privacy.errors import PrivacyConfigError

# --------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"noise_multiplier": 1.0}, "noise without clipping"),
        ({"noise_multiplier": 1.0, "clip_norm": None}, "noise without clipping"),
        ({"noise_multiplier": -0.1, "clip_norm": 1.0}, "dp.noise_multiplier"),
        ({"noise_multiplier": float("nan"), "clip_norm": 1.0}, "dp.noise_multiplier"),
        ({"noise_multiplier": 1.0, "clip_norm": 0.0}, "dp.clip_norm"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 0}, "dp.delta"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1.5}, "dp.delta"),
        ({"noise_multiplier": "1", "clip_norm": 1.0}, "expected a number"),
        ({"noise_multiplier": True, "clip_norm": 1.0}, "expected a number"),
        ({"clip_norm": 1.0}, "dp.noise_multiplier: missing"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "sigma": 2}, "unknown key(s) ['sigma']"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "mode": "global"}, "dp.mode"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "participation": "x"}, "dp.participation"),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "accounting": "moments"}, "dp.accounting"),
        ({"noise_multiplier": 0.0, "clip_norm": 1.0, "mode": "local"}, "adds no noise"),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "mode": "local", "adaptive": {}},
            "not trusted",
        ),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": {"count_noise_std": 0}},
            "without noise",
        ),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": {"count_noise_std": 0.4}},
            "must exceed noise_multiplier / 2",
        ),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": {"target_quantile": 1.0}},
            "dp.adaptive.target_quantile",
        ),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": {"learning_rate": 0}},
            "dp.adaptive.learning_rate",
        ),
        (
            {"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": {"eta": 0.1}},
            "dp.adaptive: unknown key(s) ['eta']",
        ),
        ({"noise_multiplier": 1.0, "clip_norm": 1.0, "adaptive": [1]}, "expected a mapping"),
        (
            {"noise_multiplier": 0.0, "clip_norm": None, "adaptive": {}},
            "needs an initial clip_norm",
        ),
        (
            {"noise_multiplier": 1.0, "clip_norm": 50.0, "adaptive": {"max_clip_norm": 10}},
            "outside dp.adaptive",
        ),
    ],
)
def test_config_refusals_say_why(data: dict[str, object], message: str) -> None:
    with pytest.raises(PrivacyConfigError) as info:
        DPConfig.from_dict(data)
    assert message in str(info.value)


def test_config_not_a_mapping() -> None:
    with pytest.raises(PrivacyConfigError, match="dp: expected a mapping"):
        DPConfig.from_dict([1, 2])


def test_config_round_trips_through_dict() -> None:
    dp = DPConfig.from_dict(
        {
            "noise_multiplier": 1.1, "clip_norm": 0.5, "delta": 1e-6, "participation": "full",
            "accounting": "pld", "adaptive": {"target_quantile": 0.7, "count_noise_std": 3},
        }
    )
    assert DPConfig.from_dict(dp.to_dict()) == dp
    assert dp.adaptive is not None and dp.adaptive.target_quantile == 0.7


def test_enum_fields_accept_their_string_values() -> None:
    dp = DPConfig(1.0, 1.0, mode="local", participation="full")  # type: ignore[arg-type]
    assert dp.mode is DPMode.LOCAL
    with pytest.raises(PrivacyConfigError, match=r"dp\.accounting"):
        DPConfig(1.0, 1.0, accounting="moments")  # type: ignore[arg-type]


def test_clipping_only_is_allowed_but_not_enabled() -> None:
    dp = DPConfig(noise_multiplier=0.0, clip_norm=1.0)
    assert not dp.enabled
    assert noise_std(dp) == 0.0


def test_adaptive_splits_the_budget_as_andrew_et_al() -> None:
    dp = DPConfig(1.0, 1.0, adaptive=AdaptiveClipping(count_noise_std=5.0))
    # z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) = (1 − 1/100)^(−1/2)
    assert dp.update_noise_multiplier == pytest.approx((1 - 0.01) ** -0.5)
    assert dp.update_noise_multiplier > dp.noise_multiplier


# --------------------------------------------------------------------------- clipping


def test_clip_bounds_the_global_norm_and_reports_it() -> None:
    rng = np.random.default_rng(0)
    update: dict[str, np.ndarray] = {
        "w": rng.normal(size=(30, 7)).astype(np.float32), "b": rng.normal(size=7)
    }
    norm = global_norm(update)
    result = clip_update(update, norm / 3)
    assert result.clipped
    assert result.norm_before == pytest.approx(norm)
    assert global_norm(result.update) <= norm / 3
    assert global_norm(result.update) == pytest.approx(norm / 3, rel=1e-5)
    # Direction is kept.
    assert np.allclose(result.update["w"] / update["w"], result.factor, rtol=1e-5)


def test_clip_leaves_small_updates_alone() -> None:
    update = {"w": np.full(4, 0.1, dtype=np.float32)}
    result = clip_update(update, 10.0)
    assert not result.clipped and result.factor == 1.0
    assert np.array_equal(result.update["w"], update["w"])


def test_clip_refuses_non_finite() -> None:
    with pytest.raises(PrivacyConfigError, match="non-finite"):
        clip_update({"w": np.array([1.0, np.nan])}, 1.0)


# --------------------------------------------------------------------------- Gaussian mechanism


def test_noise_calibration_std_is_multiplier_times_clip() -> None:
    dp = DPConfig(noise_multiplier=0.8, clip_norm=2.5)
    total = {"a": np.zeros((200, 100)), "b": np.zeros(5000)}
    noised = add_noise(total, dp, np.random.default_rng(1))
    sample = np.concatenate([noised["a"].ravel(), noised["b"].ravel()])
    # 25k draws: the std estimate is within ~1 % (3 sigma ≈ 1.3 %).
    assert sample.std() == pytest.approx(0.8 * 2.5, rel=0.02)
    assert abs(sample.mean()) < 0.05
    assert np.all(total["a"] == 0), "the input must not be modified"


def test_noise_scales_with_max_weight_and_adaptive_clip() -> None:
    dp = DPConfig(noise_multiplier=1.0, clip_norm=1.0)
    noised = add_noise({"a": np.zeros(20000)}, dp, np.random.default_rng(2),
                       clip_norm=0.5, max_weight=0.5)
    assert noised["a"].std() == pytest.approx(0.25, rel=0.03)


def test_add_noise_refused_in_local_mode() -> None:
    dp = DPConfig(noise_multiplier=1.0, clip_norm=1.0, mode=DPMode.LOCAL)
    with pytest.raises(PrivacyConfigError, match="local mode"):
        add_noise({"a": np.zeros(3)}, dp, np.random.default_rng(0))


def test_local_noise_clips_first_then_adds_calibrated_noise() -> None:
    dp = DPConfig(noise_multiplier=0.5, clip_norm=1.0, mode=DPMode.LOCAL)
    update = {"w": np.full(10000, 1.0, dtype=np.float32)}  # norm 100
    out = add_local_noise(update, dp, np.random.default_rng(3))
    assert out.clipped and out.norm_before == pytest.approx(100.0)
    assert out.noise_std == 0.5
    # The clipped signal is 0.01 per coordinate; the residual is the noise.
    residual = out.update["w"] - 0.01
    assert residual.std() == pytest.approx(0.5, rel=0.03)
    assert residual.mean() == pytest.approx(0.0, abs=0.02)


def test_local_noise_refused_in_central_mode() -> None:
    with pytest.raises(PrivacyConfigError, match="needs mode 'local'"):
        add_local_noise({"w": np.zeros(2)}, DPConfig(1.0, 1.0), np.random.default_rng(0))


# --------------------------------------------------------------------------- adaptive clipping


def test_adaptive_clip_tracks_the_target_quantile() -> None:
    """Norms ~ |N(0, 1)|·3 + 1: the bound must settle near their 0.7-quantile."""
    dp = DPConfig(
        noise_multiplier=1.0, clip_norm=0.1,
        adaptive=AdaptiveClipping(target_quantile=0.7, learning_rate=0.2, count_noise_std=2.0),
    )
    clipper = AdaptiveClipper(dp)
    rng = np.random.default_rng(4)
    k = 100
    history = []
    for _ in range(300):
        norms = np.abs(rng.normal(size=k)) * 3 + 1
        step = clipper.update(int(np.sum(norms <= clipper.clip_norm)), k, rng)
        history.append(step.clip_after)
    target = np.quantile(np.abs(rng.normal(size=200_000)) * 3 + 1, 0.7)
    settled = float(np.mean(history[-100:]))
    assert settled == pytest.approx(target, rel=0.1)
    assert history[0] > 0.1, "the bound must grow when every update is clipped"


def test_adaptive_clipper_moves_down_when_nothing_is_clipped() -> None:
    dp = DPConfig(1.0, 5.0, adaptive=AdaptiveClipping(count_noise_std=1.0))
    clipper = AdaptiveClipper(dp)
    step = clipper.update(10, 10, np.random.default_rng(0))
    assert step.clip_after < step.clip_before == 5.0


def test_adaptive_clipper_needs_configuration_and_valid_counts() -> None:
    with pytest.raises(PrivacyConfigError, match="not configured"):
        AdaptiveClipper(DPConfig(1.0, 1.0))
    clipper = AdaptiveClipper(DPConfig(1.0, 1.0, adaptive=AdaptiveClipping()))
    with pytest.raises(PrivacyConfigError, match="expected_updates"):
        clipper.update(3, 0, np.random.default_rng(0))


# --------------------------------------------------------------------------- codec checks

DP = DPConfig(noise_multiplier=1.0, clip_norm=1.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"density": 0.01, "bits": 8}, "codec.clip_norm: not set"),
        ({"clip_norm": None, "density": 0.01}, "codec.clip_norm: not set"),
        ({"clip_norm": 2.0}, "above dp.clip_norm"),
        ({"clip_norm": "1"}, "must be a number"),
        ({"clip_norm": 1.0, "stages": ["sparsify", "clip", "quantize"]}, "clips after"),
        ({"clip_norm": 1.0, "stages": ["quantize", "clip"]}, "clips after"),
        ({"clip_norm": 1.0, "stages": ["sparsify", "quantize"]}, "no 'clip' stage"),
        ({"clip_norm": 1.0, "sparsify": "randomk", "rescale": True}, "rescale"),
    ],
)
def test_codec_refusals_say_why(spec: dict[str, object], message: str) -> None:
    with pytest.raises(PrivacyConfigError) as info:
        check_codec_compatible(DP, spec)
    assert message in str(info.value)


def test_codec_accepted_when_it_clips_first_at_most_at_the_dp_bound() -> None:
    check_codec_compatible(DP, {"clip_norm": 1.0, "density": 1.0, "values": "float32"})
    check_codec_compatible(DP, {"clip_norm": 0.9, "density": 0.01, "bits": 8})
    check_codec_compatible(
        DP, {"clip_norm": 1.0, "stages": ["clip", "sparsify", "quantize", "compress"]}
    )


def test_codec_check_local_mode_accepts_anything_and_no_clip_no_dp() -> None:
    local = DPConfig(1.0, 1.0, mode=DPMode.LOCAL)
    check_codec_compatible(local, {"density": 0.01})
    check_codec_compatible(DPConfig(0.0, None), {"density": 0.01})


def test_codec_check_rejects_non_spec() -> None:
    with pytest.raises(PrivacyConfigError, match="expected a codec spec"):
        check_codec_compatible(DP, 42)


def test_codec_check_accepts_a_real_codec_spec_and_its_encoder_keeps_the_bound() -> None:
    """With the real codec: a compatible spec passes, and what its encoder
    sends (top-k, 4-bit, error feedback) never exceeds dp.clip_norm."""
    import quantization

    spec = quantization.CodecSpec.from_dict(
        {"clip_norm": 1.0, "density": 0.1, "bits": 4, "error_feedback": True}
    )
    check_codec_compatible(DP, spec)
    with pytest.raises(PrivacyConfigError, match="not set"):
        check_codec_compatible(DP, quantization.CodecSpec.from_dict({"density": 0.1, "bits": 4}))
    rng = np.random.default_rng(5)
    residual = None
    for _ in range(5):
        update = {"w": rng.normal(size=(40, 30)).astype(np.float32) * 3}
        seed = int(rng.integers(10**9))
        encoded = quantization.encode(update, spec, residual=residual, seed=seed)
        residual = encoded.residual
        decoded = quantization.decode(encoded.payload)
        assert global_norm(decoded) <= DP.clip_norm  # type: ignore[operator]


def test_noise_std_refuses_bad_weight() -> None:
    with pytest.raises(PrivacyConfigError, match="max_weight"):
        noise_std(DP, max_weight=math.inf)
