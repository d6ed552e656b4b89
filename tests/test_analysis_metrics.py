"""Attention-map metrics against hand-computed values on small matrices, and the power-law fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tsattn.analysis import metrics as M

FULL_UNIFORM = np.full((4, 4), 0.25)
IDENTITY = np.eye(4)
COLUMN = np.zeros((4, 4))
COLUMN[:, 0] = 1.0  # every query attends key 0
CAUSAL_UNIFORM = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]


def gini_mean_abs_difference(x) -> float:
    """Independent Gini: sum_ij |x_i - x_j| / (2 n^2 mean)."""
    x = np.asarray(x, dtype=float)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean()))


def test_uniform_attention_has_maximal_entropy_and_zero_gini():
    assert M.entropy(FULL_UNIFORM) == pytest.approx(math.log(4))
    assert M.entropy(FULL_UNIFORM, normalised=True) == pytest.approx(1.0)
    assert M.gini(FULL_UNIFORM) == pytest.approx(0.0, abs=1e-12)
    assert M.concentration(FULL_UNIFORM) == pytest.approx(0.25)  # top ceil(0.1 * 4) = 1 key
    assert M.vertical_strength(FULL_UNIFORM) == pytest.approx(0.0, abs=1e-12)
    assert M.horizontal_strength(FULL_UNIFORM) == pytest.approx(0.0, abs=1e-12)
    # |dt| <= 1: rows 0 and 3 have 2 such keys, rows 1 and 2 have 3
    assert M.diagonal_strength(FULL_UNIFORM, width=1) == pytest.approx((0.5 + 0.75 + 0.75 + 0.5) / 4)


def test_one_hot_attention_has_zero_entropy_and_maximal_gini():
    assert M.entropy(IDENTITY) == pytest.approx(0.0, abs=1e-12)
    assert M.entropy(IDENTITY, normalised=True) == pytest.approx(0.0, abs=1e-12)
    assert M.gini(IDENTITY) == pytest.approx(1 - 1 / 4)
    assert M.concentration(IDENTITY) == pytest.approx(1.0)
    assert M.horizontal_strength(IDENTITY) == pytest.approx(0.0, abs=1e-12)  # every row focuses alike


def test_pure_diagonal_pattern():
    assert M.diagonal_strength(IDENTITY, width=0) == pytest.approx(1.0)
    assert M.vertical_strength(IDENTITY) == pytest.approx(0.0, abs=1e-12)  # each key gets its uniform share
    shifted = np.eye(6, k=-1)  # every query attends the key just before it (lag 1)
    shifted[0, 0] = 1.0
    assert M.diagonal_strength(shifted, width=0) == pytest.approx(1 / 6)  # only row 0 attends itself
    assert M.diagonal_strength(shifted, width=1) == pytest.approx(1.0)
    assert M.lag_profile(shifted, max_lag=2).tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_vertical_stripe_pattern():
    # received mass relative to uniform: r = (4, 0, 0, 0) -> Gini 1 - 1/4
    assert M.vertical_strength(COLUMN) == pytest.approx(0.75)
    assert M.diagonal_strength(COLUMN, width=1) == pytest.approx(0.5)  # rows 0 and 1 reach key 0
    assert M.gini(COLUMN) == pytest.approx(0.75)


def test_horizontal_stripe_pattern():
    w = FULL_UNIFORM.copy()
    w[2] = [0.0, 0.0, 1.0, 0.0]  # one query focuses, the others spread: focus (0, 0, 1, 0)
    assert M.horizontal_strength(w) == pytest.approx(gini_mean_abs_difference([0, 0, 1, 0]))
    assert M.horizontal_strength(w) == pytest.approx(0.75)


def test_hand_computed_row():
    w = np.array([[0.5, 0.3, 0.2, 0.0]])
    h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert M.entropy(w) == pytest.approx(h)
    assert M.entropy(w, normalised=True) == pytest.approx(h / math.log(4))
    assert M.gini(w) == pytest.approx(gini_mean_abs_difference([0.5, 0.3, 0.2, 0.0]))
    assert M.gini(w) == pytest.approx(0.4)
    assert M.concentration(w) == pytest.approx(0.5)
    assert M.concentration(w, top_fraction=0.5) == pytest.approx(0.8)
    rng = np.random.default_rng(0)
    for _ in range(5):
        row = rng.dirichlet(np.ones(7))
        assert M.gini(row[None]) == pytest.approx(gini_mean_abs_difference(row))


def test_causal_supports():
    # row 0 (a single visible key) is left out; rows 1..3 are uniform over 2, 3, 4 keys
    assert M.entropy(CAUSAL_UNIFORM, causal=True) == pytest.approx(np.mean(np.log([2, 3, 4])))
    assert M.entropy(CAUSAL_UNIFORM, causal=True, normalised=True) == pytest.approx(1.0)
    assert M.gini(CAUSAL_UNIFORM, causal=True) == pytest.approx(0.0, abs=1e-12)
    assert M.vertical_strength(CAUSAL_UNIFORM, causal=True) == pytest.approx(0.0, abs=1e-12)
    assert M.horizontal_strength(CAUSAL_UNIFORM, causal=True) == pytest.approx(0.0, abs=1e-12)
    assert M.concentration(CAUSAL_UNIFORM, causal=True) == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4]))
    assert M.gini(IDENTITY, causal=True) == pytest.approx(np.mean([1 - 1 / 2, 1 - 1 / 3, 1 - 1 / 4]))
    # rows 1..3 see lags 0 and 1: (1/2 + 1/3 + 1/4) / 3 at both
    assert M.lag_profile(CAUSAL_UNIFORM, max_lag=1).tolist() == pytest.approx([13 / 36, 13 / 36])
    # a longer uniform causal map: the lag profile is flat, so the exponent is 0 (no bias from the support sizes)
    n = 50
    flat = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
    assert M.profile_exponent(M.lag_profile(flat))["exponent"] == pytest.approx(0.0, abs=1e-12)


def test_queries_are_the_last_keys():
    w = np.array([[0.0, 0.5, 0.5]])  # one query at position 2 of 3 keys, causal: sees keys 0..2
    assert M.lags(1, 3).tolist() == [[2, 1, 0]]
    assert M.diagonal_strength(w, causal=True, width=0) == pytest.approx(0.5)
    assert M.entropy(w, causal=True, normalised=True) == pytest.approx(math.log(2) / math.log(3))


def test_batched_and_torch_inputs_agree():
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(8), size=(3, 8))  # (S, Lq, Lk)
    for fn in (M.entropy, M.gini, M.concentration, M.diagonal_strength, M.vertical_strength, M.horizontal_strength):
        assert fn(torch.tensor(w, dtype=torch.float32)) == pytest.approx(fn(w), rel=1e-5)
    per_sample = [M.entropy(w[s]) for s in range(3)]
    assert M.entropy(w) == pytest.approx(np.mean(per_sample))


def test_fit_recovers_a_known_power_law():
    lag = np.arange(1, 60)
    fit = M.fit_power_law(lag, 3.0 * lag**-0.7)
    assert fit["exponent"] == pytest.approx(-0.7, abs=1e-12)
    assert math.exp(fit["intercept"]) == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = 3.0 * lag**-1.3 * np.exp(np.random.default_rng(0).normal(0, 0.05, lag.size))
    fit = M.fit_power_law(lag, noisy)
    assert fit["exponent"] == pytest.approx(-1.3, abs=0.05) and 0.95 < fit["r2"] < 1.0
    # lag 0 and non-positive values are left out
    fit = M.fit_power_law([0, 1, 2, 4], [9.0, 1.0, 0.5, 0.25])
    assert fit["exponent"] == pytest.approx(-1.0) and fit["n_lags"] == 3
    assert math.isnan(M.fit_power_law([1, 2], [1.0, 0.0])["exponent"])
    assert math.isnan(M.fit_power_law(lag, np.ones(lag.size))["r2"])  # flat: nothing to explain


def test_exponent_of_power_law_attention_maps():
    # causal maps whose rows decay like dt^-beta for dt >= 1 (any weight at dt = 0), each row normalised:
    # the mean over rows keeps the power law exactly
    beta, n = 1.5, 60
    dt = M.lags(n, n).astype(float)
    w = np.where(dt >= 1, np.maximum(dt, 1) ** -beta, 0.0) + np.where(dt == 0, 0.4, 0.0)
    w = w / w.sum(axis=1, keepdims=True)
    out = M.head_metrics(np.stack([w, w]), causal=True)
    assert out["lag_exponent"] == pytest.approx(-beta, abs=1e-9)
    assert out["lag_exponent_r2"] == pytest.approx(1.0)
    model = M.model_metrics([np.stack([w, w])[:, None]], causal=True)  # one layer, one head
    assert model["mean"]["lag_exponent"] == pytest.approx(-beta, abs=1e-9)
    assert len(model["per_head"]) == 1 and model["per_head"][0]["layer"] == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        M.entropy(np.ones(4))
    with pytest.raises(ValueError, match="Lq <= Lk"):
        M.gini(np.ones((4, 3)) / 3)
    with pytest.raises(ValueError, match="max_lag"):
        M.lag_profile(FULL_UNIFORM, max_lag=4)
    with pytest.raises(ValueError, match="top_fraction"):
        M.concentration(FULL_UNIFORM, top_fraction=0)
    with pytest.raises(ValueError, match="B, H, Lq, Lk"):
        M.model_metrics([FULL_UNIFORM])
