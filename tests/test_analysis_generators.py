"""Seed 004's generators: each one's statistical signature, determinism by seed, argument checks; real series."""

from __future__ import annotations

import numpy as np
import pytest

from tsattn.analysis.generators import (
    GARCH11,
    GENERATORS,
    REAL_SERIES,
    HeavyTailedAR1,
    JumpDiffusion,
    MultiSeasonality,
    OneOverFNoise,
    RandomWalk,
    RegimeSwitching,
    SeasonTrendOutliers,
    TrendBreaks,
    describe,
    load_co2,
    load_sunspots,
    make_series,
    resolve_name,
)


def acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


def excess_kurtosis(x: np.ndarray) -> float:
    x = x - x.mean()
    return float((x**4).mean() / (x**2).mean() ** 2 - 3.0)


def periodogram(x: np.ndarray):
    f = np.fft.rfftfreq(x.size)
    return f, np.abs(np.fft.rfft(x - x.mean())) ** 2


def test_nine_generators_with_seed_names():
    assert list(GENERATORS) == [
        "HeavyTailedAR1", "GARCH11", "JumpDiffusion", "RegimeSwitching", "TrendBreaks", "RandomWalk",
        "SeasonTrendOutliers", "MultiSeasonality", "OneOverFNoise",
    ]


@pytest.mark.parametrize("name", list(GENERATORS))
def test_deterministic_by_seed_and_shaped(name):
    gen = GENERATORS[name]()
    a, b, c = gen.generate(300, 7), gen.generate(300, 7), gen.generate(300, 8)
    assert a.shape == (300,) and a.dtype == np.float64 and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(gen.generate(300, np.random.default_rng(7)), a)  # a Generator is accepted too
    assert np.array_equal(make_series(name.lower(), 300, 7), a)


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True])
def test_bad_length_names_the_argument(bad):
    with pytest.raises(ValueError, match="length"):
        RandomWalk().generate(bad, 0)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="phi"):
        HeavyTailedAR1(phi=1.0)
    with pytest.raises(ValueError, match="alpha"):
        GARCH11(alpha=0.3, beta=0.8)
    with pytest.raises(ValueError, match="row-stochastic"):
        RegimeSwitching(transition_probs=((0.5, 0.6), (0.1, 0.9)))
    with pytest.raises(ValueError, match="break_fractions"):
        TrendBreaks(break_fractions=(0.7, 0.3))
    with pytest.raises(ValueError, match="seed"):
        RandomWalk().generate(10, "x")
    with pytest.raises(ValueError, match="unknown series"):
        resolve_name("NoSuchSeries")


def test_heavy_tailed_ar1_fat_tails_and_ar_coefficient():
    x = HeavyTailedAR1(phi=0.7, df=3.0).generate(20000, 0)
    assert excess_kurtosis(x) > 3.0  # Student-t(3) noise: infinite theoretical kurtosis
    assert abs(acf(x, 1) - 0.7) < 0.05
    gaussian_like = HeavyTailedAR1(phi=0.7, df=200.0).generate(20000, 0)
    assert abs(excess_kurtosis(gaussian_like)) < 0.3


def test_garch_volatility_clustering():
    g = GARCH11(omega=0.1, alpha=0.1, beta=0.8)
    r = g.returns(20000, 0)
    assert np.allclose(np.diff(g.generate(20000, 0)), r[1:])  # cumulative: the path of the returns
    # theoretical acf of r^2 at lag 1: alpha (1 - alpha beta - beta^2) / (1 - 2 alpha beta - beta^2) = 0.14
    sq = [acf(r**2, k) for k in range(1, 6)]
    assert all(v > 0.05 for v in sq), sq
    assert abs(acf(r, 1)) < 0.03  # the returns themselves are uncorrelated
    shuffled = np.random.default_rng(0).permutation(r)
    assert abs(acf(shuffled**2, 1)) < 0.03  # control: the clustering is in the time order


def test_jump_diffusion_rare_large_jumps():
    d = np.diff(JumpDiffusion(sigma=1.0, jump_prob=0.05, jump_size=5.0).generate(20000, 0))
    assert excess_kurtosis(d) > 8.0  # mixture: ~17.6 in theory
    # |N(0,1)| > 5 has probability 6e-7; with jumps: 0.05 * P(|N(0, 26)| > 5) ~ 1.6%
    assert 0.008 < np.mean(np.abs(d) > 5) < 0.03
    assert abs(excess_kurtosis(np.diff(JumpDiffusion(jump_prob=0.0).generate(20000, 0)))) < 0.2


def test_regime_switching_persistent_mean_and_volatility_shifts():
    series, states = RegimeSwitching().sample(20000, 0)
    assert np.array_equal(series, RegimeSwitching().generate(20000, 0))
    assert abs(np.mean(states[1:] != states[:-1]) - 0.05) < 0.01
    for k, (mu, sd) in enumerate([(-2.0, 0.5), (2.0, 2.0)]):
        assert abs(series[states == k].mean() - mu) < 0.1
        assert abs(series[states == k].std() - sd) < 0.1
    assert acf(series, 1) > 0.4  # persistence from the regimes alone (the noise is iid)


def test_trend_breaks_segment_slopes():
    tb = TrendBreaks(slopes=(0.1, -0.1, 0.05), break_fractions=(0.3, 0.7), noise_std=0.5)
    x = tb.generate(3000, 0)
    steps = np.diff(np.r_[0.0, x])
    b = tb.break_points(3000)
    assert list(b) == [900, 2100]
    for seg, slope in zip(np.split(steps, b), tb.slopes):
        assert abs(seg.mean() - slope) < 4 * 0.5 / np.sqrt(seg.size)


def test_random_walk_unit_root():
    x = RandomWalk().generate(2000, 0)
    assert acf(x, 1) > 0.95
    paths = np.stack([RandomWalk(sigma=1.0).generate(200, s) for s in range(400)])
    var100, var200 = paths[:, 99].var(), paths[:, 199].var()
    assert abs(var100 / 100 - 1) < 0.2 and abs(var200 / var100 - 2) < 0.4  # variance grows like t
    from statsmodels.tsa.stattools import adfuller

    assert adfuller(x, autolag="AIC")[1] > 0.1  # Dickey-Fuller cannot reject a unit root
    assert adfuller(HeavyTailedAR1().generate(2000, 0), autolag="AIC")[1] < 0.01  # but does for a stationary AR(1)


def test_season_trend_outliers_period_and_outliers():
    n = 2000
    x = SeasonTrendOutliers(frequency=0.1, noise_std=0.3, outlier_prob=0.02).generate(n, 0)
    t = np.arange(n)
    trend = np.c_[np.ones(n), t]
    detrended = x - trend @ np.linalg.lstsq(trend, x, rcond=None)[0]
    f, p = periodogram(detrended)
    assert abs(f[np.argmax(p)] - 0.1) <= 1.0 / n
    full = np.c_[trend, np.sin(0.2 * np.pi * t), np.cos(0.2 * np.pi * t)]
    resid = x - full @ np.linalg.lstsq(full, x, rcond=None)[0]
    assert abs(np.median(np.abs(resid)) / 0.6745 - 0.3) < 0.03  # robust scale: the Gaussian noise
    assert excess_kurtosis(resid) > 10  # sparse outliers


def test_multi_seasonality_two_peaks():
    x = MultiSeasonality(amplitudes=(3.0, 1.5), frequencies=(0.1, 0.05)).generate(2000, 0)
    f, p = periodogram(x)
    assert sorted(np.round(f[np.argsort(p)[-2:]], 4)) == [0.05, 0.1]
    ratio = p[np.argmin(abs(f - 0.1))] / p[np.argmin(abs(f - 0.05))]
    assert 3.0 < ratio < 5.0  # (3 / 1.5)^2


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_one_over_f_spectral_slope(exponent):
    x = OneOverFNoise(exponent=exponent).generate(2**14, 0)
    assert abs(x.mean()) < 1e-12 and abs(x.std() - 1) < 1e-12
    f, p = periodogram(x)
    slope = np.polyfit(np.log(f[1:]), np.log(p[1:]), 1)[0]
    assert abs(slope + exponent) < 0.1


def test_co2_missing_values_interpolated():
    from statsmodels.datasets import co2

    raw = co2.load_pandas().data["co2"].to_numpy(dtype=float)
    x = load_co2()
    assert x.shape == raw.shape == (2284,) and np.isfinite(x).all()
    missing = np.flatnonzero(np.isnan(raw))
    assert missing.size == 59
    assert np.array_equal(x[~np.isnan(raw)], raw[~np.isnan(raw)])
    lone = [i for i in missing if not np.isnan(raw[i - 1]) and not np.isnan(raw[i + 1])]
    assert lone  # a one-week gap is the mean of its neighbours
    for i in lone:
        assert x[i] == pytest.approx((raw[i - 1] + raw[i + 1]) / 2)
    assert 310 < x.min() and x.max() < 380  # ppm


def test_sunspots_and_registry():
    x = load_sunspots()
    assert x.shape == (309,) and np.isfinite(x).all() and x.min() >= 0
    assert set(REAL_SERIES) == {"co2", "sunspots"}
    assert np.array_equal(make_series("SUNSPOTS", 10, 0), x)  # real series keep their own length
    assert describe("co2")["kind"].startswith("real")
    assert describe("GARCH11")["parameters"] == {"omega": 0.1, "alpha": 0.1, "beta": 0.8, "cumulative": True}
