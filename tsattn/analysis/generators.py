"""Seed 004's nine synthetic time series, plus real series that statsmodels ships.

Every generator is a small frozen dataclass of its parameters (the seed's names and defaults) with
``generate(length, seed) -> np.ndarray`` (float64, shape ``(length,)``). ``seed`` is an int or a
``numpy.random.Generator``; the same int gives the same series. Numpy only: no scipy at run time.

    family                      generator            signature (what the tests check)
    stochastic & volatile       HeavyTailedAR1       AR(1) with Student-t noise: excess kurtosis > 0, lag-1 acf ~ phi
                                GARCH11              volatility clustering: squared returns are autocorrelated
                                JumpDiffusion        increments are Gaussian plus rare large jumps (fat tails)
    non-stationary & structural RegimeSwitching      two-state Markov mean/volatility shifts, persistent states
                                TrendBreaks          drifting random walk whose drift changes at break points
                                RandomWalk           unit root: lag-1 acf ~ 1, k-step variance grows like k
    periodic & deterministic    SeasonTrendOutliers  sinusoid + linear trend + sparse outliers
                                MultiSeasonality     overlapping sinusoids (two spectral peaks)
    long memory                 OneOverFNoise        1/f spectrum: log-log periodogram slope ~ -1

Real series (``REAL_SERIES``), read from the CSV files inside statsmodels (no network):
``co2`` (Mauna Loa weekly CO2, 1958-2001, 2284 points, 59 missing values filled by linear interpolation in
time) and ``sunspots`` (yearly sunspot numbers 1700-2008, 309 points).

Departures from the seed, on purpose: ``OneOverFNoise`` is real 1/f noise (spectral synthesis; the seed's
filter ``1 / (1 - 0.5 z^-1)`` is an AR(1) with a flat low-frequency spectrum), and ``TrendBreaks`` places its
breaks at fractions of the length (the seed's 300 and 700 out of 1000 are the defaults 0.3 and 0.7).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple, Union

import numpy as np

Seed = Union[int, np.random.Generator]

_BURN_IN = 200  # recursive processes start this many steps early so that the output starts near stationarity


def _rng(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or a numpy.random.Generator; got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_length(length: int, minimum: int = 2) -> int:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < minimum:
        raise ValueError(f"length must be an integer >= {minimum}; got {length!r}")
    return int(length)


@dataclass(frozen=True)
class HeavyTailedAR1:
    """AR(1) with Student-t noise: ``x_t = phi * x_{t-1} + scale * e_t``, ``e_t ~ t(df)``.

    phi: AR coefficient, |phi| < 1. df: degrees of freedom (> 2; lower is heavier-tailed; with df <= 4 the
    kurtosis is infinite). scale: noise scale. Signature: most steps are small, a few are enormous (excess
    kurtosis > 0); lag-1 autocorrelation ~ phi.
    """

    phi: float = 0.7
    df: float = 3.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not abs(self.phi) < 1:
            raise ValueError(f"phi must satisfy |phi| < 1; got {self.phi}")
        if not self.df > 2:
            raise ValueError(f"df must be > 2 (finite variance); got {self.df}")

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        noise = self.scale * _rng(seed).standard_t(self.df, size=n + _BURN_IN)
        x = np.empty(n + _BURN_IN)
        prev = 0.0
        for t in range(n + _BURN_IN):
            prev = self.phi * prev + noise[t]
            x[t] = prev
        return x[_BURN_IN:]


@dataclass(frozen=True)
class GARCH11:
    """GARCH(1,1) returns ``r_t = sigma_t z_t``, ``sigma_t^2 = omega + alpha r_{t-1}^2 + beta sigma_{t-1}^2``.

    omega > 0, alpha, beta >= 0 with alpha + beta < 1 (covariance-stationary returns). ``cumulative=True`` (the
    seed's choice) returns the price-like path ``cumsum(r)``, otherwise the returns. Signature: quiet periods and
    bursts, i.e. the squared returns are positively autocorrelated (volatility clustering).
    """

    omega: float = 0.1
    alpha: float = 0.1
    beta: float = 0.8
    cumulative: bool = True

    def __post_init__(self) -> None:
        if not (self.omega > 0 and self.alpha >= 0 and self.beta >= 0 and self.alpha + self.beta < 1):
            raise ValueError(
                f"need omega > 0, alpha >= 0, beta >= 0, alpha + beta < 1; got omega={self.omega}, "
                f"alpha={self.alpha}, beta={self.beta}"
            )

    def returns(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        z = _rng(seed).standard_normal(n + _BURN_IN)
        r = np.empty(n + _BURN_IN)
        var = self.omega / (1 - self.alpha - self.beta)
        prev = 0.0
        for t in range(n + _BURN_IN):
            var = self.omega + self.alpha * prev * prev + self.beta * var
            prev = math.sqrt(var) * z[t]
            r[t] = prev
        return r[_BURN_IN:]

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        r = self.returns(length, seed)
        return np.cumsum(r) if self.cumulative else r


@dataclass(frozen=True)
class JumpDiffusion:
    """Random walk with drift and jumps: ``x_t = x_{t-1} + mu + sigma z_t + J_t``.

    ``J_t ~ N(0, jump_size^2)`` with probability ``jump_prob`` per step, else 0. Signature: smooth diffusion with
    rare discontinuities, i.e. fat-tailed increments (excess kurtosis of the increments > 0, and about
    ``jump_prob`` of the steps far outside ``sigma``).
    """

    mu: float = 0.0
    sigma: float = 1.0
    jump_prob: float = 0.05
    jump_size: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.jump_prob <= 1:
            raise ValueError(f"jump_prob must be in [0, 1]; got {self.jump_prob}")

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        rng = _rng(seed)
        diffusion = self.mu + self.sigma * rng.standard_normal(n)
        jumps = np.where(rng.random(n) < self.jump_prob, self.jump_size * rng.standard_normal(n), 0.0)
        steps = diffusion + jumps
        steps[0] = 0.0  # the path starts at 0
        return np.cumsum(steps)


@dataclass(frozen=True)
class RegimeSwitching:
    """Hidden Markov regimes: ``x_t ~ N(means[s_t], volatilities[s_t]^2)``, ``s_t`` a Markov chain.

    means, volatilities: one per regime. transition_probs: row-stochastic matrix, ``P[i][j] = P(s_{t+1}=j |
    s_t=i)``. The chain starts in a uniformly drawn regime. Signature: abrupt, persistent mean and volatility
    shifts (the state changes with probability ``1 - P[i][i]`` per step). ``sample`` also returns the states.
    """

    means: Tuple[float, ...] = (-2.0, 2.0)
    volatilities: Tuple[float, ...] = (0.5, 2.0)
    transition_probs: Tuple[Tuple[float, ...], ...] = ((0.95, 0.05), (0.05, 0.95))

    def __post_init__(self) -> None:
        p = np.asarray(self.transition_probs, dtype=float)
        k = len(self.means)
        if len(self.volatilities) != k or p.shape != (k, k):
            raise ValueError(f"means, volatilities and transition_probs must describe the same {k} regimes")
        if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0):
            raise ValueError("transition_probs must be a row-stochastic matrix")

    def sample(self, length: int, seed: Seed = 0) -> Tuple[np.ndarray, np.ndarray]:
        """(series, states), both of shape (length,); states are regime indices."""
        n = _check_length(length)
        rng = _rng(seed)
        cum = np.cumsum(np.asarray(self.transition_probs, dtype=float), axis=1)
        u = rng.random(n)
        states = np.empty(n, dtype=np.int64)
        s = int(rng.integers(len(self.means)))
        for t in range(n):
            states[t] = s
            s = min(int(np.searchsorted(cum[s], u[t], side="right")), len(self.means) - 1)
        mu = np.asarray(self.means, dtype=float)[states]
        sd = np.asarray(self.volatilities, dtype=float)[states]
        return mu + sd * rng.standard_normal(n), states

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        return self.sample(length, seed)[0]


@dataclass(frozen=True)
class TrendBreaks:
    """Drifting random walk whose drift (slope) changes abruptly: ``x_t = x_{t-1} + slope(t) + noise_std z_t``.

    slopes: the drift of each segment (one more than the breaks). break_fractions: where the segments change, as
    fractions of the length, increasing in (0, 1). Signature: piecewise-linear trend with structural breaks; the
    mean increment of each segment is its slope.
    """

    slopes: Tuple[float, ...] = (0.1, -0.1, 0.05)
    break_fractions: Tuple[float, ...] = (0.3, 0.7)
    noise_std: float = 0.5

    def __post_init__(self) -> None:
        b = list(self.break_fractions)
        if len(self.slopes) != len(b) + 1:
            raise ValueError(f"need len(slopes) == len(break_fractions) + 1; got {len(self.slopes)} and {len(b)}")
        if any(not 0 < f < 1 for f in b) or b != sorted(b):
            raise ValueError(f"break_fractions must increase within (0, 1); got {self.break_fractions}")

    def break_points(self, length: int) -> np.ndarray:
        """Indices where a new segment starts."""
        return (np.asarray(self.break_fractions) * length).astype(int)

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        segment = np.searchsorted(self.break_points(n), np.arange(n), side="right")
        steps = np.asarray(self.slopes, dtype=float)[segment] + self.noise_std * _rng(seed).standard_normal(n)
        return np.cumsum(steps)


@dataclass(frozen=True)
class RandomWalk:
    """``x_t = x_{t-1} + mu + sigma z_t``: no mean reversion. Signature: a unit root (lag-1 autocorrelation near
    1; the variance of k-step changes grows like ``k sigma^2``)."""

    mu: float = 0.0
    sigma: float = 1.0

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        return np.cumsum(self.mu + self.sigma * _rng(seed).standard_normal(n))


@dataclass(frozen=True)
class SeasonTrendOutliers:
    """``trend t + amplitude sin(2 pi frequency t) + noise_std z_t + outliers``.

    Outliers ~ N(0, outlier_size^2) at each step with probability ``outlier_prob``. Signature: a predictable
    period ``1/frequency`` (the periodogram of the detrended series peaks there) with sparse disruptions (the
    residuals of the deterministic part are fat-tailed).
    """

    trend: float = 0.01
    amplitude: float = 2.0
    frequency: float = 0.1
    outlier_prob: float = 0.02
    outlier_size: float = 5.0
    noise_std: float = 0.3

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        rng = _rng(seed)
        t = np.arange(n)
        noise = self.noise_std * rng.standard_normal(n)
        outliers = np.where(rng.random(n) < self.outlier_prob, self.outlier_size * rng.standard_normal(n), 0.0)
        return self.trend * t + self.amplitude * np.sin(2 * np.pi * self.frequency * t) + noise + outliers


@dataclass(frozen=True)
class MultiSeasonality:
    """``sum_k amplitudes[k] sin(2 pi frequencies[k] t + phases[k]) + noise_std z_t``: overlapping cycles.

    Signature: one periodogram peak per frequency, with power ratios ~ amplitude ratios squared.
    """

    amplitudes: Tuple[float, ...] = (3.0, 1.5)
    frequencies: Tuple[float, ...] = (0.1, 0.05)
    phases: Tuple[float, ...] = (0.0, math.pi / 4)
    noise_std: float = 0.2

    def __post_init__(self) -> None:
        if not len(self.amplitudes) == len(self.frequencies) == len(self.phases):
            raise ValueError("amplitudes, frequencies and phases must have the same length")

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length)
        t = np.arange(n)
        x = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in zip(self.amplitudes, self.frequencies, self.phases))
        return x + self.noise_std * _rng(seed).standard_normal(n)


@dataclass(frozen=True)
class OneOverFNoise:
    """Gaussian noise with power spectrum ``S(f) ~ 1 / f^exponent`` (1: pink noise), unit variance.

    Spectral synthesis: complex Gaussian Fourier coefficients scaled by ``f^(-exponent/2)`` (zero at f = 0),
    inverse real FFT, standardised. Signature: long memory, i.e. a log-log periodogram slope of about
    ``-exponent`` (the seed's AR(1) filter only approximated this at high frequencies).
    """

    exponent: float = 1.0

    def generate(self, length: int, seed: Seed = 0) -> np.ndarray:
        n = _check_length(length, minimum=4)
        rng = _rng(seed)
        f = np.fft.rfftfreq(n)
        amp = np.zeros_like(f)
        amp[1:] = f[1:] ** (-self.exponent / 2)
        coef = amp * (rng.standard_normal(f.size) + 1j * rng.standard_normal(f.size))
        if n % 2 == 0:
            coef[-1] = coef[-1].real * math.sqrt(2)  # the Nyquist coefficient of a real signal is real
        x = np.fft.irfft(coef, n)
        return (x - x.mean()) / x.std()


GENERATORS: Dict[str, type] = {
    cls.__name__: cls
    for cls in (
        HeavyTailedAR1,
        GARCH11,
        JumpDiffusion,
        RegimeSwitching,
        TrendBreaks,
        RandomWalk,
        SeasonTrendOutliers,
        MultiSeasonality,
        OneOverFNoise,
    )
}


def _statsmodels_frame(name: str):
    try:
        from statsmodels import datasets
    except ImportError as exc:  # pragma: no cover - statsmodels is a dependency
        raise RuntimeError(f"the real series {name!r} needs statsmodels (pip install statsmodels)") from exc
    return getattr(datasets, name).load_pandas().data


def load_co2() -> np.ndarray:
    """Weekly atmospheric CO2 at Mauna Loa (ppm), 1958-03-29 .. 2001-12-29, 2284 points.

    The file has 59 missing weeks; they are filled by linear interpolation in time (both neighbours are
    observed: the first and last weeks are present), so the series stays evenly spaced.
    """
    frame = _statsmodels_frame("co2")
    values = frame["co2"].to_numpy(dtype=float)
    missing = np.isnan(values)
    if missing.any():
        t = np.arange(values.size)
        values = values.copy()
        values[missing] = np.interp(t[missing], t[~missing], values[~missing])
    return values


def load_sunspots() -> np.ndarray:
    """Yearly sunspot numbers (Wolfer / SILSO), 1700 .. 2008, 309 points, no missing values."""
    frame = _statsmodels_frame("sunspots")
    values = frame["SUNACTIVITY"].to_numpy(dtype=float)
    if np.isnan(values).any():  # pragma: no cover - the shipped file is complete
        raise RuntimeError("statsmodels' sunspots data has missing values; expected none")
    return values


REAL_SERIES: Dict[str, Callable[[], np.ndarray]] = {"co2": load_co2, "sunspots": load_sunspots}

SERIES_NAMES: Tuple[str, ...] = tuple(GENERATORS) + tuple(REAL_SERIES)


def resolve_name(name: str) -> str:
    """The canonical name of a generator or real series, matched case-insensitively; ``ValueError`` if unknown."""
    lookup = {n.lower(): n for n in SERIES_NAMES}
    key = name.strip().lower()
    if key not in lookup:
        raise ValueError(f"unknown series {name!r}; choose from {', '.join(SERIES_NAMES)}")
    return lookup[key]


def make_series(name: str, length: int, seed: Seed = 0) -> np.ndarray:
    """A generator's series of ``length`` points with its default parameters, or a real series (its own length)."""
    name = resolve_name(name)
    if name in REAL_SERIES:
        return REAL_SERIES[name]()
    return GENERATORS[name]().generate(length, seed)


def describe(name: str) -> Dict[str, object]:
    """Name, kind and parameters of a series, for the JSON outputs."""
    name = resolve_name(name)
    if name in REAL_SERIES:
        doc = (REAL_SERIES[name].__doc__ or "").strip().splitlines()[0]
        return {"name": name, "kind": "real (statsmodels)", "description": doc}
    gen = GENERATORS[name]()
    return {"name": name, "kind": "synthetic", "parameters": dataclasses.asdict(gen)}
